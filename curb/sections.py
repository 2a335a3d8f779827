"""The report's sections, one per experiment (overall, transfer, noisy, sampling, adaptation,
orders, text init, cold start): each builds its tables and the data of its figures from one
setting's result files. Within a setting the experiment of a cell follows from its spec: order
(default / reversed / a custom order), noise task, and the method's own overrides (e.g.
`teracon.sampling=none`). Each section is built only when its cells are present."""

from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from . import stats
from .records import COLD_START_METRICS, cold_start_rows
from .resultsets import (Setting, final, mean_final, method_rank, metric_of, spec_of, task_names, transfer_mean,
                         transfer_of)
from .tables import Cell, Table, Value, finite, fmt_stat, mean_std


def _seeds(rs: list[dict]) -> str:
    return ",".join(str(spec_of(r).seed) for r in rs)



SIGNIFICANCE_SEED = 0  # one fixed generator per column: `curb leaderboard check` re-derives every mark
SIGNIFICANCE_BOOT = 2000
SIGNIFICANCE_PERM = 9999
MARK_SYMBOLS = {"best": "▲", "tied": "≈", "worse": "▽"}
SIGNIFICANCE_LEGEND = ("[lo, hi]: 95 % paired bootstrap interval over test users, pooled over seeds {seeds}; ▲ best "
                       "pooled score of the column, ≈ tied with it (not significantly different), ▽ worse (two-sided "
                       "paired sign-flip test over users, Holm-corrected within the column, alpha 0.05); "
                       "docs/metrics.md \"Statistics\".")


def column_significance(groups: list[list[dict]], tasks: list[str], digits: int = 4) -> tuple[list[str], str] | None:
    """Per group (a row's result files): " [lo, hi] mark" for the column scoring the mean over
    `tasks` (one task: that task's score), with the seeds used; None unless every group has at
    least one seed in common with all others and every such cell carries per-user scores of every
    task on the same test users (older results do not: the table then shows mean ± std only)."""
    seeds = sorted(set.intersection(*({spec_of(r).seed for r in g} for g in groups))) if groups else []
    if len(groups) < 2 or not seeds:
        return None
    by_seed = [{spec_of(r).seed: r for r in g} for g in groups]
    stacks, counts = [], []
    for t in tasks:
        entries = [[stats.per_user(g[s], t) for s in seeds] for g in by_seed]
        flat = [e for es in entries for e in es]
        if any(e is None for e in flat):
            return None
        try:
            _, c = stats.stack_per_user(flat)
        except ValueError:  # different test users: nothing to pair
            return None
        stacks.append(np.stack([[e.sums for e in es] for es in entries]))
        counts.append(c)
    rng = np.random.default_rng(SIGNIFICANCE_SEED)
    cis = stats.task_mean_cis(stacks, counts, n_boot=SIGNIFICANCE_BOOT, rng=rng)
    marks = stats.mark_task_mean(stacks, counts, n_perm=SIGNIFICANCE_PERM, rng=rng)
    return ([f" [{ci.low:.{digits}f}, {ci.high:.{digits}f}] {MARK_SYMBOLS[m.mark]}" for ci, m in zip(cis, marks)],
            ",".join(map(str, seeds)))


def overall_table(st: Setting) -> Table | None:
    """Final R(T_M, T_i) per task, the mean over tasks, BWT and FWT (the paper's overall table),
    with intervals and significance marks on the score columns where per-user scores allow."""
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
    no_first = [m for m, row in zip(methods, rows) if not finite(row[1 + k])]  # MTL: no T1 score
    note = ("Mean ± std over seeds; best mean per column in bold. `mean`: over all tasks"
            + (f" (none for {', '.join(no_first)}, which has no {names[0]} score); the next column leaves "
               f"{names[0]} out so {', '.join(no_first)} can be compared." if no_first else
               f"; the next column leaves {names[0]} out.")
            + " BWT/FWT: relative %, docs/protocol.md §5.6 (FWT against SinMo of the same seed). `pop` is the "
            "popularity / majority-class baseline.")
    annotations: dict[tuple[int, int], str] = {}
    marked, unmarked, used = [], [], set()
    later = f"mean {names[1]}-{names[-1]}"
    for c, header, tasks in [*((1 + i, n, [n]) for i, n in enumerate(names)), (1 + k, "mean", names),
                             (2 + k, later, names[1:])]:
        scored = [i for i, row in enumerate(rows) if finite(row[c])]
        found = column_significance([st.select(method=methods[i]) for i in scored], tasks)
        if found is None:
            unmarked.append(header)
            continue
        marked.append(header)
        used.add(found[1])
        annotations.update({(i, c): text for i, text in zip(scored, found[0])})
    if marked:
        note += " " + SIGNIFICANCE_LEGEND.format(seeds=" / ".join(sorted(used)))
        if unmarked:
            note += (f" No interval or mark in {', '.join(unmarked)}: a scored cell there lacks per-user test scores "
                     "or shares no seed or test users with the others.")
    return Table("overall", f"Overall: final R(T_M, T_i), {st.label}",
                 ["method", *[f"{n} ({metric[n]})" for n in names], "mean", later, "BWT %", "FWT %", "seeds"], rows,
                 best=[None, *["max"] * (k + 2), "max", "max", None], digits=[0, *[4] * (k + 2), 2, 2, 0],
                 note=note, annotations=annotations)


