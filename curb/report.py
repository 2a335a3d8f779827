"""Tables and figures from result files only: what `curb report`, `curb reproduce` and the
leaderboards print. Nothing here trains or evaluates; every number is read from a sealed result.

Results are grouped by *setting* (dataset, preset, shared overrides and data fingerprint): only
cells of one setting are ever compared. Within a setting the experiment of a cell follows from
its spec: order (default / reversed / a custom order), noise task, and the method's own
overrides (e.g. `teracon.sampling=none`). Each section is built only when its cells are present.
Tables give mean ± sample std over seeds; the best mean per column is in bold.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
from tabulate import tabulate

from .experiments import PAPER_METHODS
from .results import ResultError, iter_results
from .runner import SHARED_SECTIONS, CellSpec

Value = float | None
Cell = str | list[Value]  # a fixed string, or one value per seed (rendered mean ± std)


# ---------------------------------------------------------------------------------- tables
def _finite(values: Iterable[Value]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(v)]


def mean_std(values: Iterable[Value]) -> tuple[float, float] | None:
    """(mean, sample std; 0 for one value) of the finite values, or None."""
    vals = _finite(values)
    if not vals:
        return None
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0


def fmt_stat(values: Sequence[Value], digits: int = 4) -> str:
    ms = mean_std(values)
    if ms is None:
        return "-"
    n = len(_finite(values))
    return f"{ms[0]:.{digits}f}" if n == 1 else f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"


@dataclass
class Table:
    """A result table: row cells are strings or per-seed value lists; `best` marks, per column,
    whether the highest mean is bolded ("max") or nothing is (None). `digits` per column."""

    name: str  # file stem
    title: str
    headers: list[str]
    rows: list[list[Cell]]
    best: list[str | None] = field(default_factory=list)
    digits: list[int] = field(default_factory=list)
    note: str = ""

    def _best_rows(self) -> dict[int, set[int]]:
        out: dict[int, set[int]] = {}
        for c, rule in enumerate(self.best):
            if rule != "max":
                continue
            means = {r: ms[0] for r, row in enumerate(self.rows)
                     if isinstance(row[c], list) and (ms := mean_std(row[c])) is not None}
            if len(means) > 1:
                top = max(means.values())
                out[c] = {r for r, v in means.items() if round(v, self._digits(c)) == round(top, self._digits(c))}
        return out

    def _digits(self, c: int) -> int:
        return self.digits[c] if c < len(self.digits) else 4

    def cells(self, bold: Callable[[str], str]) -> list[list[str]]:
        best = self._best_rows()
        return [[(bold(s) if r in best.get(c, ()) else s)
                 for c, cell in enumerate(row)
                 for s in [cell if isinstance(cell, str) else fmt_stat(cell, self._digits(c))]]
                for r, row in enumerate(self.rows)]

    def markdown(self) -> str:
        body = tabulate(self.cells(lambda s: f"**{s}**"), headers=self.headers, tablefmt="github",
                        disable_numparse=True)
        return body + (f"\n\n{self.note}" if self.note else "")

    def latex(self) -> str:
        esc = lambda s: s.replace("%", r"\%").replace("_", r"\_").replace("±", r"$\pm$").replace("ρ", r"$\rho$")
        rows = [[esc(s) for s in row] for row in self.cells(lambda s: f"\\textbf{{{s}}}")]
        return tabulate(rows, headers=[esc(h) for h in self.headers], tablefmt="latex_raw", disable_numparse=True)


# ---------------------------------------------------------------------------------- loading
@dataclass
class Setting:
    """The results of one comparable setting (same dataset, data, preset, shared overrides), and
    the studies that compare it with others: its text-initialised twin and cold-start results."""

    dataset: str
    preset: str | None
    overrides: tuple[tuple[str, str], ...]
    results: list[dict]
    text_init: "Setting | None" = None  # the same setting with backbone.item_init=text
    cold_start: list[dict] = field(default_factory=list)

    @property
    def label(self) -> str:
        parts = [self.dataset] + ([self.preset] if self.preset else []) + [f"{k}={v}" for k, v in self.overrides]
        return "-".join(parts)

    @property
    def file_tag(self) -> str:
        """The label as a file-name stem (no dots: they would read as a suffix)."""
        return re.sub(r"[^A-Za-z0-9=+_-]", "_", self.label)

    def select(self, *, method: str | None = None, order: str | None = "default", noise: object = None,
               variant: tuple[tuple[str, str], ...] | None = ()) -> list[dict]:
        """Results matching the filters; `variant` = the method's own overrides (None: any)."""
        out = []
        for r in self.results:
            s = spec_of(r)
            if method is not None and s.method != method:
                continue
            if order is not None and s.order != order:
                continue
            if noise != "any" and s.noise != noise:
                continue
            if variant is not None and s.method_overrides != variant:
                continue
            out.append(r)
        return sorted(out, key=lambda r: (spec_of(r).seed, spec_of(r).hash))

    def methods(self, **filters) -> list[str]:
        found = {spec_of(r).method for r in self.select(**filters)}
        return sorted(found, key=method_rank)


