"""The tidy score table (`curb export`, `curb report`'s scores.csv) and the Python API
(`curb.run`, `curb.load`): every row round-trips to the number in its result file."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from curb.cli import main
from curb.export import COLUMNS, score_rows
from curb.results import iter_results

ROOT = Path(__file__).parents[1]
RUN = Path(__file__).parent / "data" / "mini-run"


def _assert_rows_match_results(df: pd.DataFrame, run: Path) -> None:
    """Every score of every result file is a row with that value, and nothing else is."""
    results = {r["spec_hash"]: r for _, r in iter_results(run)}
    want = 0
    for cell, r in results.items():
        rows = df[df["cell"] == cell]
        assert len(rows) > 0, cell
        if r.get("kind") == "cold-start":
            for g, scores in r["groups"].items():
                for m in ("hr@1", "hr@5", "hr@10", "ndcg@10"):
                    (v,) = rows[(rows["group"] == g) & (rows["metric"] == m)]["value"]
                    assert v == scores[m]
                    want += 1
            continue
        names = [t["name"] for t in r["tasks"]]
        primary = rows[rows["primary"]]
        for j, row in enumerate(r["R"]):
            for i, value in enumerate(row):
                got = primary[(primary["after_index"] == j + 1) & (primary["task_index"] == i + 1)]["value"].tolist()
                assert got == ([] if value is None else [value]), (cell, j, i)
        finals = primary[primary["final"]]
        assert dict(zip(finals["task"], finals["value"])) == {n: r["final"][n] for n in names
                                                              if r["final"].get(n) is not None}
        want += sum(len(m or {}) for row in r["metrics"] for m in row)
    assert len(df) == want and df["cell"].nunique() == len(results)


def test_export_round_trips_every_score_in_csv_and_json(tmp_path, capsys):
    assert main(["export", str(RUN), "--out", str(tmp_path / "s.csv")]) == 0
    assert "scores from 44 result files" in capsys.readouterr().out
    csv = pd.read_csv(tmp_path / "s.csv", keep_default_na=False,
                      na_values={"value": [""], "task_index": [""], "after_index": [""]})
    assert list(csv.columns) == list(COLUMNS)
    _assert_rows_match_results(csv, RUN)
    assert main(["export", str(RUN), "--format", "json", "--out", str(tmp_path / "s.json")]) == 0
    records = json.loads((tmp_path / "s.json").read_text())
    _assert_rows_match_results(pd.DataFrame(records), RUN)
    conure = [r for r in records if r["method"] == "conure" and r["noise"] == 3 and r["primary"]]
    assert conure and all(r["order"] == "default" for r in conure)
    assert {r["split_level"] for r in records} == {"user"} and {r["curb"] for r in records} == {"0.1.0"}


def test_export_covers_cold_start_results_and_refuses_a_json_inside_the_run(tmp_path, capsys):
    from curb.coldstart import run_cold_start

    run = tmp_path / "run"
    shutil.copytree(RUN / "synthetic-mini" / "fineall", run / "synthetic-mini" / "fineall")
    shutil.copytree(RUN / "synthetic-mini" / "sinmo", run / "synthetic-mini" / "sinmo")
    run_cold_start("synthetic-mini", ("fineall",), (0,), None, run, echo=lambda *_: None,
                   overrides={"ncf.eval_negatives": "9", "ncf.epochs": "1"})
    df = pd.DataFrame(score_rows(run))
    cold = df[df["study"] == "cold-start"]
    assert set(cold["method"]) == {"random", "fineall"} and set(cold["variant"]) == {"epochs=1;eval_negatives=9"}
    _assert_rows_match_results(df, run)
    assert main(["export", str(run), "--format", "json", "--out", str(run / "scores.json")]) == 2
    assert "would be read as a (damaged) result file" in capsys.readouterr().err


def test_parquet_export_round_trips_or_names_the_missing_extra(tmp_path, monkeypatch, capsys):
    if importlib.util.find_spec("pyarrow") is not None:
        assert main(["export", str(RUN), "--format", "parquet", "--out", str(tmp_path / "s.parquet")]) == 0
        _assert_rows_match_results(pd.read_parquet(tmp_path / "s.parquet"), RUN)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a))
    assert main(["export", str(RUN), "--format", "parquet", "--out", str(tmp_path / "t.parquet")]) == 2
    assert 'needs pyarrow: pip install "curb[parquet]"' in capsys.readouterr().err


def test_report_writes_the_same_scores_csv(tmp_path):
    from curb.report import write_report

    written = write_report(RUN, tmp_path / "report", figures=False, echo=lambda _: None)
    assert written[-1] == tmp_path / "report" / "scores.csv"
    assert main(["export", str(RUN), "--out", str(tmp_path / "export.csv")]) == 0
    assert written[-1].read_text() == (tmp_path / "export.csv").read_text()


def test_import_curb_is_cheap_and_load_needs_no_torch():
    code = ("import sys, curb; assert 'torch' not in sys.modules and 'pandas' not in sys.modules; "
            f"df = curb.load({str(RUN)!r}); assert len(df) > 0 and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        import curb

        curb.nope  # noqa: B018


def test_python_api_example_runs_and_round_trips(tmp_path, monkeypatch):
    """The example of docs/python-api.md, as written there."""
    import curb

    doc = (ROOT / "docs" / "python-api.md").read_text()
    example = re.search(r"## Example.*?```python\n(.*?)```", doc, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(example, "docs/python-api.md", "exec"), scope)
    scores, again = scope["scores"], scope["again"]
    assert set(scores["method"]) == {"sinmo", "fineall"} and set(scores["seed"]) == {0, 1}
    _assert_rows_match_results(scores, tmp_path / "runs" / "api-demo")
    pd.testing.assert_frame_equal(scores, again)
    # a second call reuses the finished cells and returns only the cells asked for
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("seed*.json")}
    sinmo = curb.run(methods=["sinmo"], dataset="synthetic-mini", seeds=[1], out="runs/api-demo", epochs=1,
                     echo=lambda _: None)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("seed*.json")} == before
    assert set(sinmo["method"]) == {"sinmo"} and set(sinmo["seed"]) == {1}
    with pytest.raises(Exception, match="valid"):
        curb.run(methods=["nosuch"], dataset="synthetic-mini", out="runs/x")


def test_load_reports_damaged_files(tmp_path, capsys):
    import curb

    shutil.copytree(RUN / "synthetic-mini" / "pop", tmp_path / "synthetic-mini" / "pop")
    victim = next(tmp_path.rglob("seed*.json"))
    victim.write_text(victim.read_text().replace('"final"', '"finale"', 1))
    said: list[str] = []
    df = curb.load(tmp_path, echo=said.append)
    assert df["cell"].nunique() == 1 and "checksum mismatch" in said[0]
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty")]) == 2
    assert "no result files under" in capsys.readouterr().err
