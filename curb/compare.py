"""`curb compare`: does a protocol knob change the scores? One table per setting, from result files.

A protocol choice (how a training step is composed, the split level, a precision, a softmax
approximation) is a claim about the benchmark itself, so it gets the same treatment as a claim
about methods: cells that differ only in the knob are grouped, every arm is compared with a
reference arm per method and task, and the verdict comes from a paired test over the same test
users and seeds (docs/metrics.md), Holm-corrected over the comparisons of one task. Where the
arms score different test users (e.g. `split.level`, which changes who is a test user), no
pairing exists: the table then compares each arm's lift over popularity on its own split.

The knob's value is read from each result's resolved config, not from its overrides, so a cell
run with the default and a cell that spelled the default out are the same arm.
"""

from __future__ import annotations

import argparse
import zlib
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from . import stats
from .errors import CurbError
from .records import KNOBS_ADDED, RecordedSpec, is_cold_start
from .resultsets import metric_of, method_rank, task_names
from .results import ResultError, iter_results
from .tables import Table, mean_std

ALPHA = 0.05
MARKS = {"tied": "≈", "higher": "▲", "lower": "▽"}


def knob_value(result: dict, key: str) -> str:
    """The resolved value of `key` ("section.field") in a result's config, as text ("none" for None)."""
    section, _, name = key.partition(".")
    config = dict(result.get("config", {}))
    if section == result["spec"]["method"]:  # a method's own knob (e.g. teracon.sampling)
        config[section] = config.get("method", {})
    if key in KNOBS_ADDED and isinstance(config.get(section), dict) and name not in config[section]:
        return KNOBS_ADDED[key]  # written before the knob existed
    if section not in config or not isinstance(config[section], dict) or name not in config[section]:
        known = sorted(f"{s}.{k}" for s, v in config.items() if isinstance(v, dict) for k in v)
        raise CurbError(f"--by {key}: not a config key of the results; known keys: {', '.join(known)}")
    value = config[section][name]
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


@dataclass
class Group:
    """The cells of one setting that differ only in the knob: results by (method label, arm)."""

    label: str
    cells: dict[tuple[str, str], list[dict]]

    def arms(self) -> list[str]:
        return sorted({arm for _, arm in self.cells}, key=_arm_order)

    def methods(self) -> list[str]:
        return sorted({m for m, _ in self.cells}, key=lambda m: method_rank(m.split(" ")[0]))