def spec_of(r: dict) -> CellSpec:
    return CellSpec.from_dict(r["spec"])


def method_rank(name: str) -> tuple[int, str]:
    """pop first, then the paper's order, then any other method by name."""
    order = ("pop", *PAPER_METHODS)
    return (order.index(name), "") if name in order else (len(order), name)


def load_settings(run_dir: Path, echo: Callable[[str], None] = print) -> list[Setting]:
    """Every valid result under `run_dir`, grouped by setting; damaged files are reported and skipped."""
    from .coldstart import is_cold_start

    groups: dict[tuple, list[dict]] = defaultdict(list)
    cold: list[dict] = []
    for path, r in iter_results(run_dir):
        if isinstance(r, ResultError):
            echo(f"warning: skipping {r}")
            continue
        if is_cold_start(r):
            cold.append(r)
            continue
        s = spec_of(r)
        groups[(s.dataset, s.preset or "", s.shared_overrides, r["dataset"]["base_fingerprint"])].append(r)
    settings = [Setting(d, p or None, ov, rs) for (d, p, ov, _), rs in groups.items()]
    fingerprints = {id(st): key[3] for st, key in zip(settings, groups)}
    labels = [s.label for s in settings]
    for s in settings:  # the same label on different data: say so rather than mix them
        if labels.count(s.label) > 1:
            s.overrides = (*s.overrides, ("data", fingerprints[id(s)][:8]))
    for st in settings:
        text = dict(st.overrides) | {"backbone.item_init": "text"}
        st.text_init = next((o for o in settings if o is not st and dict(o.overrides) == text
                             and (o.dataset, o.preset) == (st.dataset, st.preset)
                             and fingerprints[id(o)] == fingerprints[id(st)]), None)
        st.cold_start = [r for r in cold if _cold_start_matches(r, st, fingerprints[id(st)])]
    claimed = {id(r) for st in settings for r in st.cold_start}
    orphans: dict[tuple, list[dict]] = defaultdict(list)  # cold start run on its own: a setting of its own
    for r in cold:
        if id(r) not in claimed:
            orphans[_cold_start_setting(r)].append(r)
    settings += [Setting(d, p, ov, [], cold_start=rs) for (d, p, ov), rs in orphans.items()]
    return sorted(settings, key=lambda s: s.label)


def _cold_start_setting(r: dict) -> tuple:
    """(dataset, preset, shared overrides) of the stream a cold-start result's representation came from."""
    s = r["spec"]
    shared = tuple((k, v) for k, v in sorted(dict(s["overrides"]).items()) if k.split(".", 1)[0] in SHARED_SECTIONS)
    return s["dataset"], s["preset"], shared


def _cold_start_matches(r: dict, st: Setting, fingerprint: str) -> bool:
    """A cold-start result belongs to the setting whose data, preset and shared overrides it used."""
    return (_cold_start_setting(r) == (st.dataset, st.preset, st.overrides)
            and r["dataset"]["fingerprint"] == fingerprint)


def task_names(results: list[dict]) -> list[str]:
    """Real task names in default stream order (the noise task is never reported)."""
    names: list[str] = []
    for r in sorted(results, key=lambda r: spec_of(r).order != "default"):
        for t in r["tasks"]:
            if t["name"] != "noise" and t["name"] not in names:
                names.append(t["name"])
    return names


def metric_of(results: list[dict]) -> dict[str, str]:
    return {t["name"]: t["metric"] for r in results for t in r["tasks"]}


def final(r: dict, task: str) -> Value:
    return r["final"].get(task)


