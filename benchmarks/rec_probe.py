"""How much of an item-recommendation task can be read off the T1 sequence? A linear probe.

The later `ml` tasks (T2: a user's 4-star movies, T3: the 5-star ones) are predicted from the T1
sequence only: the last 30 movies the user rated below 4 stars. On small public streams every
method ends close to the popularity baseline (docs/protocol.md §4.8.3), so before reading that as
a failure to learn, this asks how far above popularity the simplest learned recommender gets:
ridge regression from the sequence's multi-hot item vector (order ignored) to the multi-hot
vector of the user's targets, with an intercept,

    scores(x) = (x - mean_x) W + mean_y,   W = (Xc' Xc + lam I)^-1 Xc' Yc   (Xc, Yc centred),

fitted on the training part of curb's own split. A method reads a user through its backbone's
last hidden state (64 channels in the `small` preset, 256 in `paper`) and one linear head, so
its scores are at most rank-64 (or 256) in the user's items; `--ranks` adds reduced-rank ridge
rows (W projected onto the top-r right singular vectors of the fitted scores Xc W) to show what
that bottleneck alone costs a linear model. `mean_y` is each label's share of the training
targets, so lam -> infinity is exactly the popularity baseline. lam is chosen on the validation
part's MRR@5, then scored once on the test part, by curb's own evaluator code (full ranking,
tie-aware ranks, the same pairs as every method). The fit is closed form and deterministic: no
seeds.

It also prints popularity's validation cross-entropy (training label counts plus one half,
normalised), the level a method's validation-loss curve (`curb report --sections training`) must
go below before its model knows more about a user than how popular each target is.

It is a diagnostic, not a benchmark method: it reads the evaluator's test part directly.

Usage:  CURB_DATA=/work/shared/data python benchmarks/rec_probe.py [--dataset ml]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

from curb.evaluator import Evaluator, evaluate_users
from curb.method import TaskData
from curb.runner import CellSpec, build_stream, resolve_config

LAMBDAS = (1e0, 3e0, 1e1, 3e1, 1e2, 3e2, 1e3, 3e3, 1e4, float("inf"))  # chosen on validation MRR@5


def multi_hot(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    out = np.zeros((n_rows, n_cols), dtype=np.float64)
    np.add.at(out, (rows, cols), 1.0)
    return out


def bag(data: TaskData, n_items: int) -> np.ndarray:
    """users x items: 1 where the item is in the user's sequence (padding id 0 dropped)."""
    rows, cols = np.nonzero(data.inputs)
    x = np.zeros((data.n_users, n_items), dtype=np.float64)
    x[rows, data.inputs[rows, cols]] = 1.0
    return x


class LinearScorer:
    """What `evaluate_users` needs of a method: `score(task, x)` on `device`, here x -> x_bag W + b."""

    device = torch.device("cpu")

    def __init__(self, n_items: int, weight: np.ndarray, bias: np.ndarray):
        self.n_items = n_items
        self.weight = torch.from_numpy(weight)
        self.bias = torch.from_numpy(bias)

    def score(self, task: str, x: torch.Tensor) -> torch.Tensor:
        xb = torch.zeros(len(x), self.n_items, dtype=torch.float64).scatter_(1, x.long(), 1.0)
        xb[:, 0] = 0.0  # padding
        return xb @ self.weight + self.bias


def ridge_path(x: np.ndarray, y: np.ndarray, lambdas: tuple[float, ...]) -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """(W, b) per lam from one eigendecomposition of Xc' Xc; b folds in the centring."""
    mx, my = x.mean(0), y.mean(0)
    xc = x - mx
    evals, q = np.linalg.eigh(xc.T @ xc)
    qxy = q.T @ (xc.T @ (y - my))
    out = {}
    for lam in lambdas:
        w = np.zeros((x.shape[1], y.shape[1])) if np.isinf(lam) else q @ (qxy / (evals + lam)[:, None])
        out[lam] = (w, my - mx @ w)
    return out


def reduce_rank(x: np.ndarray, fit: tuple[np.ndarray, np.ndarray], rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(W V V', b) with V the top-`rank` right singular vectors of the centred fitted scores
    (randomised SVD, 4 power iterations: a diagnostic, not an exact solver)."""
    w, b = fit
    mx = x.mean(0)
    fitted = torch.from_numpy((x - mx) @ w)
    torch.manual_seed(0)
    _, _, v = torch.svd_lowrank(fitted, q=min(rank + 16, min(fitted.shape)), niter=4)
    v = v[:, :rank].numpy()
    w_r = w @ v @ v.T
    return w_r, b + mx @ (w - w_r)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ml", help="a stream whose later tasks include `recommend` ones")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--ranks", default="256,64", help="reduced-rank rows to add (comma list; empty: none)")
    args = ap.parse_args()
    ranks = [None, *(int(r) for r in args.ranks.split(",") if r.strip())]
    torch.set_num_threads(1)
    spec = CellSpec("pop", args.dataset)
    stream = build_stream(spec, args.data_dir)
    ev = Evaluator(stream, resolve_config(spec).split)
    rows = []
    for task in stream.tasks:
        if task.kind != "recommend":
            continue
        info = ev.info(task.name)
        parts = {p: ev._data(task.name, p) for p in ("train", "val", "test")}
        tr = parts["train"]
        x = bag(tr, stream.n_items)
        y = multi_hot(np.repeat(np.arange(tr.n_users), np.diff(tr.ptr)), tr.labels, tr.n_users, info.n_labels)
        full = ridge_path(x, y, LAMBDAS)
        counts = np.bincount(tr.labels, minlength=info.n_labels) + 0.5
        pop_ce = float(-np.log(counts / counts.sum())[parts["val"].labels].mean())
        pop = evaluate_users(LinearScorer(stream.n_items, *full[float("inf")]), info, parts["test"])[0]["mrr@5"]
        for rank in ranks:
            fits = full if rank is None else {lam: reduce_rank(x, f, rank) if np.isfinite(lam) else f
                                              for lam, f in full.items()}
            val = {lam: evaluate_users(LinearScorer(stream.n_items, w, b), info, parts["val"])[0]["mrr@5"]
                   for lam, (w, b) in fits.items()}
            best = max(val, key=lambda lam: (val[lam], lam))  # ties: the stronger ridge
            test = evaluate_users(LinearScorer(stream.n_items, *fits[best]), info, parts["test"])[0]["mrr@5"]
            rows.append([task.name, task.description, "full" if rank is None else str(rank), tr.n_users,
                         parts["test"].n_users, f"{val[float('inf')]:.4f} / {val[best]:.4f}", f"{pop:.4f}",
                         f"{test:.4f}", f"{test / pop:.2f}", f"{best:g}", f"{pop_ce:.3f}",
                         " ".join(f"{lam:g}:{v:.4f}" for lam, v in val.items())])
    print(tabulate(rows, headers=["task", "targets", "rank", "train users", "test users",
                                  "validation MRR@5: pop / probe", "pop (test)", "probe (test)", "probe / pop",
                                  "chosen lam", "pop validation CE", "validation MRR@5 per lam"],
                   tablefmt="github", disable_numparse=True))


if __name__ == "__main__":
    main()
