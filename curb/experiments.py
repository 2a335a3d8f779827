"""The paper's experiments (docs/experiments.md) and curb's order study, as grids of cells.

An experiment is only a recipe for `CellSpec`s. Every experiment uses the same cell identity as
`curb run`, so cells shared between experiments (the default-order TERACON cell is in `overall`,
`transfer`, `noisy`, `sampling` and `orders`) are computed once per run folder and reused.
The tables and figures are drawn from the result files by `curb.report`, never from here.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .config import ConfigError
from .records import PAPER_METHODS

if TYPE_CHECKING:  # the runner (torch) is imported where cells are made: `curb --help` lists experiments
    from .runner import CellSpec

TRANSFER_METHODS = ("hat", "conure", "teracon")  # the methods of the paper's FWT/BWT and noisy tables
SAMPLING_RATES = ("min", "relation", "none")  # rho_min, Eq. 15, rho = 1 (the paper's rows, protocol §8.3)
TEXT_INIT_METHODS = ("teracon", "conure")  # the talk compares TERACON; CONURE is the strongest baseline


@dataclass(frozen=True)
class ExperimentArgs:
    """What every experiment's grid depends on (the shared part of its cells)."""

    dataset: str
    seeds: tuple[int, ...] = (0,)
    preset: str | None = None
    overrides: tuple[tuple[str, str], ...] = ()  # shared overrides (train., split., backbone.)
    methods: tuple[str, ...] | None = None  # None: the experiment's own methods
    n_orders: int = 6  # orders: how many task orders (default and reversed included)
    order_seed: int = 0  # orders: seed of the random permutations
    noise_position: int | None = None  # noisy: None = after T3, or after T(M-1) on shorter streams
    ncf: tuple[tuple[str, str], ...] = ()  # cold-start: ncf.<key> overrides of the downstream protocol
    data_dir: Path | None = field(default=None, compare=False)

    def cell(self, method: str, order: str = "default", noise: int | None = None, seed: int = 0,
             **method_overrides: str) -> CellSpec:
        from .runner import CellSpec

        ov = dict(self.overrides) | {f"{method}.{k}": v for k, v in method_overrides.items()}
        return CellSpec(method, self.dataset, order, noise, seed, self.preset, tuple(sorted(ov.items())))

    def task_names(self) -> list[str]:
        from .runner import CellSpec, build_stream

        return build_stream(CellSpec("pop", self.dataset, preset=self.preset), self.data_dir).task_names

    def grid(self, methods: tuple[str, ...], orders: tuple[str, ...] = ("default",),
             noises: tuple[int | None, ...] = (None,), **method_overrides: str) -> list[CellSpec]:
        return [self.cell(m, o, n, s, **method_overrides)
                for m in (self.methods or methods) for o in orders for n in noises for s in self.seeds]


@dataclass(frozen=True)
class Experiment:
    name: str
    summary: str
    cells: Callable[[ExperimentArgs], list[CellSpec]]
    # Studies that are not grids of cells (cold start: downstream NCF runs) run through this
    # after the cells: (args, run folder, device, echo, jobs) -> result paths.
    run: Callable[..., list[Path]] | None = None


def _every_method() -> tuple[str, ...]:
    """pop, the paper's methods, then the rest of the built-in benchmark set (`--methods all`)."""
    from .method import benchmark_methods

    return tuple(dict.fromkeys(("pop", *PAPER_METHODS, *benchmark_methods())))


def _overall(a: ExperimentArgs) -> list[CellSpec]:
    return a.grid(_every_method())


def _transfer(a: ExperimentArgs) -> list[CellSpec]:
    # SinMo is the FWT reference (order-independent after T1: its default cells serve both orders).
    return a.grid(("pop", "sinmo")) + a.grid(TRANSFER_METHODS, ("default", "reversed"))


def noise_position(a: ExperimentArgs, n_tasks: int) -> int:
    """Where T' goes: after T3 as in the paper's TTL stream, or before the last task of shorter ones."""
    pos = a.noise_position if a.noise_position is not None else min(3, n_tasks - 1)
    if not 1 <= pos <= n_tasks:
        raise ConfigError(f"noise position must lie in 1..{n_tasks} (after T1 at the earliest), got {pos}")
    return pos