def mean_final(r: dict, later_only: bool = False) -> Value:
    """Mean final score over the stream's real tasks (or over T2..T_M); None when one is missing
    (MTL has no T1 score: its all-task mean would average a different set of tasks)."""
    names = [t["name"] for t in r["tasks"] if t["name"] != "noise"][1 if later_only else 0:]
    vals = [r["final"].get(n) for n in names]
    if not vals or any(v is None or math.isnan(v) for v in vals):
        return None
    return float(np.mean(vals))


def transfer_of(r: dict, kind: str, task: str) -> Value:
    """BWT/FWT (%) of a task by name (stored in training order)."""
    tr = r.get("transfer")
    if not tr or spec_of(r).method == "pop":  # pop is not a continual learner: no transfer
        return None
    names = [t["name"] for t in r["tasks"]]
    return tr[kind][names.index(task)] if task in names else None


def transfer_mean(r: dict, kind: str) -> Value:
    """Mean BWT/FWT (%) over the real tasks that have one."""
    vals = _finite(transfer_of(r, kind, t["name"]) for t in r["tasks"] if t["name"] != "noise")
    return float(np.mean(vals)) if vals else None


def _seeds(rs: list[dict]) -> str:
    return ",".join(str(spec_of(r).seed) for r in rs)


# ---------------------------------------------------------------------------------- sections
def overall_table(st: Setting) -> Table | None:
    """Final R(T_M, T_i) per task, the mean over tasks, BWT and FWT (the paper's overall table)."""
    methods = st.methods()
    if not methods:
        return None
    rs = st.select()
    names, metric = task_names(rs), metric_of(rs)
    rows = []
    for m in methods:
        cells = st.select(method=m)
        rows.append([m, *[[final(r, n) for r in cells] for n in names], [mean_final(r) for r in cells],
                     [mean_final(r, later_only=True) for r in cells],
                     [transfer_mean(r, "bwt") for r in cells], [transfer_mean(r, "fwt") for r in cells], _seeds(cells)])
    k = len(names)
    return Table("overall", f"Overall: final R(T_M, T_i), {st.label}",
                 ["method", *[f"{n} ({metric[n]})" for n in names], "mean", f"mean {names[1]}-{names[-1]}",
                  "BWT %", "FWT %", "seeds"], rows,
                 best=[None, *["max"] * (k + 2), "max", "max", None], digits=[0, *[4] * (k + 2), 2, 2, 0],
                 note="Mean ± std over seeds; best mean per column in bold. `mean`: over all tasks (none for MTL, "
                      "which has no T1 score); the next column leaves T1 out so MTL can be compared. BWT/FWT: "
                      "relative %, docs/protocol.md §5.6 (FWT against SinMo of the same seed). `pop` is the "
                      "popularity / majority-class baseline.")


def transfer_tables(st: Setting) -> list[Table]:
    """Final score, BWT and FWT per task for each method in original and reversed order."""
    methods = [m for m in st.methods(order="reversed") if m != "pop"]
    if not methods:
        return []
    rs = st.select(order=None)
    names = task_names(rs)
    pairs = [(m, o) for m in methods for o in ("default", "reversed") if st.select(method=m, order=o)]
    tables = []
    for kind, title, value, digits in (
            ("score", "final score", final, 4),
            ("bwt", "BWT %", lambda r, n: transfer_of(r, "bwt", n), 2),
            ("fwt", "FWT %", lambda r, n: transfer_of(r, "fwt", n), 2)):
        rows = [[m, o, *[[value(r, n) for r in st.select(method=m, order=o)] for n in names]] for m, o in pairs]
        if kind == "score" and st.select(method="pop"):
            rows.insert(0, ["pop", "any", *[[final(r, n) for r in st.select(method="pop")] for n in names]])
        tables.append(Table(f"transfer-{kind}", f"Transfer ({title}), original vs reversed order, {st.label}",
                            ["method", "order", *names], rows, best=[None, None, *["max"] * len(names)],
                            digits=[0, 0, *[digits] * len(names)]))
    tables[-1].note = ("Columns are tasks by name; the reversed stream learns them as T1, T_M, ..., T2 "
                       "(T1 has no FWT; the last-learned task has no BWT).")
    return tables


def _rel(a: Value, b: Value) -> str:
    return "" if a is None or b is None or b == 0 else f" ({(a - b) / b * 100:+.2f}%)"


