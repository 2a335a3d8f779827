"""The paper's claims, each checked against one board's result files with a stated test.

Why this module looks the way it does (docs/metrics.md, "Claims"):
- A claim is a declarative record: what it states, which results it reads, which test decides
  it. `evaluate_claims` turns a board's result dicts into one `Verdict` per claim:
  "confirmed", "not confirmed" (the data cannot tell), "refuted" (the data say the opposite
  with significance) or "no data" (the cells the claim needs are absent; never an exception).
- Test scores are compared on the same test users whenever every cell involved carries
  per-user scores (`curb.stats`: paired sign-flip test over users, percentile bootstrap);
  otherwise, and for quantities that exist per cell only (timings, validation curves,
  cold-start HR, spread over task orders), cells are paired by (order, seed) and a paired
  t-test runs over them. The verdict's `test` says which one decided it.
- Deterministic: every claim draws from its own generator seeded by (seed, claim id), so the
  same result files always give the same table, which `curb leaderboard check` can compare.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import stats
from .records import SHARED_SECTIONS, RecordedSpec
from .resultsets import transfer_mean
from .sections import relative_epoch_seconds, t1_curve, timing_clock
from .tables import Cell, Table

ALPHA = 0.05
SEED = 0
N_PERM = 9999  # sign flips per test: the smallest p is 1e-4, far below Holm's alpha / 8
N_BOOT = 2000
EQUIVALENCE_MARGIN = 0.05  # claim (e): relative to the rho = 1 score
SPEEDUP = 2.0  # claim (e): "at >= 2x speed"
VERDICTS = ("confirmed", "not confirmed", "refuted", "no data")

Key = tuple[str, int]  # (order, seed): the unit by which two cells are paired
Cells = dict[Key, dict]
Side = list[tuple[float, Cells]]  # a linear combination of cell groups (e.g. clean - noisy)


@dataclass(frozen=True)
class Verdict:
    claim: str  # the claim's id
    statement: str
    verdict: str  # one of VERDICTS
    evidence: str  # which results were read
    test: str
    statistic: str
    p: float | None


@dataclass(frozen=True)
class Finding:
    """What a claim's check returns; `evaluate_claims` adds the claim's id and statement."""

    verdict: str
    evidence: str
    test: str = "-"
    statistic: str = "-"
    p: float | None = None


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    reads: str  # which results the claim reads
    test: str  # the test that decides it
    check: Callable[["Evidence", np.random.Generator], Finding]


# ------------------------------------------------------------------------------ the results
def _spec(r: dict) -> RecordedSpec:
    return RecordedSpec.of(r)


def _real_tasks(r: dict) -> list[str]:
    return [t["name"] for t in r["tasks"] if t["name"] != "noise"]


class Evidence:
    """One board's results: the cells of its setting, the cells of its text-init twin (the same
    setting with backbone.item_init=text) and its cold-start results. Results of several
    settings are refused: a claim never mixes data, presets or shared overrides."""

    def __init__(self, results: list[dict]):
        self.base: list[dict] = []
        self.text: list[dict] = []
        self.cold: list[dict] = []
        settings = set()
        for r in results:
            if r.get("kind") == "cold-start":
                s = r["spec"]
                shared = {k: v for k, v in s["overrides"].items() if k.split(".", 1)[0] in SHARED_SECTIONS}
                settings.add((s["dataset"], s["preset"], _without_init(shared), r["dataset"]["fingerprint"]))
                self.cold.append(r)
                continue
            spec = _spec(r)
            shared = dict(spec.shared_overrides)
            settings.add((spec.dataset, spec.preset, _without_init(shared), r["dataset"]["base_fingerprint"]))
            (self.text if shared.get("backbone.item_init") == "text" else self.base).append(r)
        if len(settings) > 1:
            raise ValueError(f"evaluate_claims reads one board's results; these come from {len(settings)} settings "
                             f"(dataset, preset, shared overrides, data): {sorted(settings, key=str)}")

    def cells(self, method: str, *, order: str | None = "default", noise: int | None = None,
              variant: tuple[tuple[str, str], ...] = (), text: bool = False) -> Cells:
        """Cells of `method` by (order, seed); order None: every order; clean stream unless
        `noise` names the position; `variant` = the method's own overrides."""
        out: Cells = {}
        for r in sorted(self.text if text else self.base, key=lambda r: r["spec_hash"]):
            s = _spec(r)
            if (s.method == method and (order is None or s.order == order) and s.noise == noise
                    and s.method_overrides == variant):
                out.setdefault((s.order, s.seed), r)
        return dict(sorted(out.items()))

    def methods(self) -> list[str]:
        """Methods with default-order, clean, default-variant cells."""
        return sorted({_spec(r).method for r in self.base
                       if _spec(r).order == "default" and _spec(r).noise is None and not _spec(r).method_overrides})

    def noise_positions(self, method: str) -> set[int]:
        return {_spec(r).noise for r in self.base if _spec(r).method == method and _spec(r).noise is not None
                and _spec(r).order == "default" and not _spec(r).method_overrides}


