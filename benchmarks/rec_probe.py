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

With `--t1 DIR` (a run folder's `.cache/t1`, holding the shared pre-trained T1 model of seed 0
for this stream's config) it adds two rows per task that read the user through that frozen
model instead of the bag: ridge on the last position's hidden state (what every method's head
reads) and on the mean of the hidden states over the sequence's real positions. The pair
separates what the pre-trained representation holds from what its read-out keeps.

It also prints popularity's validation cross-entropy (training label counts plus one half,
normalised), the level a method's validation-loss curve (`curb report --sections training`) must
go below before its model knows more about a user than how popular each target is.

It is a diagnostic, not a benchmark method: it reads the evaluator's test part directly.

Usage:  CURB_DATA=/work/shared/data python benchmarks/rec_probe.py [--dataset ml]
        [--preset small --t1 results/ml-tune/.cache/t1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

from curb.backbone import PlainModel
from curb.evaluator import Evaluator, evaluate_users, task_info
from curb.method import TaskData
from curb.results import load_sealed
from curb.runner import CellSpec, build_stream, resolve_config, t1_cache_name

LAMBDAS = (1e0, 3e0, 1e1, 3e1, 1e2, 3e2, 1e3, 3e3, 1e4, float("inf"))  # chosen on validation MRR@5
FEATURE_LAMBDAS = (1e-1, 1e0, 1e1, 1e2, 1e3, 3e3, 1e4, 3e4, 1e5, 3e5, 1e6, float("inf"))  # dense states: own scale


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


class StateScorer:
    """x -> features(x) W + b, the features read through the frozen pre-trained T1 model."""

    device = torch.device("cpu")

    def __init__(self, model: PlainModel, pool: str, weight: np.ndarray, bias: np.ndarray):
        self.model, self.pool = model, pool
        self.weight, self.bias = torch.from_numpy(weight), torch.from_numpy(bias)

    def score(self, task: str, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(states(self.model, x.numpy(), self.pool)) @ self.weight + self.bias


@torch.no_grad()
def states(model: PlainModel, inputs: np.ndarray, pool: str) -> np.ndarray:
    """users x channels: the hidden state at the last position ("last") or its mean over the
    positions that hold an item ("mean")."""
    h = model.backbone.read(torch.from_numpy(inputs), all_positions=True).double()
    if pool == "last":
        return h[:, -1].numpy()
    real = torch.from_numpy(inputs != 0).double().unsqueeze(-1)
    return ((h * real).sum(1) / real.sum(1).clamp(min=1)).numpy()


def load_t1(cache: Path, stream, spec: CellSpec) -> PlainModel:
    cfg = resolve_config(spec)
    path = cache / t1_cache_name(stream, cfg, spec.seed, torch.device("cpu"))
    _, blob = load_sealed(path)  # names the file when it is missing
    info = task_info(stream.tasks[0])
    model = PlainModel(stream.vocab_at(0), cfg.backbone)
    model.add_head(info.name, info.n_labels)
    model.load_state_dict(blob["state"])
    return model.eval()


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
    ap.add_argument("--preset", default=None, help="backbone preset of the T1 model (`--t1`); default: the dataset's")
    ap.add_argument("--t1", type=Path, default=None, metavar="DIR",
                    help="a `.cache/t1` folder holding seed 0's pre-trained T1 model: adds rows read through it")
    args = ap.parse_args()
    ranks = [None, *(int(r) for r in args.ranks.split(",") if r.strip())]
    torch.set_num_threads(1)
    spec = CellSpec("pop", args.dataset, preset=args.preset)
    stream = build_stream(spec, args.data_dir)
    ev = Evaluator(stream, resolve_config(spec).split)
    t1 = load_t1(args.t1, stream, spec) if args.t1 is not None else None
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
        variants = [("bag, full" if r is None else f"bag, rank {r}",
                     lambda w, b: LinearScorer(stream.n_items, w, b),
                     full if r is None else {lam: reduce_rank(x, f, r) if np.isfinite(lam) else f for lam, f in full.items()})
                    for r in ranks]
        for pool in ("last", "mean") if t1 is not None else ():
            variants.append((f"T1 state, {pool}", lambda w, b, pool=pool: StateScorer(t1, pool, w, b),
                             ridge_path(states(t1, tr.inputs, pool), y, FEATURE_LAMBDAS)))
        for name, scorer, fits in variants:
            val = {lam: evaluate_users(scorer(w, b), info, parts["val"])[0]["mrr@5"] for lam, (w, b) in fits.items()}
            best = max(val, key=lambda lam: (val[lam], lam))  # ties: the stronger ridge
            test = evaluate_users(scorer(*fits[best]), info, parts["test"])[0]["mrr@5"]
            rows.append([task.name, task.description, name, tr.n_users,
                         parts["test"].n_users, f"{val[float('inf')]:.4f} / {val[best]:.4f}", f"{pop:.4f}",
                         f"{test:.4f}", f"{test / pop:.2f}", f"{best:g}", f"{pop_ce:.3f}",
                         " ".join(f"{lam:g}:{v:.4f}" for lam, v in val.items())])
    print(tabulate(rows, headers=["task", "targets", "input", "train users", "test users",
                                  "validation MRR@5: pop / probe", "pop (test)", "probe (test)", "probe / pop",
                                  "chosen lam", "pop validation CE", "validation MRR@5 per lam"],
                   tablefmt="github", disable_numparse=True))


if __name__ == "__main__":
    main()