def _noisy(a: ExperimentArgs) -> list[CellSpec]:
    pos = noise_position(a, len(a.task_names()))
    return a.grid(("pop", "sinmo")) + a.grid(TRANSFER_METHODS, noises=(None, pos))


def _sampling(a: ExperimentArgs) -> list[CellSpec]:
    cells = a.grid(("pop", "sinmo"))
    for rate in SAMPLING_RATES:
        over = {} if rate == "relation" else {"sampling": rate}  # relation is the default: reuse its cells
        cells += [a.cell("teracon", o, None, s, **over) for o in ("default", "reversed") for s in a.seeds]
    return cells


def _adaptation(a: ExperimentArgs) -> list[CellSpec]:
    # The curves are the last task's per-epoch validation logs, already in every cell's result.
    return a.grid(_every_method())


def task_orders(names: list[str], n: int, seed: int) -> list[str]:
    """`n` distinct task orders (T1 always first): default, reversed, then seeded random ones."""
    if n < 1:
        raise ConfigError(f"--n-orders must be >= 1, got {n}")
    first, rest = names[0], names[1:]
    found: dict[tuple[str, ...], str] = {}
    for perm, tag in ((tuple(rest), "default"), (tuple(reversed(rest)), "reversed")):
        found.setdefault(perm, tag)
    orders = list(found.values())[:n]
    total = math.factorial(len(rest))
    import numpy as np

    rng = np.random.default_rng(seed)
    while len(orders) < min(n, total):
        perm = tuple(rest[i] for i in rng.permutation(len(rest)))
        if perm not in found:
            found[perm] = ",".join((first, *perm))
            orders.append(found[perm])
    return orders


def _orders(a: ExperimentArgs) -> list[CellSpec]:
    orders = tuple(task_orders(a.task_names(), a.n_orders, a.order_seed))
    return a.grid(("pop", "sinmo")) + a.grid(TRANSFER_METHODS, orders)


def with_text_init(a: ExperimentArgs) -> ExperimentArgs:
    """The same experiment with text-initialised item embeddings (a shared backbone override)."""
    return dataclasses.replace(a, overrides=tuple(sorted({**dict(a.overrides), "backbone.item_init": "text"}.items())))


def _text_init(a: ExperimentArgs) -> list[CellSpec]:
    return a.grid(("pop", *TEXT_INIT_METHODS)) + with_text_init(a).grid(TEXT_INIT_METHODS)


def _cold_start(a: ExperimentArgs, out: Path, device: str, echo: Callable[[str], None], jobs: int = 1) -> list[Path]:
    from .coldstart import DEFAULT_METHODS, run_cold_start

    return run_cold_start(a.dataset, a.methods or DEFAULT_METHODS, a.seeds, None, out, a.data_dir, a.preset,
                          overrides=dict(a.overrides) | dict(a.ncf), device=device, echo=echo, jobs=jobs)


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment("overall", "every method of `--methods all`, final R(T_M, T_i) per task (the paper's overall table)", _overall),
    Experiment("transfer", "FWT/BWT of HAT, CONURE, TERACON in original and reversed order", _transfer),
    Experiment("noisy", "a noise task T' inserted (after T3); each real task's score and change vs clean", _noisy),
    Experiment("sampling", "TERACON with rho = rho_min / Eq. 15 / 1: scores and seconds per epoch", _sampling),
    Experiment("adaptation", "validation curve of T4 after T1-T3 (or the last task) per epoch, from each method's representation",
               _adaptation),
    Experiment("orders", "many task orders: spread of HAT, CONURE, TERACON final scores (order robustness)",
               _orders),
    Experiment("text-init", "TERACON and CONURE with random vs text-initialised item embeddings (titles)",
               _text_init),
    Experiment("cold-start", "downstream NCF (held-out task) with user vectors from random init or a method's "
               "representation, warm vs cold users", lambda a: [], _cold_start),
)}


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; valid experiments: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def experiment_cells(names: list[str], args: ExperimentArgs) -> list[CellSpec]:
    """The union of the experiments' cells, each once, in a stable order."""
    return list(dict.fromkeys(itertools.chain.from_iterable(get_experiment(n).cells(args) for n in names)))