def noisy_table(st: Setting) -> Table | None:
    """Each real task's final score with and without the noise task, and the relative change."""
    noisy = [r for r in st.select(noise="any") if spec_of(r).noise is not None]
    if not noisy:
        return None
    names = task_names(st.select())
    rows = []
    if st.select(method="pop"):
        rows.append(["pop", "clean", *[[final(r, n) for r in st.select(method="pop")] for n in names]])
    for m in sorted({spec_of(r).method for r in noisy}, key=method_rank):
        clean = st.select(method=m)
        rows.append([m, "clean", *[[final(r, n) for r in clean] for n in names]])
        for pos in sorted({spec_of(r).noise for r in noisy if spec_of(r).method == m}):
            cells = st.select(method=m, noise=pos)
            row: list[Cell] = [m, f"T' after T{pos}"]
            for n in names:
                a, b = mean_std(final(r, n) for r in cells), mean_std(final(r, n) for r in clean)
                row.append("-" if a is None else fmt_stat([final(r, n) for r in cells]) +
                           _rel(a[0], b[0] if b else None))
            rows.append(row)
    return Table("noisy", f"Noisy task: scores with T' inserted (relative change of the mean vs clean), {st.label}",
                 ["method", "stream", *names], rows,
                 note="T' gives half the T1 users a uniformly random label out of 50 (docs/protocol.md §1.7); it is "
                      "learned like any task and not reported.")


def epoch_seconds(r: dict, task: str) -> Value:
    """Mean training seconds per epoch of `task`'s main phase (from the fit logs)."""
    secs = [e["seconds"] for f in r["fits"] if f["task"] == task and f["phase"] == "train" for e in f["epochs"]]
    return float(np.mean(secs)) if secs else None


def sampling_tables(st: Setting) -> list[Table]:
    """TERACON with each sampling rate: final scores, seconds per epoch and users sampled."""
    variants = {spec_of(r).method_overrides for r in st.select(method="teracon", order=None, variant=None)}
    if len(variants) < 2:
        return []
    names = task_names(st.select(order=None))
    label = lambda v: dict(v).get("teracon.sampling", "relation") if v else "relation"
    rank = {"min": 0, "relation": 1, "none": 2}
    variants_sorted = sorted(variants, key=lambda v: (rank.get(label(v), 3), label(v)))
    scores, speed = [], []
    for o in ("default", "reversed"):
        base = st.select(method="teracon", order=o, variant=(("teracon.sampling", "none"),))
        base_s = _finite(sum(_finite(epoch_seconds(r, n) for n in names[1:])) for r in base)
        for v in variants_sorted:
            rs = st.select(method="teracon", order=o, variant=v)
            if not rs:
                continue
            scores.append([o, label(v), *[[final(r, n) for r in rs] for n in names], [mean_final(r) for r in rs]])
            total = [sum(_finite(epoch_seconds(r, n) for n in names[1:])) for r in rs]
            frac = [float(np.mean(_finite(x for s in r["method_report"]["stages"].values()
                                          for x in s["sampled_fraction_mean"].values()))) * 100 for r in rs]
            ratio = f"{np.mean(total) / np.mean(base_s):.2f}" if base_s else "-"
            speed.append([o, label(v), *[[epoch_seconds(r, n) for r in rs] for n in names[1:]], total, ratio, frac])
    if st.select(method="pop"):
        scores.insert(0, ["any", "pop", *[[final(r, n) for r in st.select(method="pop")] for n in names],
                          [mean_final(r) for r in st.select(method="pop")]])
    k = len(names)
    return [
        Table("sampling-score", f"Sampling (TERACON): final scores per ρ, {st.label}",
              ["order", "ρ", *names, "mean"], scores, best=[None, None, *["max"] * (k + 1)],
              note="ρ: `min` = ρ_min = 1 − σ(c) for every past task; `relation` = Eq. 15 (default); "
                   "`none` = ρ = 1 (all users, no sampling)."),
        Table("sampling-time", f"Sampling (TERACON): training seconds per epoch, {st.label}",
              ["order", "ρ", *[f"{n} s/epoch" for n in names[1:]], "sum s/epoch", "time vs ρ=1", "users sampled %"],
              speed, digits=[0, 0, *[1] * (k - 1), 1, 0, 2],
              note="Seconds are hardware-specific (see each result's env); compare the ratios."),
    ]