def _arm_order(value: str) -> tuple:
    """Numbers in numeric order, then words ("none" last among the usual batch settings)."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def group_results(results: list[dict], key: str) -> list[Group]:
    """Groups of cells equal in dataset, data, preset, order, noise and every override except `key`."""
    groups: dict[tuple, dict[tuple[str, str], list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        s = RecordedSpec.of(r)
        rest = tuple((k, v) for k, v in s.shared_overrides if k != key)
        where = (s.dataset, r["dataset"]["base_fingerprint"], s.preset or "", s.order_tag, rest)
        variant = " ".join(f"{k}={v}" for k, v in s.method_overrides if k != key)
        groups[where][(f"{s.method} {variant}".strip(), knob_value(r, key))].append(r)
    out = []
    for (dataset, _, preset, order, rest), cells in sorted(groups.items(), key=lambda kv: kv[0][:4]):
        label = " ".join([dataset, *([preset] if preset else []), order, *(f"{k}={v}" for k, v in rest)])
        out.append(Group(label, {k: sorted(v, key=lambda r: r["spec"]["seed"]) for k, v in cells.items()}))
    return out


def _per_user(results: list[dict], task: str) -> list[stats.PerUser] | None:
    entries = [stats.per_user(r, task) for r in results]
    return None if any(e is None for e in entries) else entries


def _scores(results: list[dict], task: str) -> list[float]:
    return [r["final"][task] for r in results if r["final"].get(task) is not None]


def _train_seconds(results: list[dict]) -> list[float]:
    return [sum(t["train_s"] for t in r["timings"]["tasks"]) for r in results]


@dataclass(frozen=True)
class Contrast:
    """One arm against the reference arm on one method and task (pooled over common seeds)."""

    relative: stats.Interval  # score(arm) / score(reference) - 1, with a paired bootstrap interval
    test: stats.Comparison


def contrast(arm: list[dict], ref: list[dict], task: str, *, rng: np.random.Generator,
             n_boot: int, n_perm: int) -> Contrast | None:
    """Paired comparison over the seeds both arms ran and the users both scored; None when the
    per-user scores are missing or the arms scored different users (nothing to pair)."""
    ref_by_seed = {r["spec"]["seed"]: r for r in ref}
    common = [(a, ref_by_seed[a["spec"]["seed"]]) for a in arm if a["spec"]["seed"] in ref_by_seed]
    if not common:
        return None
    a, b = _per_user([x for x, _ in common], task), _per_user([y for _, y in common], task)
    if a is None or b is None:
        return None
    try:
        sums, counts = stats.stack_per_user([*a, *b])
    except ValueError:  # different test users: no pairing
        return None
    n = len(common)
    stack = np.stack([sums[:n], sums[n:]])
    reps = stats.bootstrap_replicates(stack, counts, n_boot=n_boot, rng=rng)
    est = stats.pooled_scores(stack, counts)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = stats.percentile_interval(reps[:, 0] / reps[:, 1] - 1, est[0] / est[1] - 1, 0.95)
    test = stats.paired_test(stack[0], stack[1], counts, n_perm=n_perm, rng=rng)
    return Contrast(relative, test)


def compare_table(group: Group, key: str, reference: str, *, seed: int = 0, n_boot: int = 2000,
                  n_perm: int = 9999, alpha: float = ALPHA) -> Table:
    """Rows (method, task, arm): score per seed, lift over pop in the same arm, and against the
    reference arm: relative difference [95 % CI], Holm-adjusted p and the verdict. Each contrast
    draws from its own generator, keyed by `seed`, method, task and arm, so its interval and p do
    not move when other cells land (only the Holm step sees the rest of its task)."""
    results = [r for rs in group.cells.values() for r in rs]
    tasks, metrics = task_names(results), metric_of(results)
    arms = group.arms()
    if reference not in arms:
        raise CurbError(f"--against {reference}: no cells of {group.label} with {key}={reference}; "
                        f"arms there: {', '.join(arms)}")
    pop = {arm: group.cells.get(("pop", arm)) for arm in arms}
    rows, pending = [], []
    for task in tasks:
        column = []
        for method in group.methods():
            if method == "pop":
                continue
            for arm in arms:
                cells = group.cells.get((method, arm))
                if not cells or not _scores(cells, task):
                    continue
                base = _pop_for(pop, arm, cells, task)
                row = [method, f"{task} ({metrics.get(task, '')})", arm, str(len(cells)), _scores(cells, task),
                       _lift(cells, base, task), _pop_z(cells, base, task), "", "", "", _train_seconds(cells)]
                if arm != reference and group.cells.get((method, reference)):
                    rng = np.random.default_rng([seed, zlib.crc32(f"{method}/{task}/{arm}".encode())])
                    c = contrast(cells, group.cells[(method, reference)], task, rng=rng, n_boot=n_boot, n_perm=n_perm)
                    if c is None:
                        row[7] = "not paired (different test users)"
                    else:
                        column.append((len(rows), c))
                elif arm == reference:
                    row[7] = "reference"
                rows.append(row)
        pending.append(column)
    for column in pending:
        adjusted = stats.holm([c.test.p for _, c in column]) if column else []
        for (i, c), q in zip(column, adjusted):
            verdict = "tied" if q > alpha else ("higher" if c.test.effect > 0 else "lower")
            iv = c.relative
            rows[i][7] = f"{iv.estimate:+.1%} [{iv.low:+.1%}, {iv.high:+.1%}]"
            rows[i][8] = f"{q:.3g}"
            rows[i][9] = f"{MARKS[verdict]} {verdict}"
    headers = ["method", "task", key, "seeds", "final score", "× pop", "z vs pop",
               f"vs {key}={reference}: relative [95 % CI]", "p (Holm)", "verdict", "train s per cell"]
    note = (f"Verdicts: a paired sign-flip test over the same test users and the seeds both arms ran, pooled "
            f"({n_perm} flips; the score column shows every seed of the arm), Holm-"
            f"corrected over the comparisons of each task, α = {alpha}; ≈ = not significantly different from the "
            f"reference arm. Intervals: paired percentile bootstrap over users ({n_boot} resamples). × pop: the "
            "arm's mean score over the popularity baseline's on the same split. z vs pop: the arm's score minus "
            "pop's on the same users, pooled over the arm's seeds, in standard errors over users "
            "(stats.paired_z); above 3, the arm beats popularity / the majority class by more than 3 sd. "
            "Train seconds: the cell's summed "
            "training time, which depends on the machine's load when it ran.")
    digits = [4, 4, 4, 4, 4, 2, 0, 4, 4, 4, 0]
    return Table(f"compare-{key}", f"{group.label}: {key}", headers, rows, digits=digits,
                 note=note + code_note(group, key))


def code_note(group: Group, key: str) -> str:
    """A sentence naming the code each arm's cells ran (the source digest in `env.code`), when the
    cells of the group did not all run the same code; "" otherwise."""
    per_arm: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for (_, arm), cells in group.cells.items():
        for r in cells:
            per_arm[arm][r["env"].get("code", "unrecorded")] += 1
    if len({c for codes in per_arm.values() for c in codes}) < 2:
        return ""
    parts = [f"{key}={arm}: " + ", ".join(f"{c} ({n} cell{'s' if n != 1 else ''})" for c, n in sorted(per_arm[arm].items()))
             for arm in group.arms()]
    return (" The cells ran different code (source digest, `env.code`; \"unrecorded\": written before curb recorded "
            "it): " + "; ".join(parts) + ".")


def _users(results: list[dict], task: str) -> set[str]:
    return {(r.get("per_user") or {}).get(task, {}).get("users", "?") for r in results}


def _pop_for(pop: dict[str, list[dict] | None], arm: str, cells: list[dict], task: str) -> list[dict] | None:
    """pop's cells of the same arm, else of an arm that scored the same test users (pop does not
    train, so only its split matters); None when no pop cell scored these users."""
    if pop.get(arm):
        return pop[arm]
    users = _users(cells, task)
    return next((p for p in pop.values() if p and _users(p, task) == users and "?" not in users), None)


def _pop_z(cells: list[dict], pop: list[dict] | None, task: str) -> str:
    """The arm's pooled score minus pop's on the same users, in standard errors (stats.paired_z);
    pop does not train, so its per-user scores (averaged over its cells) stand beside every seed.
    "-" without pop or per-user scores, or when they scored different users."""
    a, b = (_per_user(cells, task), _per_user(pop, task)) if pop else (None, None)
    if a is None or b is None:
        return "-"
    try:
        sums, counts = stats.stack_per_user([*a, *b])
    except ValueError:
        return "-"
    base = np.broadcast_to(sums[len(a):].mean(axis=0), sums[:len(a)].shape)
    return f"{stats.paired_z(sums[:len(a)], base, counts):+.1f}"


def _lift(cells: list[dict], pop: list[dict] | None, task: str) -> list[float] | str:
    """Per seed, score / pop's score on the same split (pop does not depend on the seed's training)."""
    if not pop:
        return "-"
    base = mean_std(_scores(pop, task))
    if base is None or base[0] == 0:
        return "-"
    return [s / base[0] for s in _scores(cells, task)]


def cmd_compare(args: "argparse.Namespace") -> int:
    """The `curb compare` command (its parser is in curb/cli.py, so `curb --help` stays light)."""
    if not args.run_dir.is_dir():
        raise ResultError(f"{args.run_dir} is not a folder")
    results = []
    for path, r in iter_results(args.run_dir):
        if isinstance(r, ResultError):
            print(f"warning: skipping {r}")
        elif not is_cold_start(r):  # continual cells only (cold-start results have no R matrix)
            results.append(r)
    if args.methods:
        keep = {m.strip() for m in args.methods.split(",")} | {"pop"}
        results = [r for r in results if r["spec"]["method"] in keep]
    if not results:
        raise ResultError(f"no result files under {args.run_dir}")
    # A setting with the reference arm alone still gets its table (scores and lift over pop), so a
    # single run's "× pop" comes from the same command.
    groups = [g for g in group_results(results, args.by) if len(g.arms()) > 1 or g.arms() == [args.against]]
    if not groups:
        raise CurbError(f"no setting under {args.run_dir} has cells with {args.by}={args.against} or more than one "
                        f"value of {args.by}")
    text = []
    for g in groups:
        if args.against not in g.arms():
            print(f"skipping {g.label}: no {args.by}={args.against} cells (arms: {', '.join(g.arms())})")
            continue
        t = compare_table(g, args.by, args.against, seed=args.seed)
        text.append(f"### {t.title}\n\n{t.markdown()}\n")
    out = "\n".join(text)
    print(out)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(out)
    return 0
