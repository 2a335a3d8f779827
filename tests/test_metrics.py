"""Metrics against brute-force references, tie handling, and FWT/BWT formulas."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from curb.metrics import accuracy_sum, ranking_sums, tie_aware_rank, tie_counts, transfer


def brute_rank(row, label):
    """Mean of optimistic and pessimistic 1-based rank of `label` in `row`."""
    s = row[label]
    opt = 1 + sum(1 for j, v in enumerate(row) if v > s)
    pes = opt + sum(1 for j, v in enumerate(row) if v == s and j != label)
    return (opt + pes) / 2


scores_st = st.integers(2, 12).flatmap(
    lambda c: st.tuples(
        st.lists(st.lists(st.integers(-3, 3), min_size=c, max_size=c), min_size=1, max_size=6),
        st.just(c),
    )
)


@settings(max_examples=150, deadline=None)
@given(scores_st, st.data())
def test_ranking_metrics_match_brute_force(sc, data):
    rows_list, c = sc
    scores = torch.tensor(rows_list, dtype=torch.float32)
    n_pairs = data.draw(st.integers(1, 10))
    rows = data.draw(st.lists(st.integers(0, len(rows_list) - 1), min_size=n_pairs, max_size=n_pairs))
    labels = data.draw(st.lists(st.integers(0, c - 1), min_size=n_pairs, max_size=n_pairs))
    g, e = tie_counts(scores, torch.tensor(rows), torch.tensor(labels))
    rank = tie_aware_rank(g, e)
    ref = [brute_rank(rows_list[r], l) for r, l in zip(rows, labels)]
    assert rank.tolist() == pytest.approx(ref)
    sums = ranking_sums(rank, 5)
    assert sums["mrr@5"] == pytest.approx(sum(1 / r for r in ref if r <= 5))
    assert sums["hr@5"] == pytest.approx(sum(1 for r in ref if r <= 5))
    assert sums["ndcg@5"] == pytest.approx(sum(1 / math.log2(r + 1) for r in ref if r <= 5))
    acc = accuracy_sum(g, e)["acc"]
    ref_acc = sum(
        (1 / sum(1 for v in rows_list[r] if v == rows_list[r][l])) if max(rows_list[r]) == rows_list[r][l] else 0
        for r, l in zip(rows, labels)
    )
    assert acc == pytest.approx(ref_acc)


def test_constant_scores_cannot_win():
    scores = torch.zeros(3, 100)
    g, e = tie_counts(scores, torch.arange(3), torch.tensor([0, 50, 99]))
    rank = tie_aware_rank(g, e)
    assert torch.allclose(rank, torch.full((3,), 50.5, dtype=torch.float64))
    assert ranking_sums(rank)["mrr@5"] == 0.0
    assert accuracy_sum(g, e)["acc"] == pytest.approx(3 / 100)


def test_exact_top_hit():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.2, 0.0, -1.0]])
    g, e = tie_counts(scores, torch.tensor([0, 0]), torch.tensor([1, 3]))
    rank = tie_aware_rank(g, e)
    assert rank.tolist() == [1.0, 3.0]
    s = ranking_sums(rank)
    assert s["mrr@5"] == pytest.approx(1 + 1 / 3)
    assert s["ndcg@5"] == pytest.approx(1 + 1 / np.log2(4))


def test_transfer_matches_paper_definitions():
    # HAT on TTL (the paper; docs/protocol.md §5.6, §8.2): R(T2,T2)=0.0188, R(T6,T2)=0.0174, SinMo T2 0.0104.
    R = [[0.0478, None, None], [0.045, 0.0188, None], [0.0424, 0.0174, 0.3]]
    tr = transfer(R, [0.0446, 0.0104, 0.25])
    assert tr["bwt"][0] == pytest.approx((0.0424 - 0.0478) / 0.0478 * 100)
    assert tr["bwt"][1] == pytest.approx(-7.45, abs=0.01)
    assert tr["bwt"][2] is None  # last task has no BWT
    assert tr["fwt"][0] is None  # T1 has no FWT
    assert tr["fwt"][1] == pytest.approx(80.77, abs=0.01)
    assert tr["fwt"][2] == pytest.approx(20.0)


def test_mask_similarity_is_cosine_of_flattened_masks():
    from curb.metrics import mask_similarity

    a = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    c = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    out = mask_similarity({"T1": a, "T2": b, "T3": c})
    assert out["tasks"] == ["T1", "T2", "T3"]
    sim = out["cosine"]
    assert sim[0][0] == pytest.approx(1.0) and sim[1][1] == pytest.approx(1.0)
    assert sim[0][1] == pytest.approx(2 ** -0.5) and sim[1][0] == pytest.approx(sim[0][1])
    assert sim[0][2] == pytest.approx(0.0)
