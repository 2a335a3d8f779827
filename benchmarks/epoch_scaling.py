"""Does a recommendation epoch cost grow with users or with (user, target) pairs?

The reference code re-encodes a user's sequence once per target; curb encodes it once per step
for all its targets. This times one SinMo training epoch on ML-1M T2 for the full task, for half
of the users (all their targets), and for all users with half of their targets each. With
per-user encoding, halving users roughly halves the epoch, while halving targets costs about the
same as the full epoch (the same sequences are encoded; only the loss terms halve).

Usage:  python benchmarks/epoch_scaling.py [--data-dir DIR] [--preset paper] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

from curb.backbone import PRESETS
from curb.evaluator import Evaluator
from curb.method import Setup, TaskData, TrainConfig
from curb.methods.sinmo import SinMo
from curb.runner import CellSpec, build_stream
from curb.training import train_epoch


def subset(data: TaskData, users: np.ndarray, keep_frac: float, rng: np.random.Generator) -> TaskData:
    """`users` rows of `data`, each keeping ceil(keep_frac * its targets) of its labels."""
    counts = np.diff(data.ptr)[users]
    keep = np.ceil(counts * keep_frac).astype(np.int64)
    ptr = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(keep, out=ptr[1:])
    offs = np.repeat(data.ptr[users] - ptr[:-1], keep) + np.arange(ptr[-1])
    return TaskData(data.task, data.inputs[users], ptr, data.labels[offs])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--preset", default="paper", choices=list(PRESETS))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    stream = build_stream(CellSpec("sinmo", "ml"), args.data_dir)
    ev = Evaluator(stream)
    info, full = ev.info("T2"), ev.train_data("T2")
    rng = np.random.default_rng(0)
    half_users = np.sort(rng.choice(full.n_users, full.n_users // 2, replace=False))
    cases = [("all users, all targets", subset(full, np.arange(full.n_users), 1.0, rng)),
             ("half the users, all targets", subset(full, half_users, 1.0, rng)),
             ("all users, half the targets", subset(full, np.arange(full.n_users), 0.5, rng))]
    rows = []
    for name, data in cases:
        torch.manual_seed(0)
        m = SinMo(Setup(stream.n_items, stream.sequences.shape[1], PRESETS[args.preset].backbone, TrainConfig(),
                        SinMo.Config(), torch.device("cpu"), 0))
        m.tasks.append(info)
        m.begin_task(info)
        t0 = time.perf_counter()
        _, steps = train_epoch(m, info, data, m.make_optimizer(info), TrainConfig().batch)
        rows.append([name, data.n_users, data.n_pairs, steps, f"{time.perf_counter() - t0:.1f}"])
    base = float(rows[0][-1])
    for r in rows:
        r.append(f"{float(r[-1]) / base:.2f}")
    print(f"SinMo, one ML-1M T2 training epoch, preset {args.preset}, {args.threads} threads, batch 1024 pairs")
    print(tabulate(rows, headers=["case", "users", "pairs", "steps", "seconds", "vs full"], tablefmt="github"))


if __name__ == "__main__":
    main()