def adaptation_task(r: dict) -> dict:
    """The task whose learning curve shows adaptation: T4 after T1-T3 as in the paper, or the last
    task of a shorter stream."""
    return r["tasks"][min(3, len(r["tasks"]) - 1)]


def adaptation_data(st: Setting) -> pd.DataFrame:
    """Per-epoch validation metric of the last task for every method (default order, clean)."""
    rows = []
    for r in st.select():
        s = spec_of(r)
        last = adaptation_task(r)["name"]
        fits = [f for f in r["fits"] if f["task"] == last and f["phase"] == "train"]
        if s.method == "pop" or not fits:
            continue
        rows += [{"method": s.method, "x": e["epoch"] + 1, "value": e["val"], "seed": s.seed} for e in fits[-1]["epochs"]]
    return pd.DataFrame(rows, columns=["method", "x", "value", "seed"])


def adaptation_table(st: Setting) -> Table | None:
    data = adaptation_data(st)
    if data.empty:
        return None
    last = adaptation_task(st.select()[0])
    rows = []
    for m in sorted(data["method"].unique(), key=method_rank):
        d = data[data.method == m]
        by_seed = d.groupby("seed")
        rows.append([m, by_seed.apply(lambda g: g.sort_values("x")["value"].iloc[0], include_groups=False).tolist(),
                     by_seed["value"].max().tolist(),
                     by_seed.apply(lambda g: float(g.loc[g["value"].idxmax(), "x"]), include_groups=False).tolist()])
    return Table("adaptation", f"Adaptation to {last['name']} (validation {last['metric']}), {st.label}",
                 ["method", "after epoch 1", "best", "epoch of best"], rows, best=[None, "max", "max", None],
                 digits=[0, 4, 4, 1],
                 note="The task's validation curve per epoch, learned on top of each method's representation "
                      "after the earlier tasks (MTL has none: it learns the later tasks jointly).")


def orders_data(st: Setting) -> pd.DataFrame:
    """Mean final score per (method, order, seed) for methods run in at least 2 orders."""
    rows = []
    for m in st.methods(order=None):
        rs = st.select(method=m, order=None)
        if len({spec_of(r).order for r in rs}) < 2:
            continue
        rows += [{"method": m, "order": spec_of(r).order, "seed": spec_of(r).seed, "value": mean_final(r),
                  **{f"task:{k}": v for k, v in r["final"].items() if k != "noise"}} for r in rs]
    return pd.DataFrame(rows)


def orders_table(st: Setting) -> Table | None:
    data = orders_data(st)
    if data.empty:
        return None
    names = task_names(st.select(order=None))
    rows = []
    if st.select(method="pop"):
        pops = st.select(method="pop")
        rows.append(["pop", "1", *[[final(r, n) for r in pops] for n in names], [mean_final(r) for r in pops], "-"])
    for m in sorted(data["method"].unique(), key=method_rank):
        d = data[data.method == m]
        per_order = d.groupby("order")["value"].mean()
        rows.append([m, str(len(per_order)), *[d[f"task:{n}"].tolist() for n in names], d["value"].tolist(),
                     f"{per_order.max() - per_order.min():.4f}"])
    return Table("orders", f"Order robustness: final scores over task orders, {st.label}",
                 ["method", "orders", *names, "mean", "range of order means"], rows,
                 best=[None, None, *["max"] * (len(names) + 1), None],
                 note="Mean ± std over all (order, seed) cells: the std is the spread a method's numbers have when "
                      "only the order of the tasks changes. Range: best minus worst order (mean over seeds).")


def r_matrices(st: Setting) -> dict[str, tuple[list[str], list[str], np.ndarray]]:
    """Mean R matrix (over seeds) per method, default order, clean stream."""
    panels = {}
    for m in st.methods():
        rs = st.select(method=m)
        names = [t["name"] for t in rs[0]["tasks"]]
        arr = np.array([[[np.nan if v is None else v for v in row] for row in r["R"]] for r in rs], dtype=float)
        with warnings.catch_warnings():  # cells never filled (upper triangle, MTL's rows) stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(arr, axis=0)
        panels[m] = ([f"after {n}" for n in names], names, mean)
    return panels


