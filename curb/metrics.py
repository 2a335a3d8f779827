"""Metric definitions (see docs/metrics.md for every formula and why this variant).

Ranks are tie-aware: the rank of the true label is the mean of its optimistic and pessimistic
rank, 1 + #(scores > s_true) + #(other scores == s_true) / 2, so a constant scorer cannot win.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

K = 5
RANKING_METRICS = ("mrr@5", "hr@5", "ndcg@5")
CLASSIFY_METRICS = ("acc",)


def tie_counts(scores: Tensor, rows: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """For every pair p: (#labels scored strictly above labels[p], #other labels tied with it)
    in row `rows[p]` of `scores` [n, C]."""
    s = scores[rows]
    true = s.gather(1, labels.unsqueeze(1))
    greater = (s > true).sum(1)
    equal = (s == true).sum(1) - 1
    return greater, equal


def tie_aware_rank(greater: Tensor, equal: Tensor) -> Tensor:
    return 1.0 + greater.double() + equal.double() / 2.0


def ranking_values(rank: Tensor, k: int = K) -> dict[str, Tensor]:
    """Per-pair MRR@k, HR@k and NDCG@k (float64), from tie-aware ranks."""
    hit = rank <= k
    rr = torch.where(hit, 1.0 / rank, torch.zeros_like(rank))
    ndcg = torch.where(hit, 1.0 / torch.log2(rank + 1.0), torch.zeros_like(rank))
    return {f"mrr@{k}": rr, f"hr@{k}": hit.double(), f"ndcg@{k}": ndcg}


def ranking_sums(rank: Tensor, k: int = K) -> dict[str, float]:
    """Sums (not means) of MRR@k, HR@k and NDCG@k over pairs, so chunks can be added up."""
    return {name: v.sum().item() for name, v in ranking_values(rank, k).items()}


def accuracy_values(greater: Tensor, equal: Tensor) -> dict[str, Tensor]:
    """Per-pair expected accuracy under random tie-breaking: 1/(1+ties) when nothing scores higher."""
    return {"acc": torch.where(greater == 0, 1.0 / (1.0 + equal.double()),
                               torch.zeros_like(equal, dtype=torch.float64))}


def accuracy_sum(greater: Tensor, equal: Tensor) -> dict[str, float]:
    return {"acc": accuracy_values(greater, equal)["acc"].sum().item()}


# ----------------------------------------------------------------- continual-learning metrics
def fwt(r_ii: float | None, sinmo_ii: float | None) -> float | None:
    """Relative forward transfer in %: (R(Ti,Ti) - Rbar(Ti)) / Rbar(Ti) * 100, Rbar = SinMo."""
    if r_ii is None or sinmo_ii is None or sinmo_ii == 0:
        return None
    return (r_ii - sinmo_ii) / sinmo_ii * 100.0


def bwt(r_final: float | None, r_ii: float | None) -> float | None:
    """Relative backward transfer in %: (R(TM,Ti) - R(Ti,Ti)) / R(Ti,Ti) * 100."""
    if r_final is None or r_ii is None or r_ii == 0:
        return None
    return (r_final - r_ii) / r_ii * 100.0


def transfer(R: Sequence[Sequence[float | None]], sinmo_diag: Sequence[float | None] | None = None) -> dict:
    """FWT/BWT per task from a lower-triangular R matrix (R[j][i], j >= i, training order).

    T1 has no FWT; the last task has no BWT (METHODS.md §4.3).
    """
    m = len(R)
    diag = [R[i][i] for i in range(m)]
    final = list(R[m - 1])
    bw = [bwt(final[i], diag[i]) if i < m - 1 else None for i in range(m)]
    fw = [None] * m
    if sinmo_diag is not None:
        fw = [fwt(diag[i], sinmo_diag[i]) if i > 0 else None for i in range(m)]
    def mean(xs):
        xs = [x for x in xs if x is not None and not math.isnan(x)]
        return sum(xs) / len(xs) if xs else None
    return {"fwt": fw, "bwt": bw, "fwt_mean": mean(fw), "bwt_mean": mean(bw)}


def mask_similarity(masks: dict[str, Tensor]) -> dict:
    """Cosine similarity between tasks' inference masks (flattened), for the mask heatmaps.

    Task-mask methods (HAT, TERACON) report it: similar masks mean shared units, which is what
    TERACON's relation-aware sampling reads as "related tasks" (Eq. 15 uses the same cosine).
    """
    names = list(masks)
    flat = torch.stack([masks[n].detach().float().flatten() for n in names])
    sim = torch.nn.functional.cosine_similarity(flat[:, None], flat[None], dim=-1, eps=1e-12)
    return {"tasks": names, "cosine": [[round(float(v), 6) for v in row] for row in sim]}
