"""Can a user's profile be read off the sequence at all? A bag-of-items probe on `ml-profile`.

The `ml-profile` tasks (T4 age group, T5 gender, T6 occupation) classify a user from the T1
sequence only: the last 30 movies rated below 4 stars. Before blaming a method for ending at
the majority class, this asks how much of the label the sequence carries, with the simplest
learned model: multinomial logistic regression on the sequence's multi-hot item vector
(order ignored), its L2 weight chosen on the validation part of curb's own split (user level,
the benchmark's protocol), scored once on the test part. Seeds vary the initialisation and
the optimiser only; the split is the benchmark's (docs/protocol.md §2).

With `--t1 DIR` (a `.cache/t1` folder holding seed 0's shared pre-trained T1 model) it adds rows
that classify from that frozen model's hidden state instead of the bag: at the last position
(what every method's head reads) and averaged over the sequence (as `benchmarks/rec_probe.py`).

It is a diagnostic, not a benchmark method: it reads the evaluator's test part directly.

Usage:  CURB_DATA=/work/shared/data python benchmarks/profile_probe.py [--seeds 0,1,2]
        [--preset small --t1 results/ml-profile-tune/.cache/t1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

from curb.evaluator import Evaluator
from curb.runner import CellSpec, build_stream, resolve_config
from rec_probe import load_t1, states  # benchmarks/ is the script's folder, so on its path

L2 = (1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4)  # weight-decay grid, chosen on validation accuracy


class Probe(torch.nn.Module):
    """Logistic regression on the row-normalised multi-hot item vector, as a sparse bag: the mean
    of the sequence's item weight rows (padding id 0 contributes nothing) plus a bias. With
    `dense`, on given feature vectors instead (x is then [users, dense] floats)."""

    def __init__(self, n_items: int, n_labels: int, dense: int | None = None):
        super().__init__()
        self.dense = dense is not None
        self.weight = (torch.nn.Linear(dense, n_labels, bias=False) if self.dense else
                       torch.nn.EmbeddingBag(n_items, n_labels, mode="mean", padding_idx=0))
        self.bias = torch.nn.Parameter(torch.zeros(n_labels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight(x) + self.bias


def fit(x: torch.Tensor, y: torch.Tensor, n_items: int, n_labels: int, l2: float, seed: int,
        steps: int = 300) -> Probe:
    """Full-batch Adam on the cross-entropy plus l2 * ||W||^2 (the bias is not penalised)."""
    torch.manual_seed(seed)
    model = Probe(n_items, n_labels, x.shape[1] if x.is_floating_point() else None)
    with torch.no_grad():  # a small random start, so seeds differ
        model.weight.weight.normal_(0, 0.01)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y) + l2 * model.weight.weight.pow(2).sum()
        loss.backward()
        opt.step()
    return model


def accuracy(model: Probe, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def cross_entropy(model: Probe, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(model(x), y))


def prior_cross_entropy(train: torch.Tensor, y: torch.Tensor, n_labels: int) -> float:
    """Cross-entropy on `y` of the training label frequencies, the same for every user: what a
    model that learned nothing about the user scores on the validation curves of a profile task."""
    freq = torch.bincount(train, minlength=n_labels).double() / len(train)
    return float(-freq.log()[y].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--preset", default=None, help="backbone preset of the T1 model (`--t1`); default: the dataset's")
    ap.add_argument("--t1", type=Path, default=None, metavar="DIR",
                    help="a `.cache/t1` folder holding seed 0's pre-trained T1 model: adds rows read through it")
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    spec = CellSpec("pop", "ml-profile", preset=args.preset)
    stream = build_stream(spec, args.data_dir)
    ev = Evaluator(stream, resolve_config(spec).split)
    t1 = load_t1(args.t1, stream, spec) if args.t1 is not None else None
    inputs = {"bag of items": lambda d: torch.from_numpy(d.inputs).long()}
    for pool in ("mean", "last") if t1 is not None else ():
        inputs[f"T1 state, {pool}"] = lambda d, pool=pool: torch.from_numpy(states(t1, d.inputs, pool)).float()
    rows = []
    for (task, (name, read)) in ((t, i) for t in stream.tasks if t.kind == "classify" for i in inputs.items()):
        parts = {p: ev._data(task.name, p) for p in ("train", "val", "test")}
        x = {p: read(d) for p, d in parts.items()}
        y = {p: torch.from_numpy(d.labels).long() for p, d in parts.items()}
        n_labels = int(max(int(t.max()) for t in y.values())) + 1
        majority = int(torch.bincount(y["train"], minlength=n_labels).argmax())
        base = {p: float((y[p] == majority).float().mean()) for p in ("val", "test")}
        prior_ce = prior_cross_entropy(y["train"], y["val"], n_labels)
        tests, vals, val_ces, chosen = [], [], [], []
        for seed in seeds:
            models = {l2: fit(x["train"], y["train"], stream.n_items, n_labels, l2, seed) for l2 in L2}
            val, l2 = max((accuracy(m, x["val"], y["val"]), l2) for l2, m in models.items())
            tests.append(accuracy(models[l2], x["test"], y["test"]))
            vals.append(val)
            val_ces.append(cross_entropy(models[l2], x["val"], y["val"]))
            chosen.append(l2)
        t = np.array(tests)
        sd = float(np.sqrt(base["test"] * (1 - base["test"]) / len(y["test"])))  # binomial sd of a test accuracy
        rows.append([task.name, task.description, name, len(y["train"]), len(y["test"]),
                     f"{base['val']:.4f} / {np.mean(vals):.4f}", f"{prior_ce:.3f} / {np.mean(val_ces):.3f}",
                     f"{base['test']:.4f}",
                     f"{t.mean():.4f} ± {t.std(ddof=1) if len(t) > 1 else 0:.4f}",
                     f"{(t.mean() - base['test']) / sd:+.1f}", ", ".join(f"{v:g}" for v in chosen)])
    print(tabulate(rows, headers=["task", "label", "input", "train users", "test users", "validation: majority / probe",
                                  "validation cross-entropy: class prior / probe", "majority (test)",
                                  "probe accuracy (test)", "lift in binomial sd", "chosen L2 per seed"],
                   tablefmt="github", disable_numparse=True))


if __name__ == "__main__":
    main()