def mask_similarity(st: Setting) -> dict[str, tuple[list[str], list[str], np.ndarray]]:
    """Mean task-mask cosine similarity (over seeds) of the methods that report it: default-order
    cells, else those of the first other order that has it (named in the panel title)."""
    panels = {}
    for m in st.methods(order=None):
        by_order: dict[str, list[dict]] = defaultdict(list)
        for r in st.select(method=m, order=None):
            if "mask_similarity" in (r.get("method_report") or {}):
                by_order[spec_of(r).order].append(r["method_report"]["mask_similarity"])
        if not by_order:
            continue
        order = "default" if "default" in by_order else sorted(by_order)[0]
        sims = by_order[order]
        names = sims[0]["tasks"]
        panels[m if order == "default" else f"{m} ({order} order)"] = (
            names, names, np.mean([s["cosine"] for s in sims if s["tasks"] == names], axis=0))
    return panels


def transfer_data(st: Setting) -> pd.DataFrame:
    rows = []
    names = task_names(st.select())
    for m in st.methods():
        if m in ("pop", "mtl"):
            continue
        rs = st.select(method=m)
        for kind in ("FWT", "BWT"):
            for n in names:
                ms = mean_std(transfer_of(r, kind.lower(), n) for r in rs)
                if ms is not None and not (m == "sinmo" and kind == "FWT"):
                    rows.append({"method": m, "task": n, "kind": kind, "value": ms[0], "err": ms[1]})
    return pd.DataFrame(rows, columns=["method", "task", "kind", "value", "err"])


def score_data(st: Setting) -> pd.DataFrame:
    rows = [{"method": spec_of(r).method, "task": n, "value": final(r, n)}
            for r in st.select() for n in task_names(st.select()) if final(r, n) is not None]
    return pd.DataFrame(rows, columns=["method", "task", "value"]).sort_values(
        "method", key=lambda s: s.map(method_rank), kind="stable")


def t1_curve(r: dict) -> list[dict]:
    """T1's per-epoch validation log (the method's own T1 fit, or the cached one it started from)."""
    first = r["tasks"][0]["name"]
    fits = [f for f in r["fits"] if f["task"] == first and f["phase"] in ("train", "pretrained (cached)")]
    return fits[0]["epochs"] if fits else []


def text_init_table(st: Setting) -> Table | None:
    """Final scores with random vs text-initialised item embeddings, and T1's first-epoch validation."""
    if st.text_init is None:
        return None
    names = task_names(st.select())
    rows: list[list[Cell]] = []
    if st.select(method="pop"):
        pops = st.select(method="pop")
        rows.append(["pop", "-", *[[final(r, n) for r in pops] for n in names], [mean_final(r) for r in pops], "-"])
    for m in st.text_init.methods():
        for init, side in (("random", st), ("text", st.text_init)):
            rs = side.select(method=m)
            if rs:
                rows.append([m, init, *[[final(r, n) for r in rs] for n in names], [mean_final(r) for r in rs],
                             [(t1_curve(r) or [{"val": None}])[0]["val"] for r in rs]])
    k = len(names)
    return Table("text-init", f"Item-embedding init: random vs text (titles), {st.label}",
                 ["method", "item init", *names, "mean", f"{names[0]} val after epoch 1"], rows,
                 best=[None, None, *["max"] * (k + 2)],
                 note="`text`: each item's title embedded by all-MiniLM-L6-v2 and projected to the backbone width "
                      "(docs/architecture.md, item-embedding init); everything else identical.")


def text_init_curves(st: Setting) -> pd.DataFrame:
    rows = []
    for init, side in (("random", st), ("text", st.text_init)):
        for m in st.text_init.methods():
            for r in side.select(method=m):
                rows += [{"method": f"{m} ({init})", "x": e["epoch"] + 1, "value": e["val"], "seed": spec_of(r).seed}
                         for e in t1_curve(r)]
    return pd.DataFrame(rows, columns=["method", "x", "value", "seed"])


def cold_start_frame(st: Setting) -> pd.DataFrame:
    from .coldstart import cold_start_rows

    df = pd.DataFrame(cold_start_rows(st.cold_start))
    if df.empty:
        return df
    several = df["ncf"].nunique() > 1  # results of different NCF protocols never share a row
    df["row"] = [("random init" if i == "random" else f"{i} after {a}") + (f" (ncf: {n or 'defaults'})" if several else "")
                 for i, a, n in zip(df["init"], df["after"], df["ncf"])]
    return df


