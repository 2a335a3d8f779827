"""Plugins fail soft, `--methods all` is a fixed built-in set, `--import` loads plain modules, and the
listing commands need no torch (curb/registry.py)."""

import subprocess
import sys
import textwrap

import pytest

import curb.data
import curb.method
from curb import registry
from curb.cli import _methods, main
from curb.experiments import PAPER_METHODS
from curb.method import available_methods, is_builtin


@pytest.fixture
def clean_registries(monkeypatch):
    """Registries and plugin state as this test leaves them are thrown away afterwards."""
    available_methods(), curb.data.available_datasets()  # built-ins registered in the originals first
    monkeypatch.setattr(curb.method, "_REGISTRY", dict(curb.method._REGISTRY))
    monkeypatch.setattr(curb.data, "_DATASETS", dict(curb.data._DATASETS))
    monkeypatch.setattr(curb.method, "_loaded", False)
    monkeypatch.setattr(registry, "_loaded_groups", set())
    monkeypatch.setattr(registry, "_failures", [])
    monkeypatch.setattr(registry, "_imported", set())
    monkeypatch.setenv(registry.IMPORT_ENV, "")  # both restored (unset) after the test
    monkeypatch.setenv(registry.WARNED_ENV, "")


def _distribution(root, name: str, entry_points: str) -> None:
    """A fake installed distribution: what `pip install` leaves in site-packages."""
    info = root / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)


GOOD_PLUGIN = '''
from curb.data import register_dataset
from curb.datasets.synthetic import generate
from curb.method import register
from curb.methods.sinmo import SinMo


@register("plugin-probe")
class PluginProbe(SinMo):
    summary = "a plugin method (SinMo under another name)"


@register_dataset("plugin-mini", "a plugin dataset", defaults={"preset": "small", "backbone.channels": "8",
                  "train.t1_epochs": "1", "train.epochs": "1", "train.batch": "64"})
def build(data_dir=None):
    return generate(n_users=200, n_items=30, seq_len=8)
'''


@pytest.fixture
def plugins(tmp_path, monkeypatch, clean_registries):
    """Three installed plugins: a broken method plugin, a broken dataset plugin, a working one."""
    (tmp_path / "broken_plugin.py").write_text('raise RuntimeError("boom: needs libfoo")\n')
    (tmp_path / "good_plugin.py").write_text(GOOD_PLUGIN)
    _distribution(tmp_path, "broken-plugin", "[curb.methods]\nbroken = broken_plugin\n")
    _distribution(tmp_path, "broken-data", "[curb.datasets]\nbroken-data = broken_plugin\n")
    _distribution(tmp_path, "good-plugin", "[curb.methods]\ngood = good_plugin\n[curb.datasets]\ngood = good_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("good_plugin", None)


def test_broken_plugin_warns_once_and_sinmo_still_runs(plugins, tmp_path, capsys):
    assert main(["run", "--methods", "sinmo", "--dataset", "synthetic-mini", "--epochs", "1",
                 "--out", str(tmp_path / "run")]) == 0
    out, err = capsys.readouterr()
    assert "| sinmo" in out and "Traceback" not in err
    warnings = [ln for ln in err.splitlines() if ln.startswith("curb: warning: plugin")]
    assert len(warnings) == 2  # one per broken plugin (methods group, datasets group), each once
    (method_warning,) = [w for w in warnings if "'broken-plugin'" in w]
    assert "RuntimeError: boom: needs libfoo" in method_warning and "curb.methods" in method_warning
    assert any("'broken-data'" in w and "curb.datasets" in w for w in warnings)
    available_methods(), curb.data.available_datasets()
    assert "curb: warning" not in capsys.readouterr().err  # loaded once per process


def test_unknown_name_of_a_broken_plugin_says_why(plugins, tmp_path, capsys):
    assert main(["run", "--methods", "broken", "--dataset", "synthetic-mini", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'broken'" in err and "plugins that failed to load" in err and "broken-plugin" in err


def test_working_plugins_register_methods_and_datasets(plugins, tmp_path, capsys):
    assert "plugin-probe" in available_methods() and "plugin-mini" in curb.data.available_datasets()
    assert main(["run", "--methods", "plugin-probe", "--dataset", "plugin-mini", "--out", str(tmp_path / "r")]) == 0
    assert "| plugin-probe" in capsys.readouterr().out
    assert main(["methods"]) == 0
    assert "plugin-probe" in capsys.readouterr().out


def test_all_is_the_builtin_benchmark_set_and_all_plus_plugins_adds_the_rest(plugins):
    class Inherits(available_methods()["fineall"]):  # a plugin subclass inherits `benchmark`, yet stays out
        summary = "not built in"

    curb.method.register("inherits-flag")(Inherits)
    expected = {"pop", *PAPER_METHODS, "ditto", "ewc", "lwf", "replay"}  # finetune (their base) stays out
    assert set(_methods("all")) == expected and _methods("all")[0] == "sinmo"
    plus = set(_methods("all+plugins"))  # other test modules may have registered methods of their own
    assert plus == expected | {n for n, c in available_methods().items() if not is_builtin(c)}
    assert {"plugin-probe", "inherits-flag"} <= plus
    assert set(_methods("all,plugin-probe")) == expected | {"plugin-probe"}


def test_static_method_table_matches_the_classes():
    """`curb methods` prints the static table; it must say what the classes say."""
    classes = {n: c for n, c in available_methods().items() if is_builtin(c)}
    assert registry.BUILTIN_METHODS == {n: (c.summary, c.__dict__.get("benchmark", False)) for n, c in classes.items()}


def test_import_option_loads_a_file_or_a_module(tmp_path, monkeypatch, capsys, clean_registries):
    (tmp_path / "my_curb_stuff.py").write_text(GOOD_PLUGIN.replace("plugin-", "imported-"))
    assert main(["methods", "--import", str(tmp_path / "my_curb_stuff.py")]) == 0
    assert "imported-probe" in capsys.readouterr().out
    assert registry.IMPORT_ENV in __import__("os").environ  # worker processes import it too
    assert main(["run", "--import", str(tmp_path / "my_curb_stuff.py"), "--methods", "imported-probe",
                 "--dataset", "imported-mini", "--out", str(tmp_path / "r")]) == 0
    assert main(["methods", "--import", "no_such_module_xyz"]) == 2
    assert "--import no_such_module_xyz: ModuleNotFoundError" in capsys.readouterr().err


def test_import_option_by_module_name(tmp_path, monkeypatch, capsys, clean_registries):
    (tmp_path / "named_curb_plugin.py").write_text(GOOD_PLUGIN.replace("plugin-", "named-"))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["datasets", "--import", "named_curb_plugin"]) == 0
    assert "named-mini" in capsys.readouterr().out
    sys.modules.pop("named_curb_plugin", None)


@pytest.mark.parametrize("argv,forbidden", [
    (["methods"], ("torch", "pandas", "matplotlib", "numpy")),
    (["datasets"], ("torch", "pandas", "matplotlib")),
    (["data", "list"], ("torch", "pandas", "matplotlib")),
])
def test_listing_commands_do_not_import_heavy_modules(argv, forbidden):
    """What keeps them instant (benchmarks/cli_startup.py times them); checked in a fresh process."""
    code = textwrap.dedent(f"""
        import sys
        from curb.cli import build_parser, main
        build_parser().format_help()
        main({argv!r})
        print(sorted(m for m in {forbidden!r} if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "[]"
