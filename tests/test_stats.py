"""curb.stats: per-user scores round-trip, the bootstrap covers at its nominal rate, the paired
test has its size and power, Holm and Friedman/Nemenyi match hand-computed and published cases,
and the critical-difference figure is reproducible."""

from __future__ import annotations

import hashlib
import math
import struct

import numpy as np
import pytest
from scipy import stats as sps

from curb import plots, stats
from curb.results import pack_per_user, users_digest

# ------------------------------------------------------------------------------- per-user data


def _users(rng: np.random.Generator, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Per-user pair counts (1 + Poisson(4)) and per-user hit rates (Beta(2, 8), mean 0.2)."""
    return 1 + rng.poisson(4, n), rng.beta(2, 8, n)


def _sums(rng: np.random.Generator, counts: np.ndarray, rate: np.ndarray, seeds: int = 3) -> np.ndarray:
    """[seeds, n_users] per-user sums of a 0/1 metric: every seed redraws each user's hits."""
    return rng.binomial(np.broadcast_to(counts, (seeds, len(counts))), rate).astype(np.float64)


def test_per_user_round_trips_through_a_result():
    rng = np.random.default_rng(0)
    ids = np.array([7, 3, 12, 40000000000])
    counts, final, diag = np.array([1, 5, 2, 3]), rng.random(4), rng.random(4)
    result = {"per_user": {"T2": pack_per_user("mrr@5", ids, counts, final, diag),
                           "T3": pack_per_user("acc", ids, counts, final)}}
    got = stats.per_user(result, "T2")
    assert got.metric == "mrr@5" and got.counts.dtype == np.int64
    np.testing.assert_array_equal(got.counts, counts)
    np.testing.assert_array_equal(got.sums, final)  # float64 survives base64 bit for bit
    np.testing.assert_array_equal(stats.per_user(result, "T2", "diag").sums, diag)
    assert got.score == pytest.approx(final.sum() / counts.sum())
    assert got.users == hashlib.sha256(struct.pack("<4q", *ids)).hexdigest()
    assert stats.per_user(result, "T3", "diag") is None  # a joint method has no diagonal
    assert stats.per_user(result, "T1") is None and stats.per_user({}, "T2") is None
    with pytest.raises(ValueError, match="row must be"):
        stats.per_user(result, "T2", "R")
    with pytest.raises(ValueError, match="one entry per test user"):
        pack_per_user("acc", ids, counts[:3], final)


def test_stack_refuses_scores_of_other_users():
    a = stats.PerUser("acc", users_digest(np.array([1, 2])), np.array([1, 1]), np.array([1.0, 0.0]))
    b = stats.PerUser("acc", users_digest(np.array([2, 1])), np.array([1, 1]), np.array([0.0, 1.0]))
    sums, counts = stats.stack_per_user([a, a])
    assert sums.shape == (2, 2) and counts.tolist() == [1, 1]
    with pytest.raises(ValueError, match="different test users"):
        stats.stack_per_user([a, b])


# ----------------------------------------------------------------------------------- bootstrap


def test_bootstrap_replicates_resample_users_with_their_pairs():
    """A replicate is the ratio of sums over the drawn users (bincount trick checked against
    direct indexing with the same draws), and every method and seed share the draws."""
    rng = np.random.default_rng(3)
    counts, rate = _users(rng, 50)
    x = _sums(rng, counts, rate, seeds=1)[0]
    reps = stats.bootstrap_replicates(np.stack([x, x])[:, None], counts, n_boot=300, rng=np.random.default_rng(9))
    same = np.random.default_rng(9)  # the draws come in blocks of 256 replicates
    draws = np.concatenate([same.integers(0, 50, size=(256, 50)), same.integers(0, 50, size=(44, 50))])
    np.testing.assert_allclose(reps[:, 0], x[draws].sum(1) / counts[draws].sum(1))
    np.testing.assert_array_equal(reps[:, 0], reps[:, 1])


def test_bootstrap_ci_covers_the_true_mean_at_its_nominal_rate():
    """200 seeded draws of 200 users x 3 seeds (true pair-weighted mean 0.2): the 95 % interval
    covers 0.2 in at least 90 % of the draws, and is not trivially wide (it misses sometimes)."""
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(200):
        counts, rate = _users(rng)
        ci = stats.bootstrap_ci(_sums(rng, counts, rate), counts, n_boot=1000, rng=rng)
        covered += ci.low <= 0.2 <= ci.high
    assert 0.90 <= covered / 200 < 1.0


def test_bootstrap_cis_are_paired_and_ordered():
    rng = np.random.default_rng(4)
    counts, rate = _users(rng)
    x = _sums(rng, counts, rate)
    a, b = stats.bootstrap_cis(np.stack([x, x + 1.0]), counts, n_boot=500, rng=rng)
    assert a.low < a.estimate < a.high and a.level == 0.95
    assert b.estimate == pytest.approx(a.estimate + 3 * len(counts) / (3 * counts.sum()))
    assert b.low > a.low and b.high > a.high
    with pytest.raises(ValueError, match="share the user axis"):
        stats.bootstrap_ci(x, counts[:-1], rng=rng)


def test_bootstrap_p_and_percentile_interval_agree():
    reps = np.random.default_rng(0).normal(1.0, 0.4, 4000)
    ci = stats.percentile_interval(reps, 1.0, 0.95)
    assert ci.low > 0 and stats.bootstrap_p(reps) < 0.05 and stats.bootstrap_p(reps, alternative="greater") < 0.025
    assert stats.bootstrap_p(reps, alternative="less") > 0.9
    assert stats.bootstrap_p(reps - 1.0) > 0.5
    zeros = np.zeros(100)  # a value exactly at the null: ">= 0" holds, "!= 0" does not
    assert stats.bootstrap_p(zeros, alternative="greater") == 1 / 101 and stats.bootstrap_p(zeros) == 1.0


# -------------------------------------------------------------------------------- paired tests


def test_paired_test_rejects_a_shift_and_not_an_identical_pair():
    rng = np.random.default_rng(5)
    counts, rate = _users(rng)
    a = _sums(rng, counts, rate)
    b = _sums(rng, counts, np.minimum(rate + 0.05, 1.0))
    same = stats.paired_test(a, a, counts, rng=rng)
    assert same.p == 1.0 and same.effect == 0.0 and same.n == len(counts)
    shifted = stats.paired_test(b, a, counts, rng=rng)
    assert shifted.p < 0.01 and shifted.effect > 0
    assert stats.paired_test(b, a, counts, rng=rng, alternative="greater").p < 0.01
    assert stats.paired_test(b, a, counts, rng=rng, alternative="less").p > 0.9


def test_paired_test_has_nominal_size_on_null_data():
    """Two methods drawn from the same per-user rates: about 5 % of 200 tests reject at 0.05."""
    rng = np.random.default_rng(6)
    rejected = 0
    for _ in range(200):
        counts, rate = _users(rng, 150)
        rejected += stats.paired_test(_sums(rng, counts, rate), _sums(rng, counts, rate), counts, n_perm=199,
                                      rng=rng).p <= 0.05
    assert 0.01 <= rejected / 200 <= 0.10


def test_task_mean_test_weights_tasks_equally():
    """The statistic is the mean over tasks of the score differences, whatever each task's size."""
    rng = np.random.default_rng(7)
    c1, c2 = np.full(10, 2), np.full(300, 1)
    a1, a2 = np.full((2, 10), 2.0), np.full((2, 300), 0.5)
    b1, b2 = np.zeros((2, 10)), np.zeros((2, 300))
    res = stats.task_mean_test([a1, a2], [b1, b2], [c1, c2], n_perm=99, rng=rng)
    assert res.effect == pytest.approx((1.0 + 0.5) / 2) and res.n == 310


def test_paired_z_is_the_one_sample_z_for_accuracy_and_has_unit_spread_on_null_data():
    """For one pair per user (accuracy) it is mean(d) / (sd(d) / sqrt(n)); with pair-weighted
    MRR-like sums and three seeds, 300 null draws give z with mean about 0 and sd about 1 (an
    error that counts the three seeds of a user as independent units is sqrt(3) too small, and
    fails here); a real shift gives a large positive z."""
    rng = np.random.default_rng(8)
    a, b = rng.integers(0, 2, 400).astype(float), rng.integers(0, 2, 400).astype(float)
    d = a - b
    assert stats.paired_z(a, b, np.ones(400)) == pytest.approx(d.mean() / (d.std(ddof=1) / math.sqrt(400)))
    assert stats.paired_z(a, a, np.ones(400)) == 0.0
    assert stats.paired_z(a + 1, a, np.ones(400)) == math.inf
    zs = []
    for _ in range(300):
        counts, rate = _users(rng, 150)
        zs.append(stats.paired_z(_sums(rng, counts, rate), _sums(rng, counts, rate), counts))
    assert abs(np.mean(zs)) < 0.2 and 0.85 < np.std(zs) < 1.15
    counts, rate = _users(rng)
    assert stats.paired_z(_sums(rng, counts, np.minimum(rate + 0.05, 1.0)), _sums(rng, counts, rate), counts) > 3
    with pytest.raises(ValueError, match="same shape"):
        stats.paired_z(np.zeros((2, 5)), np.zeros((3, 5)), np.ones(5))


def test_paired_t_matches_scipy_and_handles_zero_spread():
    a, b = [0.31, 0.35, 0.30, 0.36], [0.30, 0.31, 0.29, 0.33]
    res = stats.paired_t(a, b)
    assert res.p == pytest.approx(sps.ttest_rel(a, b).pvalue) and res.effect == pytest.approx(0.0225)
    assert stats.paired_t(a, b, alternative="greater").p == pytest.approx(res.p / 2)
    assert stats.paired_t([1.0, 1.0], [1.0, 1.0]).p == 1.0
    assert stats.paired_t([2.0, 2.0], [1.0, 1.0]).p == 0.0
    with pytest.raises(ValueError, match="2 or more"):
        stats.paired_t([1.0], [0.0])


def test_equivalence_tests():
    base = np.array([0.100, 0.102, 0.098, 0.101, 0.099])
    close = base + np.array([0.001, -0.001, 0.0005, 0.0, -0.0005])
    assert stats.equivalence_t(close, base, margin=0.005).p < 0.01  # well inside ±5 %
    assert stats.equivalence_t(close, base, margin=0.0001).p > 0.3  # a margin below the noise
    assert stats.equivalence_t(base + 0.02, base, margin=0.005).p > 0.5
    reps = np.random.default_rng(0).normal(0.0, 0.001, 2000)
    assert stats.equivalence_bootstrap(reps, 0.0, 0.005, 100).p < 0.01
    assert stats.equivalence_bootstrap(reps + 0.006, 0.006, 0.005, 100).p > 0.5


# ------------------------------------------------------------------------- multiple comparisons


def test_holm_on_a_hand_computed_case():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone: 0.04 -> 0.06
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(stats.holm([0.5, 0.6]), [1.0, 1.0])  # capped at 1
    np.testing.assert_allclose(stats.holm([0.02]), [0.02])


def test_mark_column_marks_best_tied_and_worse():
    rng = np.random.default_rng(8)
    counts, rate = _users(rng, 300)
    best = _sums(rng, counts, np.minimum(rate + 0.08, 1.0))
    worse = _sums(rng, counts, rate)
    marks = stats.mark_column(np.stack([worse, best, best.copy()]), counts, rng=rng, n_perm=999)
    assert [m.mark for m in marks] == ["worse", "best", "tied"]
    assert marks[1].p is None and marks[2].p == 1.0 and marks[2].effect == 0.0
    assert marks[0].effect < 0 and marks[0].p_holm == pytest.approx(min(1.0, 2 * marks[0].p))


# ----------------------------------------------------------------------------------------- ranks


def test_average_ranks_and_friedman_on_a_hand_computed_case():
    """3 methods x 4 tasks. Ranks per task: T1 A1 B2 C3; T2 A,B tied 1.5 C3; T3 C1 A2 B3; T4 A1 B2 C3.
    Average ranks 1.375, 2.125, 2.5; chi2 = 12*4/(3*4) * (1.375^2 + 2.125^2 + 2.5^2 - 3*4^2/4) = 2.625;
    p = exp(-2.625/2) (chi2, 2 df); F_F = 3*2.625 / (4*2 - 2.625); CD = 2.3437 * sqrt(3*4/(6*4))."""
    table = np.array([[0.9, 0.8, 0.7, 0.6], [0.8, 0.8, 0.6, 0.5], [0.7, 0.6, 0.8, 0.4]])
    np.testing.assert_allclose(stats.average_ranks(table), [1.375, 2.125, 2.5])
    f = stats.friedman_nemenyi(table)
    assert f.chi2 == pytest.approx(2.625)
    assert f.p_chi2 == pytest.approx(math.exp(-2.625 / 2))
    assert f.ff == pytest.approx(7.875 / 5.375)
    assert f.cd == pytest.approx(2.343701 * math.sqrt(0.5), rel=1e-6)
    assert stats.nemenyi_groups(f.ranks, f.cd) == [(0, 1, 2)]


def test_friedman_nemenyi_reproduces_demsar_2006():
    """Demšar (2006), section 3.2.4: four classifiers on 14 data sets with average ranks 3.143,
    2.000, 2.893, 1.964 give chi2_F = 9.28, F_F = 3.69 and CD = 1.25 at alpha = 0.05. The rank
    table below realises those average ranks (scores = 5 - rank; one tied row)."""
    ranks = [(2, 1, 4, 3), (2, 3, 4, 1), (2, 4, 1, 3), (3, 1, 2, 4), (3, 1, 2, 4), (3, 1, 4, 2), (3, 1, 4, 2),
             (3, 2, 4, 1), (3, 4, 2, 1), (4, 2, 3, 1), (4, 2, 3, 1), (4, 2, 3, 1), (4, 3, 2, 1), (4, 1, 2.5, 2.5)]
    f = stats.friedman_nemenyi((5 - np.array(ranks, dtype=float)).T)
    np.testing.assert_allclose(f.ranks, [3.143, 2.000, 2.893, 1.964], atol=5e-4)
    assert f.chi2 == pytest.approx(9.28, abs=0.005)
    assert f.ff == pytest.approx(3.69, abs=0.005)
    assert f.cd == pytest.approx(1.25, abs=0.005)
    assert f.p_ff < 0.05  # Demšar: F(3, 39) critical value 2.85 < 3.69, the null is rejected


def test_nemenyi_q_matches_demsar_table_5a():
    published = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]
    np.testing.assert_allclose([stats.nemenyi_q(k) for k in range(2, 11)], published, atol=1.5e-3)


