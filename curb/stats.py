"""Statistics over per-user test scores: intervals, paired tests, multiple comparisons and ranks.

Why this module looks the way it does (docs/metrics.md, "Statistics: intervals, tests, ranks"):
- Every function is pure: arrays in, numbers out, randomness only from a `np.random.Generator`
  the caller passes, so the same inputs and seed give the same verdict (`curb leaderboard check`
  re-derives them).
- A task's score is pair-weighted (docs/metrics.md): score = sum(per-user sums) / sum(counts).
  Resampling therefore draws *users* (each with all its pairs) and recomputes the ratio of sums,
  which respects that pairs of one user are not independent.
- Comparisons are paired: methods evaluated on the same test users share the resamples and
  flips, so user-to-user variation (some users are easy for every method) cancels out of every
  difference.
- Loops run over blocks of replicates only (`_BLOCK` at a time); users are handled by matrix
  products. The block size is a constant, so a result never depends on how large a problem is.

Array conventions: a per-user stack is `[n_methods, n_seeds, n_users]` of per-user metric sums,
with `counts` `[n_users]` (test pairs per user; the split does not depend on the cell seed, so
every seed of a setting scores the same users with the same counts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from scipy import stats as sps

from .results import unpack_array

_BLOCK = 256  # replicates drawn per block: memory stays at _BLOCK x n_users
ROWS = ("final", "diag")
ALTERNATIVES = ("two-sided", "greater", "less")


# ------------------------------------------------------------------- per-user scores in results
@dataclass(frozen=True)
class PerUser:
    """One task's per-user test scores from one result file (one row of its R matrix)."""

    metric: str
    users: str  # sha256 of the test user ids (int64 little-endian): equal digests = same users
    counts: np.ndarray  # int64 [n_users]: test pairs per user
    sums: np.ndarray  # float64 [n_users]: per-user sum of the metric over its pairs

    @property
    def score(self) -> float:
        """The task's score as the tables report it (pair-weighted mean)."""
        return float(self.sums.sum() / self.counts.sum())


def per_user(result: dict, task: str, row: str = "final") -> PerUser | None:
    """The per-user scores of `task` in `result` for R's last row ("final") or the diagonal
    ("diag"), or None when the result does not carry them (older results, joint methods' diag).
    A malformed entry is an error, not missing data."""
    if row not in ROWS:
        raise ValueError(f"row must be one of {ROWS}, got {row!r}")
    entry = (result.get("per_user") or {}).get(task)
    if entry is None or entry.get(row) is None:
        return None
    counts = unpack_array(entry["counts"], "<u4").astype(np.int64)
    sums = unpack_array(entry[row], "<f8")
    if len(counts) != len(sums):
        raise ValueError(f"per_user[{task!r}]: {len(counts)} counts but {len(sums)} {row} sums")
    return PerUser(entry["metric"], entry["users"], counts, sums)


def stack_per_user(entries: Sequence[PerUser]) -> tuple[np.ndarray, np.ndarray]:
    """([len(entries), n_users] sums, counts) of entries that score the same users; raises
    ValueError when they do not (different digests or counts), since pairing would be wrong."""
    if not entries:
        raise ValueError("no per-user entries to stack")
    first = entries[0]
    for e in entries[1:]:
        if e.users != first.users or not np.array_equal(e.counts, first.counts):
            raise ValueError("per-user scores of different test users cannot be paired")
    return np.stack([e.sums for e in entries]), first.counts


# ---------------------------------------------------------------------------- bootstrap
@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    level: float


def _as_stack(sums: np.ndarray) -> np.ndarray:
    """[n_users] -> [1, 1, n_users]; [n_seeds, n_users] -> [1, n_seeds, n_users]."""
    a = np.asarray(sums, dtype=np.float64)
    return a.reshape((1,) * (3 - a.ndim) + a.shape)