def _without_init(shared: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in shared.items() if k != "backbone.item_init"))


# ------------------------------------------------------------------------------- comparisons
def _task_means(cells: Cells, keys: list[Key], tasks: list[str]) -> np.ndarray:
    """Mean final score over `tasks` per cell (NaN where a task has no score)."""
    return np.array([np.mean([np.nan if cells[k]["final"].get(t) is None else cells[k]["final"][t] for t in tasks])
                     for k in keys], dtype=np.float64)


def _user_arrays(groups: list[Cells], keys: list[Key], tasks: list[str], row: str = "final"
                 ) -> list[tuple[list[np.ndarray], np.ndarray]] | None:
    """Per task: ([per group: sums [n_keys, n_users]], counts), or None unless every cell has
    per-user scores of every task and all of them score the same users."""
    out = []
    for t in tasks:
        entries = [[stats.per_user(g[k], t, row) for k in keys] for g in groups]
        flat = [e for es in entries for e in es]
        if any(e is None for e in flat) or len({(e.users, e.counts.tobytes()) for e in flat}) != 1:
            return None
        out.append(([np.stack([e.sums for e in es]) for es in entries], flat[0].counts))
    return out


def _common_keys(groups: list[Cells]) -> list[Key]:
    return sorted(set.intersection(*(set(g) for g in groups))) if groups else []


def _contrast(a: Side, b: Side, tasks: list[str], rng: np.random.Generator) -> tuple[str, stats.Comparison] | None:
    """Two-sided paired test of mean-over-tasks score(a) - score(b), a and b linear combinations
    of cell groups paired by (order, seed). Per-user sign-flip test when every cell has per-user
    scores, else a paired t-test over the cells; None when there is nothing to pair."""
    groups = [g for _, g in a + b]
    keys = _common_keys(groups)
    if not keys:
        return None
    arrays = _user_arrays(groups, keys, tasks)
    if arrays is not None:
        weights = [w for w, _ in a + b]
        na = len(a)
        side_a = [sum(w * s for w, s in zip(weights[:na], sums[:na])) for sums, _ in arrays]
        side_b = [sum(w * s for w, s in zip(weights[na:], sums[na:])) for sums, _ in arrays]
        res = stats.task_mean_test(side_a, side_b, [c for _, c in arrays], n_perm=N_PERM, rng=rng)
        return (f"paired sign-flip test over {res.n} (task, user) units x {len(keys)} cells, "
                f"{N_PERM} flips"), res
    va = sum(w * _task_means(g, keys, tasks) for w, g in a)
    vb = sum(w * _task_means(g, keys, tasks) for w, g in b)
    if len(keys) < 2 or not (np.isfinite(va).all() and np.isfinite(vb).all()):
        return None
    return f"paired t-test over {len(keys)} cells (no per-user scores)", stats.paired_t(va, vb)


def _direction(effect: float, p: float, claimed: int) -> str:
    """A two-sided test decides a directional claim: significant in the claimed direction
    confirms it, significant the other way refutes it."""
    if p > ALPHA or effect == 0:
        return "not confirmed"
    return "confirmed" if np.sign(effect) == claimed else "refuted"