def cold_start_tables(st: Setting) -> list[Table]:
    """HR@1/5/10 and NDCG@10 of the downstream NCF per user-init source: one table for warm users,
    one for cold users (rows compare within a group)."""
    df = cold_start_frame(st)
    if df.empty:
        return []
    from .coldstart import METRICS

    order = sorted(df["row"].unique(), key=lambda x: (not x.startswith("random init"), method_rank(x.split(" ")[0]), x))
    holdout = df["holdout"].iloc[0]
    tables = []
    for group in ("warm", "cold"):
        rows = []
        for src in order:
            d = df[(df.row == src) & (df.group == group)].sort_values("seed")
            if not d.empty:
                rows.append([src, f"{d['n_users'].mean():.0f}", *[d[k].tolist() for k in METRICS]])
        tables.append(Table(f"cold-start-{group}", f"Cold start, {group} users: NCF on the held-out {holdout}, "
                            f"{st.label}", ["user init", "users", *[k.upper() for k in METRICS]], rows,
                            best=[None, None, *["max"] * len(METRICS)]))
    protocol = (f"against {n} sampled negatives" for n in sorted(df["eval_negatives"].unique()))
    below = " or ".join(str(t) for t in sorted(df["cold_threshold"].unique()))
    tables[-1].note = ("NeuMF trained on the held-out task with user vectors from random init or a method's "
                       f"representation; leave-one-out {' or '.join(protocol)} (docs/coldstart.md); cold = "
                       f"fewer than {below} training interactions (natural and simulated).")
    return tables


def cold_start_bars(st: Setting) -> pd.DataFrame:
    df = cold_start_frame(st)
    df = df[df.group.isin(["warm", "cold"])]
    return pd.DataFrame({"method": df["row"], "task": df["group"] + " HR@10", "value": df["hr@10"]})


# ---------------------------------------------------------------------------------- rendering
SECTIONS = ("overall", "transfer", "noisy", "sampling", "adaptation", "text-init", "cold-start", "orders")


@dataclass
class Section:
    name: str
    tables: list[Table]
    figures: list[tuple[str, str]]  # (file stem, caption)


def build_sections(st: Setting, figures_dir: Path | None, only: Sequence[str] = SECTIONS) -> list[Section]:
    """Every section of `only` that has results in this setting; figures written to `figures_dir`
    (skipped when None)."""
    if figures_dir is not None:
        from . import plots  # matplotlib only when figures are drawn

    def fig(stem: str, caption: str, draw: Callable[[Path], object]) -> list[tuple[str, str]]:
        """The figure's (stem, caption); drawn only when there is a folder to draw into."""
        if figures_dir is not None:
            draw(figures_dir / stem)
        return [(stem, caption)]

    out = []
    tag = st.file_tag
    if "overall" in only and (t := overall_table(st)):
        figs = fig(f"{tag}-scores", "Final score per task (bars: mean ± std over seeds; dashed: pop)",
                   lambda p: plots.score_bars(score_data(st), p, title=f"Final scores, {st.label}", ylabel="score"))
        figs += fig(f"{tag}-R", "R matrices (mean over seeds): row = after learning T_j, column = T_i",
                    lambda p: plots.heatmaps(r_matrices(st), p, title=f"R(T_j, T_i), {st.label}"))
        if not (td := transfer_data(st)).empty:
            figs += fig(f"{tag}-fwt-bwt", "FWT and BWT per task (mean ± std over seeds)",
                        lambda p: plots.transfer_bars(td, p, title=f"Transfer, {st.label}"))
        if ms := mask_similarity(st):
            figs += fig(f"{tag}-masks", "Cosine similarity between the tasks' masks (mean over seeds)",
                        lambda p: plots.heatmaps(ms, p, title=f"Task-mask similarity, {st.label}", fmt=".2f",
                                                 vmin=0.0, vmax=1.0, cbar_label="cosine"))
        out.append(Section("overall", [t], figs))
    if "transfer" in only and (ts := transfer_tables(st)):
        out.append(Section("transfer", ts, []))
    if "noisy" in only and (t := noisy_table(st)):
        out.append(Section("noisy", [t], []))
    if "sampling" in only and (ts := sampling_tables(st)):
        out.append(Section("sampling", ts, []))
    if "adaptation" in only and (t := adaptation_table(st)):
        data = adaptation_data(st)
        out.append(Section("adaptation", [t], fig(f"{tag}-adaptation", "Validation curve of the adaptation task per epoch",
                                                  lambda p: plots.curves(data, p, title=f"Adaptation, {st.label}",
                                                                         ylabel="validation metric"))))
    if "text-init" in only and (t := text_init_table(st)):
        data = text_init_curves(st)
        out.append(Section("text-init", [t], fig(f"{tag}-text-init", "T1 validation per epoch, random vs text init",
                                                 lambda p: plots.curves(data, p, title=f"T1 with text init, {st.label}",
                                                                        ylabel="T1 validation metric"))))
    if "cold-start" in only and (ts := cold_start_tables(st)):
        data = cold_start_bars(st)
        out.append(Section("cold-start", ts, fig(f"{tag}-cold-start", "NCF HR@10 by user init (dashed: random init)",
                                                  lambda p: plots.score_bars(data, p, title=f"Cold start, {st.label}",
                                                                             ylabel="HR@10", baseline="random init"))))
    if "orders" in only and (t := orders_table(st)):
        data = orders_data(st)
        out.append(Section("orders", [t], fig(f"{tag}-orders", "Mean final score per (order, seed) cell",
                                              lambda p: plots.boxes(data, p, title=f"Order robustness, {st.label}",
                                                                    ylabel="mean final score"))))
    return out


