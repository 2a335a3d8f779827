"""Equal-budget tuning on validation only (`curb tune`), and the tuned-configuration files.

Every method that trains gets the same number of trials: trial 0 is its default configuration,
the others are drawn at random (seeded by dataset, method and tuning seed) from the learning
rates of the stream's task kinds and at most two of the method's own knobs (`Method.tune_space`).
Each trial is an ordinary cell (so trials run in parallel, resume, and are kept as result files);
a trial is scored only from `val_final`, the final model's scores on every task's VALIDATION
part, as its mean lift over the popularity baseline's validation scores on the same split.
Test scores are never read here (docs/protocol.md §4.9).

The chosen overrides are written to a small TOML file (committed, cited by the boards; read back by
`curb.config.read_tuned`, which config resolution needs without the trial machinery). `curb run
--tuned FILE` adds the override `tuned=<file>@<sha12>` to every cell: the config resolution reads
the method's values from the file (refusing a file whose digest changed), the result records the
tag and the resolved values, and tuned and untuned cells never share a result. The tag is shared
by all methods of a run, so FWT finds its SinMo reference (tuned with SinMo's own values).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import ConfigError
from .method import Knob, get_method
from .results import ResultError, atomic_write_bytes, load_result
from .runner import CellSpec, build_stream

# The learning rates searched for every method, per task kind present in the stream.
LR_SPACE = {"recommend": ("train.lr", Knob("log", 3e-5, 3e-3)),
            "classify": ("train.classify_lr", Knob("log", 1e-4, 3e-2))}


@dataclass(frozen=True)
class Trial:
    method: str
    index: int
    overrides: tuple[tuple[str, str], ...]  # the searched values only


def search_space(method: str, task_kinds: set[str]) -> dict[str, Knob]:
    cls = get_method(method)
    if len(cls.tune_space) > 2:
        raise ConfigError(f"method {method!r} declares {len(cls.tune_space)} tuning knobs; at most 2 are allowed")
    lrs = {key: knob for kind, (key, knob) in LR_SPACE.items() if kind in task_kinds}
    return {**lrs, **cls.tune_space}


def trials(method: str, dataset: str, task_kinds: set[str], n: int, seed: int) -> list[Trial]:
    """`n` trials of `method`: the defaults first, then seeded random draws from its space."""
    space = search_space(method, task_kinds)
    key = hashlib.sha256(f"{dataset}/{method}/{seed}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(key[:8], "little"))
    out = [Trial(method, 0, ())]
    for i in range(1, n):
        out.append(Trial(method, i, tuple(sorted((k, knob.draw(rng)) for k, knob in space.items()))))
    return out


def trial_specs(methods: list[str], dataset: str, n: int, seed: int, preset: str | None,
                base: dict[str, str], data_dir: Path | None) -> tuple[list[CellSpec], dict[str, Trial]]:
    """The cells of a tuning run (plus the pop cell every trial is scored against) and, per cell
    hash, the trial it runs."""
    if n < 1:
        raise ConfigError(f"--trials must be >= 1, got {n}")
    stream = build_stream(CellSpec("pop", dataset, seed=seed, preset=preset), data_dir)
    kinds = {t.kind for t in stream.tasks[1:]}
    specs, of = [CellSpec("pop", dataset, seed=seed, preset=preset, overrides=tuple(sorted(base.items())))], {}
    for m in methods:
        if not get_method(m).trains:
            continue
        for t in trials(m, dataset, kinds, n, seed):
            spec = CellSpec(m, dataset, seed=seed, preset=preset, overrides=tuple(sorted({**base, **dict(t.overrides)}.items())))
            specs.append(spec)
            of[spec.hash] = t
    return specs, of


def lift(result: dict, pop: dict) -> float:
    """Mean over the tasks after T1 of the final model's validation score divided by pop's."""
    ratios = []
    for t in result["tasks"][1:]:
        got, ref = result["val_final"][t["name"]][t["metric"]], pop["val_final"][t["name"]][t["metric"]]
        ratios.append(got / ref if ref > 0 else math.nan)
    return float(np.nanmean(ratios)) if ratios else math.nan


def choose(out: Path, specs: list[CellSpec], of: dict[str, Trial]) -> tuple[dict[str, Trial], list[dict]]:
    """The best trial per method (ties: the lower index, so the defaults win ties) and a table of
    every trial's validation lift; trials without a valid result are listed as missing."""
    pop = load_result(Path(out) / specs[0].relpath())
    rows, best = [], {}
    for spec in specs[1:]:
        t = of[spec.hash]
        try:
            score = lift(load_result(Path(out) / spec.relpath()), pop)
        except ResultError:
            score = math.nan
        rows.append({"method": t.method, "trial": t.index, "overrides": dict(t.overrides), "val_lift": score})
        if not math.isnan(score) and (t.method not in best or score > best[t.method][1]):
            best[t.method] = (t, score)
    return {m: t for m, (t, _) in best.items()}, rows


def write_tuned(path: Path, chosen: dict[str, Trial], rows: list[dict], meta: dict[str, str]) -> None:
    """The tuned-configuration file: `[meta]`, then one table of `--set` overrides per method,
    then every trial's validation lift as comments (a reader sees what was compared)."""
    q = lambda v: '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
    lines = ["# Written by `curb tune` (validation only; docs/protocol.md §4.9). Apply with `curb run --tuned FILE`.",
             "", "[meta]"] + [f"{k} = {q(v)}" for k, v in meta.items()] + [""]
    for m in sorted(chosen):
        lines += [f"[methods.{m}]"] + [f"{q(k)} = {q(v)}" for k, v in chosen[m].overrides]
        lines += [f"# trial {r['trial']}: val lift {r['val_lift']:.4f} {r['overrides'] or '(defaults)'}"
                  for r in rows if r["method"] == m] + [""]
    atomic_write_bytes(Path(path), "\n".join(lines).encode())  # a reader never sees half a file