def _conjunction(parts: list[stats.Comparison], claimed: int, complete: bool = True) -> tuple[str, float]:
    """Verdict and p of "every part holds" (intersection-union test: each part at ALPHA, p = the
    largest); refuted when any part is significant the other way (p = the smallest such).
    `complete` False: a part the claim needs is missing, so it cannot be confirmed."""
    verdicts = [_direction(c.effect, c.p, claimed) for c in parts]
    against = [c.p for c, v in zip(parts, verdicts) if v == "refuted"]
    if against:
        return "refuted", min(against)
    if complete and all(v == "confirmed" for v in verdicts):
        return "confirmed", max(c.p for c in parts)
    return "not confirmed", max(c.p for c in parts)


def _seeds(keys) -> str:
    return ",".join(str(s) for s in sorted({k[1] for k in keys}))


# ----------------------------------------------------------------------------------- claims
def _best_all_task(ev: Evidence, rng: np.random.Generator) -> Finding:
    teracon = ev.cells("teracon")
    if not teracon:
        return Finding("no data", "no default-order TERACON cells")
    tasks = _real_tasks(next(iter(teracon.values())))
    rivals, left_out, results = [], [], []
    for m in ev.methods():
        if m == "teracon":
            continue
        cells = ev.cells(m)
        if any(c["final"].get(t) is None for c in cells.values() for t in tasks):
            left_out.append(m)
            continue
        found = _contrast([(1.0, teracon)], [(1.0, cells)], tasks, rng)
        if found is None:
            left_out.append(m)
            continue
        rivals.append(m)
        results.append(found)
    if not rivals:
        return Finding("no data", "no other method with a score on every task that pairs with TERACON "
                                  "(per-user scores, or 2 or more common seeds)")
    adjusted = stats.holm([r.p for _, r in results])
    effects = np.array([r.effect for _, r in results])
    ahead = [(q, m) for m, e, q in zip(rivals, effects, adjusted) if e < 0 and q <= ALPHA]
    if ahead:
        verdict, p = "refuted", min(q for q, _ in ahead)
    elif (effects > 0).all() and (adjusted <= ALPHA).all():
        verdict, p = "confirmed", float(adjusted.max())
    else:
        verdict, p = "not confirmed", float(adjusted.max())
    closest = int(np.argmin(effects))
    evidence = (f"final R of {', '.join(tasks)} (mean over tasks), default order, seeds {_seeds(teracon)}: TERACON vs "
                f"{', '.join(rivals)}" + (f"; left out (not scored on every task, or not paired by seed): {', '.join(left_out)}" if left_out else ""))
    return Finding(verdict, evidence, f"{_test_names(results)}; Holm over {len(rivals)} comparisons",
                   f"closest: TERACON - {rivals[closest]} = {effects[closest]:+.4f}", p)


def _test_names(results: list[tuple[str, stats.Comparison]]) -> str:
    return "; ".join(dict.fromkeys(name for name, _ in results))


def _conure_bwt_zero(ev: Evidence, rng: np.random.Generator) -> Finding:
    cells = [r for r in ev.base + ev.text if _spec(r).method == "conure" and r.get("transfer")]
    entries = [v for r in cells for t, v in zip(r["tasks"], r["transfer"]["bwt"]) if t["name"] != "noise" and v is not None]
    if not entries:
        return Finding("no data", "no CONURE cell with a BWT entry")
    largest = max(abs(v) for v in entries)
    nonzero = sum(v != 0.0 for v in entries)
    return Finding("confirmed" if nonzero == 0 else "refuted",
                   f"every BWT entry of {len(cells)} CONURE cells (every order, noise and init)",
                   "exact check: BWT == 0 for every entry (frozen parameters leave no sampling error to test)",
                   f"{nonzero} of {len(entries)} entries non-zero; largest absolute BWT {largest:.3g} %", None)