def render_markdown(sections: list[Section], figures_rel: str | None = "figures", level: int = 2) -> str:
    parts = []
    for sec in sections:
        parts.append(f"{'#' * level} {sec.name}\n")
        for t in sec.tables:
            parts.append(f"**{t.title}**\n\n{t.markdown()}\n")
        if figures_rel is not None:
            parts += [f"![{cap}]({figures_rel}/{stem}.png)\n\n*{cap}.*\n" for stem, cap in sec.figures]
    return "\n".join(parts)


def write_report(run_dir: Path, out: Path, only: Sequence[str] = SECTIONS, figures: bool = True,
                 echo: Callable[[str], None] = print) -> list[Path]:
    """Render every setting of `run_dir` into `out`: README.md, tables/*.md|.tex, figures/*.png|.svg."""
    settings = load_settings(run_dir, echo)
    if not settings:
        raise ResultError(f"no result files under {run_dir}")
    written = []
    doc = [f"# Report: {Path(run_dir).name}\n", "Generated by `curb report` from the result files only.\n"]
    twins = {id(st.text_init): st for st in settings if st.text_init is not None}
    for st in settings:
        doc.append(f"## {st.label} ({len({r['spec_hash'] for r in st.results})} result files)\n")
        if id(st) in twins:  # its tables belong beside the random-init cells and their pop row
            doc.append(f"Text-initialised twin of `{twins[id(st)].label}`: compared there, in the text-init section.\n")
            continue
        sections = build_sections(st, out / "figures" if figures else None, only)
        doc.append(render_markdown(sections, "figures" if figures else None, level=3))
        for sec in sections:
            for t in sec.tables:
                for ext, text in (("md", t.markdown()), ("tex", t.latex())):
                    p = out / "tables" / f"{st.file_tag}-{t.name}.{ext}"
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_text(text + "\n")
                    written.append(p)
    readme = out / "README.md"
    readme.parent.mkdir(parents=True, exist_ok=True)
    readme.write_text("\n".join(doc))
    return [readme, *written]


def final_table(results: Iterable[dict], tablefmt: str = "github") -> str:
    """The end-of-run summary of `curb run`: one row per (method, order, variant), every cell given."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in results:
        s = spec_of(r)
        groups[(method_rank(s.method), s.method, s.order_tag, ",".join(f"{k}={v}" for k, v in s.method_overrides))
               ].append(r)
    names = task_names([r for rs in groups.values() for r in rs])
    metric = metric_of([r for rs in groups.values() for r in rs])
    rows = [[m, o, *([v] if any(k[3] for k in groups) else []),
             *[fmt_stat([final(r, n) for r in rs]) for n in names], fmt_stat([mean_final(r) for r in rs]),
             fmt_stat([transfer_mean(r, "bwt") for r in rs], 2), fmt_stat([transfer_mean(r, "fwt") for r in rs], 2)]
            for (_, m, o, v), rs in sorted(groups.items())]
    headers = ["method", "order", *(["variant"] if any(k[3] for k in groups) else []),
               *[f"{n} ({metric[n]})" for n in names], "mean", "BWT %", "FWT %"]
    return tabulate(rows, headers=headers, tablefmt=tablefmt, disable_numparse=True)