def _check(stack: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    stack, counts = _as_stack(stack), np.asarray(counts, dtype=np.float64)
    if stack.ndim != 3 or counts.shape != stack.shape[-1:]:
        raise ValueError(f"sums {stack.shape} and counts {counts.shape} must share the user axis")
    if counts.sum() <= 0:
        raise ValueError("no test pairs: counts sum to zero")
    return stack, counts


def _bootstrap_weights(n_users: int, n_boot: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Blocks [b, n_users] of how often each user is drawn in a resample of n_users users."""
    for lo in range(0, n_boot, _BLOCK):
        b = min(_BLOCK, n_boot - lo)
        idx = rng.integers(0, n_users, size=(b, n_users)) + n_users * np.arange(b)[:, None]
        yield np.bincount(idx.ravel(), minlength=b * n_users).reshape(b, n_users).astype(np.float64)


def bootstrap_replicates(stack: np.ndarray, counts: np.ndarray, *, n_boot: int,
                         rng: np.random.Generator) -> np.ndarray:
    """[n_boot, n_methods] bootstrap replicates of each method's score pooled over seeds.

    One resample of users serves every method and every seed (paired bootstrap): a replicate is
    sum over seeds and drawn users of the sums / (n_seeds * sum of the drawn users' counts).
    Pass `[k, 1, n_users]` to get one replicate column per seed instead of pooling."""
    stack, counts = _check(stack, counts)
    pooled = stack.sum(axis=1)  # the weights are shared by every seed: sum the seeds first
    out = [w @ pooled.T / (stack.shape[1] * (w @ counts))[:, None]
           for w in _bootstrap_weights(len(counts), n_boot, rng)]
    return np.concatenate(out) if out else np.empty((0, stack.shape[0]))


def pooled_scores(stack: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Each method's score pooled over seeds (= the mean of its per-seed scores)."""
    stack, counts = _check(stack, counts)
    return stack.sum(axis=(1, 2)) / (stack.shape[1] * counts.sum())


def percentile_interval(replicates: np.ndarray, estimate: float, level: float) -> Interval:
    """Percentile interval of 1-D replicates (non-finite ones, e.g. a zero denominator, dropped)."""
    r = replicates[np.isfinite(replicates)]
    low, high = np.quantile(r, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(estimate), float(low), float(high), level)


def bootstrap_p(replicates: np.ndarray, null: float = 0.0, alternative: str = "two-sided") -> float:
    """Percentile-bootstrap p-value against `null`, (1 + hits) / (1 + B): "greater" (H0: value
    < null) counts replicates below null, "less" (H0: value >= null) those at or above it,
    "two-sided" doubles the smaller side (capped at 1). A p <= 0.025 on one side matches a 95 %
    percentile interval that excludes `null` on the other."""
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    r = replicates[np.isfinite(replicates)]
    p = lambda hits: (1 + int(hits)) / (1 + len(r))
    if alternative == "greater":
        return p((r < null).sum())
    if alternative == "less":
        return p((r >= null).sum())
    return float(min(1.0, 2 * min(p((r <= null).sum()), p((r >= null).sum()))))


def bootstrap_cis(stack: np.ndarray, counts: np.ndarray, *, n_boot: int = 2000, level: float = 0.95,
                  rng: np.random.Generator) -> list[Interval]:
    """Percentile bootstrap interval of every method's pooled score, with shared resamples.

    Percentile rather than BCa: the score is a ratio of sums over hundreds of users, whose
    bootstrap distribution is close to symmetric; the percentile interval stays inside the
    metric's range, needs no jackknife pass over every user, and is checked for its nominal
    coverage by a simulation (tests/test_stats.py)."""
    return task_mean_cis([stack], [counts], n_boot=n_boot, level=level, rng=rng)


def task_mean_cis(stacks: Sequence[np.ndarray], counts: Sequence[np.ndarray], *, n_boot: int = 2000,
                  level: float = 0.95, rng: np.random.Generator) -> list[Interval]:
    """Percentile bootstrap interval of every method's mean over tasks of pooled scores: per task
    `stacks[t]` [n_methods, n_seeds, n_users] with `counts[t]`. Each task's users are resampled
    on their own (test users of different tasks are different draws, as in `task_mean_test`),
    shared by every method (paired), and the replicates averaged over tasks."""
    if not stacks or len(stacks) != len(counts):
        raise ValueError("task_mean_cis needs the same number (>= 1) of stacks and counts")
    reps = np.mean([bootstrap_replicates(s, c, n_boot=n_boot, rng=rng) for s, c in zip(stacks, counts)], axis=0)
    est = np.mean([pooled_scores(s, c) for s, c in zip(stacks, counts)], axis=0)
    return [percentile_interval(reps[:, m], est[m], level) for m in range(len(est))]


def bootstrap_ci(sums: np.ndarray, counts: np.ndarray, *, n_boot: int = 2000, level: float = 0.95,
                 rng: np.random.Generator) -> Interval:
    """Interval of one method's score pooled over its seeds: `sums` [n_seeds, n_users] or [n_users]."""
    return bootstrap_cis(_as_stack(sums), counts, n_boot=n_boot, level=level, rng=rng)[0]


# ---------------------------------------------------------------------------- paired tests
@dataclass(frozen=True)
class Comparison:
    effect: float  # observed statistic: score(a) - score(b), or the mean paired difference
    p: float
    n: int  # independent units: users (sign-flip test) or seeds (t-test)
    alternative: str = "two-sided"


def _sign_blocks(n: int, n_perm: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Blocks [b, n] of random signs (+1/-1), drawn 8 per random byte."""
    for lo in range(0, n_perm, _BLOCK):
        b = min(_BLOCK, n_perm - lo)
        bits = np.unpackbits(rng.integers(0, 256, size=(b, (n + 7) // 8), dtype=np.uint8), axis=1)[:, :n]
        yield 1.0 - 2.0 * bits


def sign_flip_test(d: np.ndarray, *, n_perm: int = 9999, rng: np.random.Generator,
                   alternative: str = "two-sided") -> Comparison:
    """Monte-Carlo sign-flip (paired permutation) test of statistic sum(d) over independent units.

    Under H0 each unit's two measurements are exchangeable, so its difference is as likely
    negated: the null distribution is that of sum(s_i * d_i) over random signs. p counts the
    observed statistic among the flips ((1 + hits) / (1 + n_perm)), valid in finite samples."""
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    d = np.asarray(d, dtype=np.float64).ravel()
    t = float(d.sum())
    tol = 1e-9 * float(np.abs(d).sum())  # flips equal to t up to rounding count as ties
    hits = 0
    for signs in _sign_blocks(len(d), n_perm, rng):
        flipped = signs @ d
        if alternative == "two-sided":
            hits += int((np.abs(flipped) >= abs(t) - tol).sum())
        elif alternative == "greater":
            hits += int((flipped >= t - tol).sum())
        else:
            hits += int((flipped <= t + tol).sum())
    return Comparison(t, (1 + hits) / (1 + n_perm), len(d), alternative)


def task_mean_test(a: Sequence[np.ndarray], b: Sequence[np.ndarray], counts: Sequence[np.ndarray], *,
                   n_perm: int = 9999, rng: np.random.Generator, alternative: str = "two-sided") -> Comparison:
    """Paired sign-flip test of the mean over tasks of pair-weighted scores, a vs b.

    Per task t: a[t], b[t] are [n_seeds, n_users] sums (same users, same seeds in the same
    order), counts[t] [n_users]. A unit is one (task, user): its difference summed over seeds,
    weighted by 1 / (n_tasks * n_seeds * pairs of the task), so sum(d) = mean_t score_t(a) -
    score_t(b). The seeds of a user flip together (a user easy for one seed of a method is
    easy for the others; flipping seeds apart would understate the variance). Test users of
    different tasks are (almost) different people and flip independently."""
    if not (len(a) == len(b) == len(counts)) or not a:
        raise ValueError("task_mean_test needs the same number (>= 1) of tasks in a, b and counts")
    units = []
    for at, bt, ct in zip(a, b, counts):
        sa, c = _check(at, ct)
        sb, _ = _check(bt, ct)
        if sa.shape != sb.shape:
            raise ValueError(f"paired scores must have the same shape, got {sa.shape} and {sb.shape}")
        units.append((sa - sb).sum(axis=(0, 1)) / (len(a) * sa.shape[1] * c.sum()))
    return sign_flip_test(np.concatenate(units), n_perm=n_perm, rng=rng, alternative=alternative)


def paired_test(a: np.ndarray, b: np.ndarray, counts: np.ndarray, *, n_perm: int = 9999,
                rng: np.random.Generator, alternative: str = "two-sided") -> Comparison:
    """Paired sign-flip test of score(a) - score(b) on one task: a, b [n_seeds, n_users] (or
    [n_users]) per-user sums of two methods on the same users and seeds; effect = difference of
    the pooled scores; p two-sided unless `alternative` says "greater" (a > b) or "less"."""
    return task_mean_test([a], [b], [counts], n_perm=n_perm, rng=rng, alternative=alternative)


def paired_z(a: np.ndarray, b: np.ndarray, counts: np.ndarray) -> float:
    """score(a) - score(b) over its standard error, users as units: the size of a difference in
    standard errors ("beats the majority class by more than 3 sd"), where `paired_test` gives its p.

    a, b: [n_seeds, n_users] (or [n_users]) per-user sums on the same users and seeds. A user's
    unit is its difference summed over its pairs and averaged over seeds (the seeds of a user move
    together, as in `paired_test`); the pooled difference is a ratio of sums, so its standard error
    is the delta-method one of a ratio estimator: sqrt(n / (n - 1) * sum_u r_u^2) / sum(counts)
    with r_u = x_u - D * counts_u (for accuracy, counts = 1: mean(d) / (sd(d) / sqrt(n))).
    0 for identical scores; +-inf for a difference with no spread at all."""
    sa, c = _check(a, counts)
    sb, _ = _check(b, counts)
    if sa.shape != sb.shape:
        raise ValueError(f"paired scores must have the same shape, got {sa.shape} and {sb.shape}")
    if len(c) < 2:
        raise ValueError("paired_z needs 2 or more users")
    x = (sa - sb)[0].mean(axis=0)  # per user: its difference summed over pairs, seeds averaged
    d = float(x.sum() / c.sum())
    r = x - d * c
    se = float(np.sqrt(len(c) / (len(c) - 1) * (r @ r)) / c.sum())
    if se <= 1e-12 * max(abs(d), 1e-300):
        return 0.0 if d == 0.0 else float(np.copysign(np.inf, d))
    return d / se


def paired_t(a: Sequence[float], b: Sequence[float], *, alternative: str = "two-sided") -> Comparison:
    """Paired t-test over seeds (units = seeds), for quantities that exist per cell only
    (timings, validation curves, cold-start HR, spread over orders). Identical differences
    (zero spread) give p = 1 for a zero mean and p = 0 otherwise. Needs 2 or more pairs."""
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim != 1 or len(d) < 2:
        raise ValueError(f"paired_t needs 2 or more paired values, got {d.shape}")
    mean, se = float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))
    if se == 0.0:
        toward = {"two-sided": mean != 0.0, "greater": mean > 0.0, "less": mean < 0.0}[alternative]
        return Comparison(mean, 0.0 if toward else 1.0, len(d), alternative)
    t = mean / se
    dist = sps.t(len(d) - 1)
    p = {"two-sided": 2 * dist.sf(abs(t)), "greater": dist.sf(t), "less": dist.cdf(t)}[alternative]
    return Comparison(mean, float(min(1.0, p)), len(d), alternative)


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Student-t interval of the mean of per-seed values (2 or more)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) < 2:
        raise ValueError(f"t_interval needs 2 or more values, got {v.shape}")
    half = float(sps.t(len(v) - 1).ppf((1 + level) / 2) * v.std(ddof=1) / np.sqrt(len(v)))
    return Interval(float(v.mean()), float(v.mean()) - half, float(v.mean()) + half, level)


def equivalence_t(a: Sequence[float], b: Sequence[float], margin: float) -> Comparison:
    """Two one-sided t-tests (TOST, Schuirmann 1987) over seeds that mean(a - b) lies inside
    (-margin, margin); p = the larger one-sided p (equivalence shown when p <= alpha)."""
    lower = paired_t(np.asarray(a, dtype=np.float64) + margin, b, alternative="greater")
    upper = paired_t(np.asarray(a, dtype=np.float64) - margin, b, alternative="less")
    return Comparison(lower.effect - margin, max(lower.p, upper.p), lower.n, "equivalence")


def equivalence_bootstrap(replicates: np.ndarray, estimate: float, margin: float, n_units: int) -> Comparison:
    """TOST from bootstrap replicates of a difference: each one-sided p is the share of
    replicates at or beyond a margin, (1 + hits) / (1 + B); p = the larger. p <= alpha exactly
    when the (1 - 2 alpha) percentile interval lies inside (-margin, margin)."""
    r = replicates[np.isfinite(replicates)]
    p_low = (1 + int((r <= -margin).sum())) / (1 + len(r))
    p_high = (1 + int((r >= margin).sum())) / (1 + len(r))
    return Comparison(float(estimate), max(p_low, p_high), n_units, "equivalence")


# ---------------------------------------------------------------------- multiple comparisons
def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order: the i-th smallest p
    is multiplied by (m - i + 1), then made monotone (running maximum) and capped at 1. A
    hypothesis is rejected at level alpha iff its adjusted p <= alpha; the family-wise error
    rate is controlled under any dependence between the tests."""
    p = np.asarray(pvalues, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    m = len(p)
    stepped = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out = np.empty(m)
    out[order] = stepped
    return out


@dataclass(frozen=True)
class Mark:
    mark: str  # "best", "tied" (not significantly different from the best) or "worse"
    effect: float  # score - best score (pooled over seeds)
    p: float | None  # paired test against the best (None for the best itself)
    p_holm: float | None


def mark_column(stack: np.ndarray, counts: np.ndarray, *, alpha: float = 0.05, n_perm: int = 9999,
                rng: np.random.Generator) -> list[Mark]:
    """Marks for one board column of one task: `mark_task_mean` over that task alone."""
    return mark_task_mean([stack], [counts], alpha=alpha, n_perm=n_perm, rng=rng)


def mark_task_mean(stacks: Sequence[np.ndarray], counts: Sequence[np.ndarray], *, alpha: float = 0.05,
                   n_perm: int = 9999, rng: np.random.Generator) -> list[Mark]:
    """Marks for one board column of the mean over tasks (per task `stacks[t]` [n_methods,
    n_seeds, n_users] on the same users and seeds, `counts[t]`): the method with the highest
    pooled score is "best" (the first one on an exact tie); every other is compared with it by
    `task_mean_test` (two-sided), the p-values Holm-corrected within the column, and marked
    "worse" when the adjusted p <= alpha, else "tied"."""
    if not stacks or len(stacks) != len(counts):
        raise ValueError("mark_task_mean needs the same number (>= 1) of stacks and counts")
    checked = [_check(s, c) for s, c in zip(stacks, counts)]
    scores = np.mean([pooled_scores(s, c) for s, c in checked], axis=0)
    best = int(np.argmax(scores))
    others = [m for m in range(len(scores)) if m != best]
    tests = [task_mean_test([s[m] for s, _ in checked], [s[best] for s, _ in checked], [c for _, c in checked],
                            n_perm=n_perm, rng=rng) for m in others]
    adjusted = holm([t.p for t in tests]) if tests else np.empty(0)
    marks = {best: Mark("best", 0.0, None, None)}
    for m, t, q in zip(others, tests, adjusted):
        marks[m] = Mark("worse" if q <= alpha else "tied", float(scores[m] - scores[best]), t.p, float(q))
    return [marks[m] for m in range(len(scores))]


# ------------------------------------------------------------------------------------- ranks
def average_ranks(table: np.ndarray) -> np.ndarray:
    """Average rank of each method over tasks: `table` [n_methods, n_tasks] of scores (higher is
    better, all finite); per task rank 1 = best, tied scores share the mean of their ranks."""
    t = np.asarray(table, dtype=np.float64)
    if t.ndim != 2 or t.shape[0] < 2 or t.shape[1] < 1:
        raise ValueError(f"table must be [n_methods >= 2, n_tasks >= 1], got shape {t.shape}")
    if not np.isfinite(t).all():
        raise ValueError("table has a missing (non-finite) score: drop that method or task first")
    return sps.rankdata(-t, method="average", axis=0).mean(axis=1)


def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """Critical value q_alpha of the Nemenyi test for k methods: the studentized range quantile
    at infinite degrees of freedom divided by sqrt(2) (Demšar 2006, Table 5a: 2.569 for k = 4)."""
    return float(sps.studentized_range.ppf(1 - alpha, k, np.inf) / np.sqrt(2))


@dataclass(frozen=True)
class Friedman:
    ranks: np.ndarray  # average rank per method (1 = best)
    chi2: float  # Friedman statistic, chi-square with k - 1 df
    p_chi2: float
    ff: float  # Iman-Davenport F, F(k - 1, (k - 1)(N - 1)): less conservative than chi2
    p_ff: float
    q_alpha: float
    cd: float  # Nemenyi critical difference: ranks differing by >= cd differ significantly
    n_tasks: int
    alpha: float


def friedman_nemenyi(table: np.ndarray, *, alpha: float = 0.05) -> Friedman:
    """Friedman test over tasks and the Nemenyi critical difference (Demšar 2006, JMLR 7:1-30):
    chi2 = 12N / (k(k+1)) * (sum_j R_j^2 - k(k+1)^2 / 4), F_F = (N-1) chi2 / (N(k-1) - chi2),
    CD = q_alpha * sqrt(k(k+1) / (6N)); `table` [k methods, N tasks], higher is better."""
    ranks = average_ranks(table)
    k, n = np.asarray(table).shape
    chi2 = 12 * n / (k * (k + 1)) * (float(np.sum(ranks ** 2)) - k * (k + 1) ** 2 / 4)
    chi2 = max(chi2, 0.0)  # rounding can leave -1e-15 when every rank is tied
    denom = n * (k - 1) - chi2
    if n < 2 or denom <= 0:  # one task, or every task ranks the methods identically: F_F undefined or infinite
        ff, p_ff = (np.inf, 0.0) if n >= 2 else (np.nan, np.nan)
    else:
        ff = (n - 1) * chi2 / denom
        p_ff = float(sps.f.sf(ff, k - 1, (k - 1) * (n - 1)))
    q = nemenyi_q(k, alpha)
    return Friedman(ranks, chi2, float(sps.chi2.sf(chi2, k - 1)), float(ff), float(p_ff), q,
                    q * float(np.sqrt(k * (k + 1) / (6 * n))), n, alpha)


def nemenyi_groups(ranks: Sequence[float], cd: float) -> list[tuple[int, ...]]:
    """Maximal groups of methods whose average ranks all lie within less than `cd` of each other
    (not significantly different by Nemenyi), as indices into `ranks` ordered best first; the
    bars of a critical-difference diagram. Singletons are left out."""
    r = np.asarray(ranks, dtype=np.float64)
    order = np.argsort(r, kind="stable")
    groups: list[tuple[int, ...]] = []
    last_end = -1
    for i in range(len(order)):
        j = i
        while j + 1 < len(order) and r[order[j + 1]] - r[order[i]] < cd:
            j += 1
        if j > i and j > last_end:  # a group ending no further than the previous one is inside it
            groups.append(tuple(int(x) for x in order[i:j + 1]))
            last_end = j
    return groups