def _teracon_bwt(ev: Evidence, rng: np.random.Generator) -> Finding:
    cells = ev.cells("teracon")
    if not cells:
        return Finding("no data", "no default-order TERACON cells")
    keys = list(cells)
    first = cells[keys[0]]
    bwts = [(r.get("transfer") or {}).get("bwt") or [] for r in cells.values()]
    # a task counts where some cell has its BWT (the last task has none; a cell whose score right
    # after the task is 0 has none either: the relative change is undefined)
    tasks = [t["name"] for i, t in enumerate(first["tasks"])
             if t["name"] != "noise" and any(i < len(b) and b[i] is not None for b in bwts)]
    evidence = f"BWT of {', '.join(tasks)} (relative %), default order, seeds {_seeds(keys)}"
    arrays = _user_arrays([cells], keys, tasks, "final")
    diags = _user_arrays([cells], keys, tasks, "diag")
    if tasks and arrays is not None and diags is not None:
        per_task, estimates, undefined = [], [], []
        for task, (final_sums, counts), (diag_sums, _) in zip(tasks, arrays, diags):
            ok = diag_sums[0].sum(1) > 0  # the seeds whose score right after the task is not 0
            undefined += [f"{task} seed {k[-1]}" for k, good in zip(keys, ok) if not good]
            if not ok.any():
                continue
            f, d = final_sums[0][ok], diag_sums[0][ok]
            stack = np.concatenate([f, d])[:, None, :]  # one replicate column per (row, seed)
            with np.errstate(divide="ignore", invalid="ignore"):
                reps = stats.bootstrap_replicates(stack, counts, n_boot=N_BOOT, rng=rng)
                per_task.append(((reps[:, :len(f)] - reps[:, len(f):]) / reps[:, len(f):] * 100).mean(axis=1))
            estimates.append(float(((f.sum(1) - d.sum(1)) / d.sum(1) * 100).mean()))
        if undefined:
            evidence += f"; left out, score 0 right after the task (relative BWT undefined): {', '.join(undefined)}"
        reps = np.mean(per_task, axis=0) if per_task else np.full(N_BOOT, np.nan)
        if not np.isfinite(reps).any():
            return Finding("no data", evidence + ": no resample with a non-zero score right after every task")
        ci = stats.percentile_interval(reps, float(np.mean(estimates)), 0.95)
        p = stats.bootstrap_p(reps, alternative="greater" if ci.estimate >= 0 else "less")
        test = f"percentile bootstrap over test users ({N_BOOT} resamples, shared by the seeds), 95 % interval"
    else:
        values = [v for r in cells.values() if (v := transfer_mean(r, "bwt")) is not None]
        if len(values) < 2:
            return Finding("no data", evidence + ": fewer than 2 cells with a BWT and no per-user scores")
        ci = stats.t_interval(values, 0.95)
        p = stats.paired_t(values, np.zeros(len(values)), alternative="greater" if ci.estimate >= 0 else "less").p
        test = f"t interval over {len(values)} cells (no per-user scores), 95 %"
    verdict = "confirmed" if ci.low >= 0 else "refuted" if ci.high < 0 else "not confirmed"
    return Finding(verdict, evidence, test + "; confirmed if the lower bound >= 0, refuted if the upper bound < 0; "
                                             "p one-sided, against the side of the estimate",
                   f"mean BWT {ci.estimate:+.2f} % [{ci.low:+.2f}, {ci.high:+.2f}]", p)