def ranks_table(st: Setting) -> tuple[Table, dict[str, float], float] | None:
    """Average rank of each method over the setting's tasks (1 = best; per task, the mean final
    score over seeds), the Friedman test and the Nemenyi critical difference (Demšar 2006), as a
    table, the ranks by method and the CD for `plots.cd_diagram`; None with fewer than two methods
    scored on every task. A method lacking a task (MTL has no T1 score) is left out, not ranked
    on fewer tasks: ranks over different task sets would not be comparable."""
    names = task_names(st.select())
    means = {m: [mean_std(final(r, n) for r in st.select(method=m)) for n in names] for m in st.methods()}
    ranked = [m for m, ms in means.items() if all(x is not None for x in ms)]
    left_out = [m for m in means if m not in ranked]
    if len(ranked) < 2:
        return None
    scores = np.array([[x[0] for x in means[m]] for m in ranked])
    fr = stats.friedman_nemenyi(scores)
    task_ranks = [stats.average_ranks(scores[:, [j]]) for j in range(len(names))]
    order = sorted(range(len(ranked)), key=lambda i: (fr.ranks[i], method_rank(ranked[i])))
    rows: list[list[Cell]] = [[ranked[i], f"{fr.ranks[i]:.2f}", *[f"{tr[i]:g}" for tr in task_ranks]] for i in order]
    note = (f"Rank 1 = best mean final score over seeds on a task, ties share the mean rank; averaged over "
            f"{len(names)} tasks ({', '.join(names)}). Friedman chi2 = {fr.chi2:.2f} (p = {fr.p_chi2:.3g}), "
            f"Iman-Davenport F = {fr.ff:.2f} (p = {fr.p_ff:.3g}); Nemenyi critical difference at alpha "
            f"{fr.alpha:g}: CD = {fr.cd:.2f} (q = {fr.q_alpha:.3f}): average ranks closer than CD are not "
            "significantly different (Demšar 2006, docs/metrics.md \"Statistics\").")
    if left_out:
        note += f" Not ranked (no score on every task): {', '.join(left_out)}."
    table = Table("ranks", f"Average rank over tasks, {st.label}", ["method", "average rank", *names], rows,
                  note=note)
    return table, {ranked[i]: float(fr.ranks[i]) for i in order}, fr.cd


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


def _train_epochs(r: dict, task: str) -> list[dict]:
    return [e for f in r["fits"] if f["task"] == task and f["phase"] == "train" for e in f["epochs"]]


def epoch_seconds(r: dict, task: str, clock: str = "wall") -> Value:
    """Mean training seconds per epoch of `task`'s main phase (from the fit logs): wall-clock, or
    with `clock="cpu"` the process's CPU time (None where a round did not record it)."""
    key = "cpu_seconds" if clock == "cpu" else "seconds"
    secs = [e.get(key) for e in _train_epochs(r, task)]
    return float(np.mean(secs)) if secs and None not in secs else None


