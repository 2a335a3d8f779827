"""The `curb` command: listing, a real run, and clear errors for bad input."""

import json
from pathlib import Path

import pytest

from curb.cli import main


def test_methods_and_datasets_list_one_line_each(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out.splitlines()
    names = [l.split()[0] for l in out]
    assert {"sinmo", "fineall", "pop"} <= set(names) and len(names) == len(set(names))
    assert main(["datasets"]) == 0
    assert {"synthetic", "ml", "ml-profile"} <= {l.split()[0] for l in capsys.readouterr().out.splitlines()}


def test_run_prints_table_and_writes_results(tmp_path, capsys):
    code = main(["run", "--methods", "pop,sinmo", "--dataset", "synthetic-mini", "--seeds", "0,1",
                 "--order", "1,3,2,4,5", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "| method" in out and "T3 (mrr@5)" in out
    lines = [l for l in out.splitlines() if l.startswith("| pop") or l.startswith("| sinmo")]
    assert len(lines) == 2 and "±" in lines[0]  # two seeds aggregated as mean ± std
    files = sorted(tmp_path.rglob("seed*.json"))
    assert len(files) == 4
    r = json.loads(files[0].read_text())
    assert [t["name"] for t in r["tasks"]] == ["T1", "T3", "T2", "T4", "T5"]


@pytest.mark.parametrize("argv,needle", [
    (["run", "--methods", "sinmo,nope"], "unknown method 'nope'; valid methods:"),
    (["run", "--dataset", "nope"], "unknown dataset 'nope'; valid datasets:"),
    (["run", "--dataset", "synthetic-mini", "--order", "2,1,3,4,5"], "must stay first"),
    (["run", "--dataset", "synthetic-mini", "--order", "1,2"], "exactly once"),
    (["run", "--dataset", "synthetic-mini", "--set", "train.lr"], "key=value"),
    (["run", "--dataset", "synthetic-mini", "--set", "train.nope=1"], "unknown key train.nope; valid keys:"),
    (["run", "--dataset", "synthetic-mini", "--set", "train.lr=fast"], "train.lr: expected float"),
    (["run", "--dataset", "synthetic-mini", "--set", "train.lr=-1"], "must be > 0"),
    (["run", "--dataset", "synthetic-mini", "--set", "split.level=row"], "not one of"),
    (["run", "--dataset", "synthetic-mini", "--preset", "huge"], "unknown preset 'huge'; valid presets: paper, small"),
    (["run", "--dataset", "synthetic-mini", "--noise-task", "9"], "noise position must lie in 1..5"),
    (["run", "--dataset", "ml", "--data-dir", "/nonexistent/dir"], "curb looked in"),
])
def test_bad_input_gives_one_clear_line(argv, needle, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("curb: error:") and needle in err and "Traceback" not in err




def test_leaderboard_check_works_from_any_folder(tmp_path, monkeypatch, capsys):
    """Without --root or --boards, the boards of the repository curb is installed from are found
    (an editable install); a folder without boards gives one line naming the remedies."""
    monkeypatch.chdir(tmp_path)
    assert main(["leaderboard", "check"]) == 0
    repo = Path(__file__).resolve().parents[1]
    assert f"leaderboards in {repo / 'leaderboards'} match their result files" in capsys.readouterr().out
    assert main(["leaderboard", "check", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("curb: error: no leaderboards/boards.toml found") and "--root DIR" in err