def _noise_robustness(ev: Evidence, rng: np.random.Generator) -> Finding:
    positions = ev.noise_positions("teracon")
    if not positions:
        return Finding("no data", "no noisy default-order TERACON cells")
    pos = min(positions)
    rivals = ("conure", "hat")
    present = ["teracon", *(m for m in rivals if pos in ev.noise_positions(m))]
    if len(present) < 2:
        return Finding("no data", f"no noisy CONURE or HAT cells with T' after T{pos}")
    clean = {m: ev.cells(m) for m in present}
    noisy = {m: ev.cells(m, noise=pos) for m in present}
    tasks = _real_tasks(next(iter(clean["teracon"].values())))
    tests, drops = [], {}
    for m in present:
        keys = _common_keys([clean[m], noisy[m]])
        drops[m] = float(np.mean(_task_means(clean[m], keys, tasks) - _task_means(noisy[m], keys, tasks)))
    for rival in present[1:]:
        found = _contrast([(1.0, clean["teracon"]), (-1.0, noisy["teracon"])],
                          [(1.0, clean[rival]), (-1.0, noisy[rival])], tasks, rng)
        if found is not None:
            tests.append(found)
    if not tests:
        return Finding("no data", "no seed with clean and noisy cells of TERACON and a rival")
    verdict, p = _conjunction([r for _, r in tests], claimed=-1, complete=len(tests) == len(rivals))
    keys = _common_keys([clean["teracon"], noisy["teracon"]])
    return Finding(verdict, f"final scores of {', '.join(tasks)} with and without T' after T{pos}, "
                            f"{', '.join(present)}, seeds {_seeds(keys)}",
                   f"{_test_names(tests)} on drop(TERACON) - drop(rival); every rival must hold "
                   "(intersection-union: p = the largest)",
                   "drop = clean - noisy (mean over tasks): " + ", ".join(f"{m} {d:+.4f}" for m, d in drops.items()), p)


def _sampling(ev: Evidence, rng: np.random.Generator) -> Finding:
    relation = ev.cells("teracon", order=None)
    full = ev.cells("teracon", order=None, variant=(("teracon.sampling", "none"),))
    keys = _common_keys([relation, full])
    if not keys:
        return Finding("no data", "needs TERACON cells with relation-aware sampling and with teracon.sampling=none")
    relation, full = {k: relation[k] for k in keys}, {k: full[k] for k in keys}
    tasks = _real_tasks(relation[keys[0]])
    evidence = f"final scores and training s/epoch of {', '.join(tasks)}, TERACON relation vs rho=1, " \
               f"{len(keys)} cells (orders {', '.join(sorted({k[0] for k in keys}))}; seeds {_seeds(keys)})"
    margin = EQUIVALENCE_MARGIN * float(np.mean(_task_means(full, keys, tasks)))
    arrays = _user_arrays([relation, full], keys, tasks)
    if arrays is not None:
        diffs = []
        for (sums, counts) in arrays:
            reps = stats.bootstrap_replicates(np.stack(sums), counts, n_boot=N_BOOT, rng=rng)
            diffs.append(reps[:, 0] - reps[:, 1])
        reps = np.mean(diffs, axis=0)
        estimate = float(np.mean(_task_means(relation, keys, tasks) - _task_means(full, keys, tasks)))
        equiv = stats.equivalence_bootstrap(reps, estimate, margin, sum(len(c) for _, c in arrays))
        ci = stats.percentile_interval(reps, estimate, 0.90)
        score_test = f"TOST by percentile bootstrap over test users ({N_BOOT} resamples)"
    elif len(keys) >= 2:
        va, vb = _task_means(relation, keys, tasks), _task_means(full, keys, tasks)
        equiv = stats.equivalence_t(va, vb, margin)
        ci = stats.t_interval(va - vb, 0.90)
        score_test = f"TOST by paired t over {len(keys)} cells (no per-user scores)"
    else:
        return Finding("no data", evidence + ": one cell pair and no per-user scores")
    clock = timing_clock([*relation.values(), *full.values()], tasks)
    ratios = [r for k in keys if (r := _time_ratio(full[k], relation[k], tasks[1:], clock)) is not None]
    if len(ratios) < 2:
        return Finding("no data", evidence + ": fewer than 2 cell pairs with training times")
    if clock == "wall":
        evidence += "; times are wall-clock (not every cell recorded its CPU time), which the load of each run moves"
    speed = stats.paired_t(np.log(ratios), np.full(len(ratios), math.log(SPEEDUP)))
    outside = ci.low >= margin or ci.high <= -margin
    if outside or (speed.effect < 0 and speed.p <= ALPHA):
        verdict = "refuted"
    elif equiv.p <= ALPHA and speed.effect > 0 and speed.p <= ALPHA:
        verdict = "confirmed"
    else:
        verdict = "not confirmed"
    return Finding(verdict, evidence,
                   f"{score_test}, margin ±{EQUIVALENCE_MARGIN:.0%} of the rho=1 score; speed: t-test of log({clock} time "
                   f"rho=1 / {clock} time relation) > log {SPEEDUP:g} over cells, each cell's time in units of its own T1 "
                   "epoch (the same work in both, so cells from machines of different speed compare); both must "
                   "hold (p = the larger)",
                   f"Δ = {ci.estimate:+.4f}, 90 % CI [{ci.low:+.4f}, {ci.high:+.4f}], margin ±{margin:.4f}; "
                   f"speed-up {math.exp(float(np.mean(np.log(ratios)))):.2f}x (geometric mean)",
                   max(equiv.p, speed.p))


