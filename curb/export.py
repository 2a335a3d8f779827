"""The tidy score table: every test score of every result file in a run folder, one row per
score, for pandas, R or a spreadsheet (`curb export`, `curb report`'s scores.csv, `curb.load`).

A continual cell gives one row per (row j of R, seen task i, metric): `after` is the task after
which the score was measured and `final` flags the last row, so `final & primary` rows are the
final scores of the tables and boards, and `primary` rows are the R matrix. A cold-start result
gives one row per (user group, metric) of its downstream NCF run (`study` = cold-start, `task` =
the held-out task, `variant` = its NCF overrides). Every row carries the cell's identity (spec hash, config hash, seed, order,
noise, variant) and its protocol (split level, seed and fractions) and provenance.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .records import COLD_START_GROUPS, COLD_START_METRICS, RecordedSpec, is_cold_start
from .results import ResultError, canonical, iter_results

if TYPE_CHECKING:  # pandas loads when a table is made, not when `curb --help` builds the parser
    import pandas as pd

COLUMNS = ("run", "study", "dataset", "method", "variant", "order", "noise", "seed", "task", "task_index",
           "after", "after_index", "final", "group", "metric", "primary", "value", "cell", "config_hash", "preset",
           "overrides", "split_level", "split_seed", "split_fractions", "data_fingerprint", "curb", "torch",
           "created")
FORMATS = ("csv", "parquet", "json")
COLD_START_PRIMARY = "hr@10"  # the metric the boards plot for the cold-start study


def _pairs(overrides: dict | tuple) -> str:
    return ";".join(f"{k}={v}" for k, v in (sorted(overrides.items()) if isinstance(overrides, dict) else overrides))


def _common(run: str, r: dict) -> dict:
    """The columns every row of one result file shares."""
    split = r["config"].get("split") or {}
    return {"run": run, "cell": r["spec_hash"],
            "config_hash": hashlib.sha256(canonical(r["config"]).encode()).hexdigest()[:12],
            "overrides": _pairs(r["spec"]["overrides"]), "split_level": split.get("level"),
            "split_seed": split.get("seed"),
            "split_fractions": "/".join(map(str, split["fractions"])) if "fractions" in split else None,
            "data_fingerprint": r["dataset"]["fingerprint"], "curb": r["env"]["curb"], "torch": r["env"]["torch"],
            "created": r["created"]}


def cell_rows(run: str, r: dict) -> list[dict]:
    """One row per score of a continual cell's `metrics[j][i]`."""
    s = RecordedSpec.of(r)
    names = [t["name"] for t in r["tasks"]]
    headline = {t["name"]: t["metric"] for t in r["tasks"]}
    base = {"study": "continual", "dataset": s.dataset, "method": s.method, "variant": _pairs(s.method_overrides),
            "order": s.order, "noise": s.noise, "seed": s.seed, "group": None, "preset": r["config"]["preset"],
            **_common(run, r)}
    rows = []
    for j, row in enumerate(r["metrics"]):
        for i, scores in enumerate(row):
            for metric, value in sorted((scores or {}).items()):
                rows.append({**base, "task": names[i], "task_index": i + 1, "after": names[j], "after_index": j + 1,
                             "final": j == len(names) - 1, "metric": metric, "primary": metric == headline[names[i]],
                             "value": value})
    return rows


def cold_start_rows(run: str, r: dict) -> list[dict]:
    """One row per (user group, metric) of a cold-start result."""
    s = r["spec"]
    base = {"study": "cold-start", "dataset": s["dataset"], "method": s["init"], "variant": _pairs(s["ncf"]),
            "order": "default", "noise": None, "seed": s["seed"], "task": s["holdout"], "task_index": None,
            "after": None if s["init"] == "random" else s["after"], "after_index": None, "final": True,
            "preset": s["preset"], **_common(run, r)}
    return [{**base, "group": g, "metric": m, "primary": m == COLD_START_PRIMARY, "value": r["groups"][g][m]}
            for g in COLD_START_GROUPS if g in r["groups"] for m in COLD_START_METRICS]


def score_rows(run_dir: Path, echo: Callable[[str], None] = print) -> list[dict]:
    """Every score under `run_dir` (damaged result files are reported and skipped), in file order."""
    run = Path(run_dir).resolve().name
    rows: list[dict] = []
    for _, r in iter_results(Path(run_dir)):
        if isinstance(r, ResultError):
            echo(f"warning: skipping {r}")
            continue
        rows += cold_start_rows(run, r) if is_cold_start(r) else cell_rows(run, r)
    return [{c: row[c] for c in COLUMNS} for row in rows]


def frame(rows: list[dict]) -> pd.DataFrame:
    """The rows as a DataFrame with stable dtypes (integer columns that may be empty are nullable)."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=list(COLUMNS))
    return df.astype({"noise": "Int64", "seed": "int64", "task_index": "Int64", "after_index": "Int64",
                      "split_seed": "Int64", "final": "bool", "primary": "bool", "value": "float64"})


def write(rows: list[dict], path: Path, fmt: str) -> Path:
    """Write the rows as csv, parquet (needs pyarrow: `pip install "curb[parquet]"`) or json (a
    list of records; floats written exactly)."""
    path = Path(path)
    if fmt not in FORMATS:
        raise ResultError(f"unknown export format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    if fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise ResultError('the parquet format needs pyarrow: pip install "curb[parquet]"')
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        path.write_text(json.dumps(rows, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        frame(rows).to_csv(path, index=False)
    else:
        frame(rows).to_parquet(path, index=False)
    return path


# ---------------------------------------------------------------------------------- CLI
def add_parser(sub) -> None:
    ex = sub.add_parser("export", help="write every score of a run folder as one tidy table (csv, parquet, json)",
                        description="One row per test score of every result file under RUN_DIR (run, study, "
                        "method, variant, dataset, order, noise, seed, task, after which task, final, metric, "
                        "value, cell and config hashes, preset, split protocol, curb and torch versions). "
                        "`final & primary` rows are the tables' final scores; `primary` rows form each R matrix.")
    ex.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    ex.add_argument("--format", choices=FORMATS, default="csv", help="file format (default: %(default)s)")
    ex.add_argument("--out", type=Path, default=None, metavar="FILE",
                    help="output file (default: <RUN_DIR name>-scores.<format> in the current folder)")


def cmd_export(args: argparse.Namespace) -> int:
    if not args.run_dir.is_dir():
        raise ResultError(f"{args.run_dir} is not a folder")
    out = args.out or Path(f"{args.run_dir.resolve().name}-scores.{args.format}")
    if out.suffix == ".json" and out.resolve().is_relative_to(args.run_dir.resolve()):
        raise ResultError(f"--out {out}: a JSON file inside RUN_DIR would be read as a (damaged) result file; "
                          "write it elsewhere")
    rows = score_rows(args.run_dir)
    if not rows:
        raise ResultError(f"no result files under {args.run_dir}")
    path = write(rows, out, args.format)
    print(f"wrote {len(rows)} scores from {len({r['cell'] for r in rows})} result files to {path}")
    return 0