def test_nemenyi_groups_are_maximal_and_not_nested():
    assert stats.nemenyi_groups([1.0, 1.5, 3.0, 3.2, 4.0], 1.0) == [(0, 1), (2, 3), (3, 4)]
    assert stats.nemenyi_groups([4.0, 1.0, 1.4, 1.2], 1.0) == [(1, 3, 2)]  # indices in rank order
    assert stats.nemenyi_groups([1.0, 3.0], 1.0) == []


def test_ranks_refuse_missing_scores():
    with pytest.raises(ValueError, match="missing"):
        stats.average_ranks(np.array([[0.1, np.nan], [0.2, 0.3]]))
    with pytest.raises(ValueError, match="n_methods >= 2"):
        stats.friedman_nemenyi(np.array([[0.1, 0.2]]))


# ---------------------------------------------------------------------------------------- figure


def test_cd_diagram_is_reproducible_and_draws_the_groups(tmp_path):
    ranks = {"teracon": 1.5, "conure": 2.0, "hat": 3.9, "sinmo": 4.2, "pop": 8.0}
    fig = plots._cd_figure(ranks, 2.5)
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"teracon (1.50)", "pop (8.00)", "CD = 2.50"} <= texts
    thick = [c for c in fig.axes[0].collections if max(c.get_linewidths()) == 3.0]
    assert len(thick) == len(stats.nemenyi_groups(list(ranks.values()), 2.5)) == 2
    first = [p.read_bytes() for p in plots.cd_diagram(ranks, 2.5, tmp_path / "a" / "cd", title="ranks")]
    second = [p.read_bytes() for p in plots.cd_diagram(ranks, 2.5, tmp_path / "b" / "cd", title="ranks")]
    assert first == second and first[0].startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="2 or more methods"):
        plots.cd_diagram({"x": 1.0}, 1.0, tmp_path / "c")