def _time_ratio(slow: dict, fast: dict, tasks: list[str], clock: str) -> float | None:
    """Seconds per epoch summed over `tasks` on `clock`, each cell's in units of its own T1 epoch
    (the same work in both), slow / fast; None when a log is missing."""
    a, b = relative_epoch_seconds(slow, tasks, clock), relative_epoch_seconds(fast, tasks, clock)
    return a / b if a is not None and b else None


def _order_robustness(ev: Evidence, rng: np.random.Generator) -> Finding:
    cells = {m: ev.cells(m, order=None) for m in ("teracon", "conure")}
    orders = sorted(set.intersection(*({k[0] for k in c} for c in cells.values())))
    if len(orders) < 2:
        return Finding("no data", "needs TERACON and CONURE cells in 2 or more common task orders")
    seeds = sorted(s for s in {k[1] for c in cells.values() for k in c}
                   if all((o, s) in c for o in orders for c in cells.values()))
    evidence = f"final scores of TERACON and CONURE in {len(orders)} task orders, seeds {','.join(map(str, seeds))}"
    if len(seeds) < 2:
        return Finding("no data", evidence + ": fewer than 2 seeds have every order")
    tasks = _real_tasks(cells["teracon"][(orders[0], seeds[0])])
    spread = {m: np.array([np.mean([np.std([c[(o, s)]["final"][t] for o in orders], ddof=1) for t in tasks])
                           for s in seeds]) for m, c in cells.items()}
    res = stats.paired_t(spread["teracon"], spread["conure"])
    return Finding(_direction(res.effect, res.p, -1), evidence,
                   f"paired t-test over {len(seeds)} seeds of the std over orders (mean over tasks)",
                   f"std over orders: TERACON {spread['teracon'].mean():.4f}, CONURE {spread['conure'].mean():.4f}",
                   res.p)


def _mtl_vs_sinmo(ev: Evidence, rng: np.random.Generator) -> Finding:
    mtl, sinmo = ev.cells("mtl"), ev.cells("sinmo")
    if not mtl or not sinmo:
        return Finding("no data", "needs default-order MTL and SinMo cells")
    tasks = [t for t in _real_tasks(next(iter(mtl.values()))) if all(c["final"].get(t) is not None for c in mtl.values())]
    found = [(t, f) for t in tasks if (f := _contrast([(1.0, mtl)], [(1.0, sinmo)], [t], rng)) is not None]
    if len(found) < 2:
        return Finding("no data", "fewer than 2 tasks where MTL and SinMo can be paired")
    adjusted = stats.holm([f.p for _, (_, f) in found])
    effects = [f.effect for _, (_, f) in found]
    worse = [t for (t, _), e, q in zip(found, effects, adjusted) if e < 0 and q <= ALPHA]
    better = [t for (t, _), e, q in zip(found, effects, adjusted) if e > 0 and q <= ALPHA]
    behind = sorted(q for e, q in zip(effects, adjusted) if e < 0)
    if len(worse) >= 2:
        verdict, p = "confirmed", behind[1]  # the second-strongest task decides "2 or more"
    elif len(found) - len(better) < 2:  # MTL significantly ahead on all but at most one task
        verdict, p = "refuted", max(q for e, q in zip(effects, adjusted) if e > 0 and q <= ALPHA)
    else:
        verdict, p = "not confirmed", behind[1] if len(behind) >= 2 else None
    keys = _common_keys([mtl, sinmo])
    return Finding(verdict, f"final R of {', '.join(t for t, _ in found)}, MTL vs SinMo, default order, seeds {_seeds(keys)}",
                   f"{_test_names([f for _, f in found])} per task; Holm over {len(found)} tasks; several = 2 or more",
                   f"MTL significantly worse on {len(worse)} of {len(found)} tasks ("
                   + ", ".join(f"{t} {e:+.4f}" for (t, _), e in zip(found, effects)) + ")", p)


