"""The Python API (docs/python-api.md): `curb.run(...)` runs a grid of cells exactly as `curb run`
does and returns its scores as the tidy table of `curb export`; `curb.load(run_dir)` reads the
same table back from any run folder. The table is built from the result files, so a loaded and a
freshly run folder give identical frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import pandas as pd

from .export import frame, score_rows


def load(run_dir: str | Path, *, echo: Callable[[str], None] = print) -> pd.DataFrame:
    """Every score of every result file under `run_dir`, one row per score (columns:
    `curb.export.COLUMNS`); damaged result files are reported through `echo` and skipped."""
    return frame(score_rows(Path(run_dir), echo))


def run(methods: Sequence[str], dataset: str = "synthetic", seeds: Sequence[int] = (0,), out: str | Path = "runs",
        *, orders: Sequence[str] = ("default",), noise: Sequence[int | None] = (None,), preset: str | None = None,
        epochs: int | None = None, sets: Mapping[str, object] | None = None, data_dir: str | Path | None = None,
        device: str = "cpu", jobs: int = 1, threads: int = 1, force: bool = False,
        echo: Callable[[str], None] = print) -> pd.DataFrame:
    """Run every (method, order, noise, seed) cell on `dataset` into `out` and return the scores of
    these cells (finished cells already in `out` are reused, interrupted ones resume), as `curb run
    --methods ... --dataset ... --seeds ... --order ... --noise-task ... --preset ... --epochs ...
    --set k=v ...` would. Raises `curb.grid.GridError` naming the cells that failed; the finished
    ones stay in `out` for `curb.load`."""
    from .config import ConfigError
    from .grid import GridError, run_grid
    from .method import get_method
    from .runner import CellSpec

    names = list(dict.fromkeys(m.lower().replace("_", "-") for m in methods))
    if not names:
        raise ConfigError("curb.run needs at least one method")
    for m in names:
        get_method(m)  # an unknown name fails here, listing the valid ones
    overrides = {k: str(v) for k, v in (sets or {}).items()}
    if epochs is not None:
        if epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {epochs}")
        overrides = {"train.t1_epochs": str(epochs), "train.epochs": str(epochs), **overrides}
    specs = [CellSpec(m, dataset, o, n, s, preset, tuple(sorted(overrides.items())))
             for m in names for o in orders for n in noise for s in seeds]
    outcomes = run_grid(specs, Path(out), data_dir=Path(data_dir) if data_dir is not None else None, device=device,
                        jobs=jobs, threads=threads, force=force, echo=echo)
    failed = [o for o in outcomes if o["status"] != "done"]
    if failed:
        raise GridError(f"{len(failed)} of {len(outcomes)} cell(s) did not finish: "
                        + "; ".join(f"{o['label']} ({o['status']})" for o in failed)
                        + f"; see `curb status {out}`")
    df = load(out, echo=echo)
    return df[df["cell"].isin({s.hash for s in specs})].reset_index(drop=True)
