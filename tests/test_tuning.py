"""`curb tune`: equal budgets, validation-only selection, and tuned files applied by `curb run --tuned`."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from curb.cli import main
from curb.config import ConfigError, read_tuned
from curb.evaluator import Evaluator
from curb.results import iter_results
from curb.runner import CellSpec, resolve_config
from curb.tuning import trials


def _tune(tmp_path, name, methods="hat", trials="3"):
    out, write = tmp_path / name, tmp_path / f"{name}.toml"
    code = main(["tune", "--methods", methods, "--dataset", "synthetic-mini", "--trials", trials, "--epochs", "2",
                 "--out", str(out), "--write", str(write)])
    assert code == 0
    return out, write


def _choice(path):
    return read_tuned(path)[1]


def test_every_method_gets_the_same_number_of_trials_defaults_first():
    kinds = {"recommend", "classify"}
    for m in ("sinmo", "hat", "teracon", "conure", "mtl"):
        ts = trials(m, "ml", kinds, 6, 0)
        assert len(ts) == 6 and ts[0].overrides == () and len({t.overrides for t in ts}) == 6
        keys = {k for t in ts[1:] for k, _ in t.overrides}
        assert {"train.lr", "train.classify_lr"} <= keys and len(keys) <= 4  # lrs + at most 2 own knobs
    assert trials("hat", "ml", kinds, 4, 0) == trials("hat", "ml", kinds, 4, 0)  # seeded
    assert trials("hat", "ml", kinds, 4, 0) != trials("hat", "ml", kinds, 4, 1)
    assert not any(k == "train.classify_lr" for t in trials("hat", "ml", {"recommend"}, 4, 0) for k, _ in t.overrides)


def test_tuning_never_reads_test_labels(tmp_path, monkeypatch):
    """Poisoned test labels change every test score but not the chosen configuration."""
    _, clean = _tune(tmp_path, "clean")
    real_init = Evaluator.__init__

    def poisoned(self, stream, split=None, eval_batch=512):
        real_init(self, stream, split, eval_batch) if split is not None else real_init(self, stream, eval_batch=eval_batch)
        rng = np.random.default_rng(123)
        for name, parts in self._splits.items():
            t = parts["test"]
            n_labels = stream.task(name).n_labels
            parts["test"] = dataclasses.replace(t, labels=rng.integers(0, n_labels, len(t.labels)).astype(t.labels.dtype))

    monkeypatch.setattr(Evaluator, "__init__", poisoned)
    out, dirty = _tune(tmp_path, "dirty")
    assert _choice(dirty) == _choice(clean)
    finals = {p.name: r["final"] for p, r in iter_results(tmp_path / "clean")}
    poisoned_finals = {p.name: r["final"] for p, r in iter_results(out)}
    assert finals.keys() == poisoned_finals.keys() and finals != poisoned_finals  # the poison did reach the tests


def test_run_tuned_applies_the_file_records_it_and_refuses_a_changed_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, write = _tune(tmp_path, "t", "sinmo,hat", "2")
    rel = write.name
    tag, values = read_tuned(rel)
    assert main(["run", "--methods", "sinmo,hat", "--dataset", "synthetic-mini", "--epochs", "1", "--tuned", rel,
                 "--set", "train.patience=3", "--out", "runs"]) == 0
    results = {r["spec"]["method"]: r for _, r in iter_results(tmp_path / "runs")}
    for m, r in results.items():
        assert r["config"]["tuned"] == tag and dict(r["spec"]["overrides"])["tuned"] == tag
        for key, val in values.get(m, {}).items():
            section, field = key.split(".", 1)
            got = r["config"]["method" if section == m else section][field]
            assert str(got) == val or float(got) == pytest.approx(float(val))
    assert results["hat"]["transfer"]["fwt"][1] is not None  # the FWT reference is the tuned SinMo
    write.write_text(write.read_text() + "\n# edited\n")
    spec = CellSpec.from_dict(results["hat"]["spec"])
    with pytest.raises(ConfigError, match="changed since the cell was planned"):
        resolve_config(spec)


def test_reproduce_tuned_applies_the_file_to_every_cell(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.toml").write_text('[methods.sinmo]\n"train.lr" = "0.0005"\n')
    tag, _ = read_tuned("t.toml")
    assert main(["reproduce", "overall", "--dataset", "synthetic-mini", "--methods", "pop,sinmo", "--seeds", "0",
                 "--epochs", "1", "--tuned", "t.toml", "--out", "runs", "--no-figures"]) == 0
    results = {r["spec"]["method"]: r for _, r in iter_results(tmp_path / "runs")}
    assert results.keys() == {"pop", "sinmo"}
    assert all(r["config"]["tuned"] == tag for r in results.values())
    assert results["sinmo"]["config"]["train"]["lr"] == 0.0005
    # the board's configuration section names the tuned file and shows each method's tuned values
    from curb.leaderboard import config_blocks
    from curb.resultsets import load_settings

    (st,) = load_settings(tmp_path / "runs")
    assert st.label.endswith(f"-tuned=t@{tag[-12:-6]}")  # tables and figures are named by it
    blocks = config_blocks(st)
    assert any(isinstance(b, str) and f"`{tag}`" in b for b in blocks)
    rows = {r[0]: r[2] for r in next(b for b in blocks if getattr(b, "name", "") == "config-method").rows}
    assert '"train.lr": 0.0005' in rows["sinmo"] and rows["pop"] == "-"


def test_trial_cells_are_told_apart_in_the_log():
    from curb.grid import cell_label

    spec = CellSpec("hat", "ml", seed=0, overrides=(("hat.lam", "2.5"), ("train.lr", "0.0003")))
    assert cell_label(spec) == "ml/hat/default/seed0 [hat.lam=2.5,train.lr=0.0003]"
    assert cell_label(CellSpec("hat", "ml", seed=1)) == "ml/hat/default/seed1"
    tuned = CellSpec("hat", "ml", seed=0, overrides=(("tuned", "tuning/ml.toml@0123456789ab"),))
    assert cell_label(tuned) == "ml/hat/default/seed0 [tuned=tuning/ml.toml]"


def test_status_shows_each_cells_overrides(tmp_path, capsys):
    for lr in ("0.0005", "0.002"):
        assert main(["run", "--methods", "pop", "--dataset", "synthetic-mini", "--set", f"train.lr={lr}",
                     "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["status", str(tmp_path)]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("done")]
    assert len(lines) == 2 and {"train.lr=0.0005", "train.lr=0.002"} == {ln.split()[5] for ln in lines}


def test_dry_run_shows_the_trials_so_far_and_runs_nothing(tmp_path, capsys):
    out, write = tmp_path / "t", tmp_path / "t.toml"
    argv = ["tune", "--methods", "hat", "--dataset", "synthetic-mini", "--trials", "2", "--epochs", "2",
            "--out", str(out), "--write", str(write)]
    assert main([*argv, "--dry-run"]) == 0
    assert "2 trial(s) pending" in capsys.readouterr().out and not out.exists() and not write.exists()
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv, "--dry-run"]) == 0
    shown = capsys.readouterr().out
    chosen = _choice(write)["hat"]
    lines = [ln for ln in shown.splitlines() if ln.startswith("| hat")]
    best = [ln for ln in lines if "best so far" in ln]
    assert len(lines) == 2 and len(best) == 1 and "2 of 2 trial(s) done" in shown
    assert all(f"{k}={v}" in best[0] for k, v in chosen.items()) and ("(defaults)" in best[0]) == (not chosen)
    for ln in lines:  # every lift shown is the one the written file records for that trial
        trial, lift = ln.split("|")[2].strip(), ln.split("|")[3].strip()
        assert f"# trial {trial}: val lift {lift}" in write.read_text()


def test_a_tuned_grid_adopts_the_trial_it_chose_and_that_equals_a_fresh_run(tmp_path, monkeypatch, capsys):
    """`--adopt` reuses the tuning trial that is the tuned cell's computation: bit-equal to running
    it again, its provenance recorded, and refused for a cell whose configuration differs."""
    from curb.results import load_result

    monkeypatch.chdir(tmp_path)
    trials_dir, write = _tune(tmp_path, "t", "sinmo,hat", "2")
    grid = ["run", "--methods", "sinmo,hat", "--dataset", "synthetic-mini", "--epochs", "2", "--tuned", write.name]
    assert main([*grid, "--out", "adopted", "--adopt", str(trials_dir)]) == 0
    assert main([*grid, "--out", "fresh"]) == 0
    adopted = {r["spec"]["method"]: r for _, r in iter_results(tmp_path / "adopted")}
    fresh = {r["spec"]["method"]: r for _, r in iter_results(tmp_path / "fresh")}
    for m in ("sinmo", "hat"):
        a, f = adopted[m], fresh[m]
        src = load_result(tmp_path / "adopted" / a["adopted"]["from"])
        assert a["adopted"]["from"].startswith("../t/") and a["adopted"]["checksum"] == src["checksum"]
        assert src["spec_hash"] != a["spec_hash"] == f["spec_hash"]  # a trial's name, adopted under the cell's
        assert a["created"] == src["created"] and a["timings"] == src["timings"]  # not trained again
        for key in ("R", "per_user", "val_final", "config", "transfer"):
            assert a[key] == f[key], key
        assert "adopted" not in f
    assert adopted["hat"]["transfer"]["fwt"][1] is not None  # FWT re-derived against the adopted SinMo
    assert main([*grid, "--set", "train.patience=3", "--out", "other", "--adopt", str(trials_dir)]) == 0
    assert not any("adopted" in r for _, r in iter_results(tmp_path / "other"))
    assert main([*grid, "--out", "x", "--adopt", "missing"]) == 2
    assert "--adopt missing: no such folder" in capsys.readouterr().err