def _text_init(ev: Evidence, rng: np.random.Generator) -> Finding:
    pairs = []
    methods = sorted({_spec(r).method for r in ev.text})
    for m in methods:
        random, text = ev.cells(m), ev.cells(m, text=True)
        for k in _common_keys([random, text]):
            a, b = t1_curve(text[k]), t1_curve(random[k])
            if a and b and a[0]["val"] is not None and b[0]["val"] is not None:
                pairs.append((a[0]["val"], b[0]["val"]))
    if len(pairs) < 2:
        return Finding("no data", "needs 2 or more (method, seed) pairs of text- and random-init cells")
    text_v, random_v = np.array(pairs).T
    res = stats.paired_t(text_v, random_v)
    return Finding(_direction(res.effect, res.p, +1),
                   f"T1 validation after the first epoch, {', '.join(methods)} with backbone.item_init=text vs random",
                   f"paired t-test over {len(pairs)} (method, seed) cells", f"text {text_v.mean():.4f} vs random "
                   f"{random_v.mean():.4f} (Δ {res.effect:+.4f})", res.p)


def _cold_start(ev: Evidence, rng: np.random.Generator) -> Finding:
    def protocol(r: dict) -> tuple:
        return r["spec"]["holdout"], tuple(sorted(r["spec"]["ncf"].items()))

    random = [r for r in ev.cold if r["spec"]["init"] == "random"]
    rep = [r for r in ev.cold if r["spec"]["init"] == "teracon" and r["spec"]["view"] == "latest"]
    shared = sorted({protocol(r) for r in random} & {protocol(r) for r in rep})
    if not shared:
        return Finding("no data", "needs cold-start results of random init and of TERACON's representation")
    random = {r["spec"]["seed"]: r for r in random if protocol(r) == shared[0]}
    rep = [r for r in rep if protocol(r) == shared[0]]
    last = max({r["spec"]["after"] for r in rep}, key=lambda a: rep[0]["representation"]["cell_tasks"].index(a))
    rep = {r["spec"]["seed"]: r for r in rep if r["spec"]["after"] == last}
    seeds = sorted(set(random) & set(rep))
    evidence = (f"NCF HR@10 on held-out {shared[0][0]}, warm and cold users, TERACON after {last} vs random init, "
                f"seeds {','.join(map(str, seeds))}")
    if len(seeds) < 2:
        return Finding("no data", evidence + ": fewer than 2 paired seeds")
    tests, parts = [], []
    for group in ("warm", "cold"):
        a = [rep[s]["groups"][group]["hr@10"] for s in seeds]
        b = [random[s]["groups"][group]["hr@10"] for s in seeds]
        tests.append(stats.paired_t(a, b))
        parts.append(f"{group} {np.mean(a):.4f} vs {np.mean(b):.4f}")
    verdict, p = _conjunction(tests, claimed=+1)
    return Finding(verdict, evidence, f"paired t-test over {len(seeds)} seeds per group; both groups must hold "
                                      "(intersection-union: p = the larger)", "HR@10 " + "; ".join(parts), p)


def _ditto_over_teracon(ev: Evidence, rng: np.random.Generator) -> Finding:
    ditto, teracon = ev.cells("ditto"), ev.cells("teracon")
    if not ditto or not teracon:
        return Finding("no data", "no default-order DITTO cells" if not ditto else "no default-order TERACON cells")
    tasks = _real_tasks(next(iter(teracon.values())))
    found = _contrast([(1.0, ditto)], [(1.0, teracon)], tasks, rng)
    if found is None:
        return Finding("no data", "DITTO and TERACON cells do not pair (per-user scores, or 2 or more common seeds)")
    name, res = found
    keys = _common_keys([ditto, teracon])
    return Finding(_direction(res.effect, res.p, +1),
                   f"final R of {', '.join(tasks)} (mean over tasks), default order, seeds {_seeds(keys)}",
                   name, f"DITTO - TERACON = {res.effect:+.4f}", res.p)