def relative_epoch_seconds(r: dict, tasks: Sequence[str], clock: str = "wall") -> Value:
    """Training seconds per epoch summed over `tasks`, in units of the cell's own first-task epoch.

    Two cells whose first task is the same work (TERACON's T1 stage, whatever its later sampling)
    then compare even when they ran on machines of different speed, or under different steady
    loads: a board's cells can come from several machines, and raw seconds would measure the machine."""
    first = epoch_seconds(r, r["tasks"][0]["name"], clock)
    secs = [epoch_seconds(r, t, clock) for t in tasks]
    return sum(secs) / first if first and tasks and None not in secs else None


def timing_clock(results: Iterable[dict], tasks: Sequence[str]) -> str:
    """"cpu" when every round of `tasks` in every result recorded its CPU time, else "wall".

    Cells that shared the cores with different loads take different wall-clock time for the same
    work; the CPU time of a one-thread cell does not depend on the load. A comparison reads one
    clock for all its cells, CPU time only when every cell has it."""
    rounds = [e for r in results for t in tasks for e in _train_epochs(r, t)]
    return "cpu" if rounds and all(e.get("cpu_seconds") is not None for e in rounds) else "wall"


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
    clock = timing_clock(st.select(method="teracon", order=None, variant=None), names)
    secs = lambda r, n: epoch_seconds(r, n, clock)
    relative = lambda rs: finite(relative_epoch_seconds(r, names[1:], clock) for r in rs)
    for o in ("default", "reversed"):
        base = relative(st.select(method="teracon", order=o, variant=(("teracon.sampling", "none"),)))
        for v in variants_sorted:
            rs = st.select(method="teracon", order=o, variant=v)
            if not rs:
                continue
            scores.append([o, label(v), *[[final(r, n) for r in rs] for n in names], [mean_final(r) for r in rs]])
            total = [sum(finite(secs(r, n) for n in names[1:])) for r in rs]
            frac = [float(np.mean(finite(x for s in r["method_report"]["stages"].values()
                                          for x in s["sampled_fraction_mean"].values()))) * 100 for r in rs]
            rel = relative(rs)
            ratio = f"{np.mean(rel) / np.mean(base):.2f}" if base and rel else "-"
            speed.append([o, label(v), *[[secs(r, n) for r in rs] for n in names[1:]], total, ratio, frac])
    if st.select(method="pop"):
        scores.insert(0, ["any", "pop", *[[final(r, n) for r in st.select(method="pop")] for n in names],
                          [mean_final(r) for r in st.select(method="pop")]])
    k = len(names)
    return [
        Table("sampling-score", f"Sampling (TERACON): final scores per ρ, {st.label}",
              ["order", "ρ", *names, "mean"], scores, best=[None, None, *["max"] * (k + 1)],
              note="ρ: `min` = ρ_min = 1 − σ(c) for every past task; `relation` = Eq. 15 (default); "
                   "`none` = ρ = 1 (all users, no sampling)."),
        Table("sampling-time", f"Sampling (TERACON): training {'CPU ' if clock == 'cpu' else ''}seconds per epoch, "
              f"{st.label}",
              ["order", "ρ", *[f"{n} s/epoch" for n in names[1:]], "sum s/epoch", "time vs ρ=1", "users sampled %"],
              speed, digits=[0, 0, *[1] * (k - 1), 1, 0, 2],
              note="Seconds are hardware-specific (see each result's env); compare the ratios. `time vs ρ=1` "
                   "divides each cell's summed seconds per epoch by its own T1 epoch (the same work at every ρ), "
                   "so cells computed on machines of different speed compare. "
                   + ("CPU time of each cell's process, which does not depend on what else shared the cores."
                      if clock == "cpu" else
                      "Wall-clock time (not every cell recorded its CPU time): it grows with the load each cell "
                      "ran under, so compare cells that ran under the same load.")),
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
    return pd.DataFrame(rows, columns=["method", "x", "value", "seed"]).sort_values(
        "method", key=lambda m: m.map(method_rank), kind="stable")


def main_fit(r: dict, task: str) -> dict | None:
    """The fit log that selected `task`'s model: its last phase (CONURE: retrain), the cached T1
    fit a method started from, or the joint phase of a joint method."""
    fits = [f for f in r["fits"] if f["task"] == task or task in f["task"].split("+")]
    return fits[-1] if fits else None


def training_table(st: Setting) -> Table | None:
    """Per method and task: the selected round (1-based) and, in the last column, the rounds run
    over all tasks; so a reader sees whether training converged inside its budget."""
    rs = [r for r in st.select() if spec_of(r).method != "pop"]
    if not rs:
        return None
    names = task_names(st.select())
    rows = []
    for m in st.methods():
        cells = [r for r in st.select(method=m)]
        if m == "pop" or not cells:
            continue
        picked = [[(f["best_epoch"] + 1) if (f := main_fit(r, n)) else None for r in cells] for n in names]
        rounds = [sum(len(f["epochs"]) for f in r["fits"]) for r in cells]
        rows.append([m, *picked, rounds])
    select = {f.get("select", "metric") for r in rs for f in r["fits"]}
    crit = "validation cross-entropy" if select == {"loss"} else "validation metric"
    return Table("training", f"Model selection: selected round per task, {st.label}",
                 ["method", *names, "rounds run (all tasks)"], rows, digits=[0, *[1] * len(names), 1],
                 note=f"Round selected by the {crit} (docs/protocol.md §4.4), mean ± std over seeds; a joint "
                      "method's rounds are shared by its tasks.")


def selection_table(st: Setting) -> Table | None:
    """Per method and task: the validation criterion at the selected round (the cross-entropy, or
    the metric where a phase selected on it). On a profile task a reader sets it beside the class
    prior's cross-entropy (`benchmarks/profile_probe.py`): a model that learned nothing of the user
    scores the prior's. A joint phase mixes its tasks' losses, so it has no per-task entry."""
    names = task_names(st.select())
    rows, select = [], set()
    for m in st.methods():
        if m == "pop":
            continue
        fits = [[f if (f := main_fit(r, n)) and f["task"] == n else None for r in st.select(method=m)] for n in names]
        select |= {f.get("select", "metric") for col in fits for f in col if f}
        rows.append([m, *[[(-f["best_criterion"] if f.get("select") == "loss" else f["best_val"])
                           if f else None for f in col] for col in fits]])
    if not select:
        return None
    crit = {frozenset({"loss"}): "cross-entropy", frozenset({"metric"}): "metric"}.get(
        frozenset(select), "criterion (cross-entropy, or the metric where a phase selected on it)")
    lower = " (lower is better)" if "loss" in select else ""
    return Table("selection", f"Model selection: validation {crit} at the selected round, {st.label}",
                 ["method", *names], rows, best=[None] * (len(names) + 1), digits=[0, *[4] * len(names)],
                 note=f"Mean ± std over seeds{lower}. A joint method's phase mixes its tasks' losses, so it has "
                      "no per-task entry (-).")


def validation_curves(st: Setting, task: str) -> tuple[pd.DataFrame, str]:
    """Per-round validation criterion of `task` for every method (default order, clean) and the
    axis label: the cross-entropy where it was recorded, else the task's metric."""
    rows, loss = [], True
    for r in st.select():
        s = spec_of(r)
        f = main_fit(r, task) if s.method != "pop" else None
        if f is None:
            continue
        loss = loss and all(e.get("val_loss") is not None for e in f["epochs"])
        rows += [{"method": s.method, "x": e["epoch"] + 1, "seed": s.seed, "loss": e.get("val_loss"),
                  "metric": e["val"]} for e in f["epochs"]]
    df = pd.DataFrame(rows, columns=["method", "x", "seed", "loss", "metric"])
    metric = next(t["metric"] for t in st.select()[0]["tasks"] if t["name"] == task)
    key, label = ("loss", f"validation cross-entropy on {task}") if loss else \
        ("metric", f"validation {metric_name(metric)} on {task}")
    df = df.rename(columns={key: "value"})[["method", "x", "value", "seed"]]
    return df.sort_values("method", key=lambda m: m.map(method_rank), kind="stable"), label


def capacity_table(st: Setting) -> Table | None:
    """Share of gated units held after each task (methods that report `units_used`, e.g. HAT):
    a method whose units are all held can only train its ungated parameters on later tasks."""
    names = task_names(st.select())
    rows = []
    for m in st.methods():
        cells = [r for r in st.select(method=m) if "units_used" in (r.get("method_report") or {})]
        if cells:
            rows.append([m, *[[r["method_report"]["units_used"].get(n) for r in cells] for n in names]])
    if not rows:
        return None
    return Table("capacity", f"Capacity: share of gated units held after each task, {st.label}",
                 ["method", *names], rows, best=[None] * (len(names) + 1), digits=[0, *[3] * len(names)],
                 note="A unit is held when its cumulative gate exceeds 0.5 (docs/methods.md, HAT).")


def paper_table(st: Setting, key: str) -> Table | None:
    """The paper's published score beside this setting's (mean over seeds) and their ratio, per
    method and task (`curb.paper.PAPER[key]`); methods the paper or the setting lacks are left out."""
    from .paper import PAPER

    paper = PAPER[key]
    rows = []
    for m in st.methods():
        if m not in paper.rows:
            continue
        row: list[Cell] = [m]
        for task, theirs in zip(paper.tasks, paper.rows[m]):
            ours = mean_std(final(r, task) for r in st.select(method=m))
            row += ["-" if theirs is None else f"{theirs:.4f}", "-" if ours is None else f"{ours[0]:.4f}",
                    "-" if theirs is None or ours is None else f"{ours[0] / theirs:.2f}"]
        rows.append(row)
    if not rows:
        return None
    headers = ["method", *[f"{t} {w}" for t in paper.tasks for w in ("paper", "curb", "curb / paper")]]
    return Table("paper", f"Against the paper ({metric_name(paper.metric)}), {st.label}", headers, rows,
                 note=f"Paper: {paper.source}. curb: this board's final scores, mean over seeds. "
                      f"{paper.differences}")


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
        panels[m] = ([f"after {n}" for n in names], [task_label(st, n) for n in names], mean)
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


def metric_name(metric: str) -> str:
    """A metric as an axis names it: MRR@5, HR@10, accuracy."""
    return "accuracy" if metric == "acc" else metric.upper()


def task_label(st: Setting, task: str) -> str:
    """A task with its metric, for an axis tick: "T2\nMRR@5"."""
    return f"{task}\n{metric_name(metric_of(st.select(order=None))[task])}"


def score_axis(st: Setting, template: str = "final test {}") -> str:
    """The y label of scores over all tasks, naming their metric when they share one
    ("final test MRR@5"); `{}` in `template` is replaced by the metric."""
    rs = st.select(order=None)
    metrics = {metric_of(rs)[n] for n in task_names(rs)}
    return template.format(metric_name(metrics.pop()) if len(metrics) == 1 else "score (each task's metric)")


def score_data(st: Setting) -> pd.DataFrame:
    """Final score per (method, seed, task); `panel` names the task's metric (one panel each)."""
    metric = metric_of(st.select())
    rows = [{"method": spec_of(r).method, "task": n, "value": final(r, n),
             "panel": f"final test {metric_name(metric[n])}"}
            for r in st.select() for n in task_names(st.select()) if final(r, n) is not None]
    return pd.DataFrame(rows, columns=["method", "task", "value", "panel"]).sort_values(
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
    order = sorted(df["row"].unique(), key=lambda x: (not x.startswith("random init"), method_rank(x.split(" ")[0]), x))
    holdout = df["holdout"].iloc[0]
    tables = []
    for group in ("warm", "cold"):
        rows = []
        for src in order:
            d = df[(df.row == src) & (df.group == group)].sort_values("seed")
            if not d.empty:
                rows.append([src, f"{d['n_users'].mean():.0f}", *[d[k].tolist() for k in COLD_START_METRICS]])
        tables.append(Table(f"cold-start-{group}", f"Cold start, {group} users: NCF on the held-out {holdout}, "
                            f"{st.label}", ["user init", "users", *[k.upper() for k in COLD_START_METRICS]], rows,
                            best=[None, None, *["max"] * len(COLD_START_METRICS)]))
    protocol = (f"against {n} sampled negatives" for n in sorted(df["eval_negatives"].unique()))
    below = " or ".join(str(t) for t in sorted(df["cold_threshold"].unique()))
    tables[-1].note = ("NeuMF trained on the held-out task with user vectors from random init or a method's "
                       f"representation; leave-one-out {' or '.join(protocol)} (docs/coldstart.md); cold = "
                       f"fewer than {below} training interactions (natural and simulated).")
    return tables


def cold_start_bars(st: Setting) -> pd.DataFrame:
    df = cold_start_frame(st)
    df = df[df.group.isin(["warm", "cold"])]
    return pd.DataFrame({"method": df["row"], "task": df["group"] + " users", "value": df["hr@10"]})