CLAIMS: tuple[Claim, ...] = (
    Claim("a", "TERACON has the best all-task score",
          "final R of every task (mean over tasks), default order, every method with a score on every task",
          "paired test of TERACON against each other method, Holm-corrected", _best_all_task),
    Claim("b", "CONURE's BWT is exactly 0", "every BWT entry of every CONURE cell", "exact check", _conure_bwt_zero),
    Claim("c", "TERACON's BWT is >= 0", "TERACON's BWT per task, default order",
          "95 % interval of the mean BWT: lower bound >= 0 confirms, upper bound < 0 refutes", _teracon_bwt),
    Claim("d", "a noisy task hurts TERACON less than CONURE and HAT", "clean and noisy cells of the three methods",
          "paired test of the drop (clean - noisy) against each rival", _noise_robustness),
    Claim("e", "relation-aware sampling matches rho = 1 at >= 2x speed",
          "TERACON cells with sampling=relation and =none: scores and seconds per epoch",
          "TOST within ±5 % of the rho = 1 score, and t-test of the time ratio against 2", _sampling),
    Claim("f", "TERACON's scores vary less over task orders than CONURE's", "the orders study's cells",
          "paired t-test over seeds of the std over orders", _order_robustness),
    Claim("g", "MTL trails SinMo on several tasks", "final R of T2..T_M, MTL and SinMo",
          "paired test per task, Holm-corrected; 2 or more significant", _mtl_vs_sinmo),
    Claim("h", "text init raises early performance", "T1 validation after epoch 1, text vs random item init",
          "paired t-test over (method, seed) cells", _text_init),
    Claim("i", "the universal representation helps warm and cold users", "cold-start NCF results",
          "paired t-test over seeds of HR@10, warm and cold", _cold_start),
    Claim("j", "DITTO (SIGIR 2025) has a higher all-task score than TERACON",
          "final R of every task (mean over tasks), default order, DITTO and TERACON",
          "paired test of DITTO against TERACON", _ditto_over_teracon),
)


def evaluate_claims(results: list[dict], *, seed: int = SEED) -> list[Verdict]:
    """One verdict per claim from one board's result dicts (cells, text-init twin cells and
    cold-start results). Each claim's random draws come from its own generator seeded by
    (seed, claim id), so a claim's verdict never depends on the others."""
    ev = Evidence(results)
    out = []
    for claim in CLAIMS:
        f = claim.check(ev, np.random.default_rng([seed, zlib.crc32(claim.id.encode())]))
        if f.verdict == "no data":  # say what the claim reads and how it would be tested
            f = Finding("no data", f"{claim.reads}: {f.evidence}", claim.test)
        out.append(Verdict(claim.id, claim.statement, f.verdict, f.evidence, f.test, f.statistic, f.p))
    return out


def _fmt_p(p: float | None) -> str:
    return "-" if p is None else "< 0.001" if p < 0.001 else f"{p:.3f}"


def claims_table(verdicts: list[Verdict]) -> Table:
    """The claims table: claim, evidence, test, statistic, p, verdict (one row per verdict), for
    reports and boards (markdown, LaTeX, site) like every other table."""
    rows: list[list[Cell]] = [[f"({v.claim}) {v.statement}", v.evidence, v.test, v.statistic, _fmt_p(v.p), v.verdict]
                              for v in verdicts]
    return Table("claims", "The papers' claims, checked", ["claim", "evidence", "test", "statistic", "p", "verdict"],
                 rows, note="Verdicts: confirmed (significant in the claimed direction, alpha 0.05), not confirmed "
                            "(the data cannot tell), refuted (significant the other way), no data (the results the "
                            "claim reads are absent). Re-derived from the result files by `curb leaderboard check`; "
                            "docs/metrics.md \"Claims\".")
