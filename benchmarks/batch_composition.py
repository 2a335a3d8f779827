"""What does a training pass cost for each batch composition (`train.pairs_per_user`)?

Every setting makes the same steps of 1,024 (user, target) pairs and uses every pair once per
pass; what changes is how many sequences a step encodes (about 1,024 / pairs_per_user, or one per
user for `none`). This times the first `--steps` steps of a SinMo pass on ML-1M T2 for each
setting and extrapolates to the whole pass; the last column is the ratio to `none` measured in
the same run, which stays meaningful on a noisy machine (docs/protocol.md §4.8).

Usage:  python benchmarks/batch_composition.py [--data-dir DIR] [--preset small] [--threads 1] [--steps 20]
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

from curb.backbone import PRESETS
from curb.evaluator import Evaluator
from curb.method import Setup, TrainConfig
from curb.methods.sinmo import SinMo
from curb.runner import CellSpec, build_stream
from curb.training import batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--preset", default="small", choices=list(PRESETS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20, help="steps timed per setting (after one warm-up step)")
    ap.add_argument("--settings", default="none,16,8,4,1", help="comma list of pairs_per_user values")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    stream = build_stream(CellSpec("sinmo", "ml"), args.data_dir)
    ev = Evaluator(stream)
    info, data = ev.info("T2"), ev.train_data("T2")
    cfg = TrainConfig()
    rows = []
    for text in args.settings.split(","):
        k = None if text == "none" else int(text)
        torch.manual_seed(0)
        m = SinMo(Setup(stream.n_items, stream.sequences.shape[1], PRESETS[args.preset].backbone, cfg,
                        SinMo.Config(), torch.device("cpu"), 0))
        m.tasks.append(info)
        m.begin_task(info)
        opt = m.make_optimizer(info)
        steps = batches(data, cfg.batch, np.random.default_rng(0), torch.device("cpu"), k)
        encoded, t0, n_batches = 0, 0.0, 0
        for i, b in enumerate(itertools.islice(steps, args.steps + 1)):
            if i == 1:
                t0 = time.perf_counter()  # the first step warms up allocations and is not timed
            loss = m.loss(info, b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            encoded, n_batches = encoded + (len(b.x) if i else 0), b.n_batches
        per_step = (time.perf_counter() - t0) / args.steps
        rows.append([text, f"{encoded / args.steps:.0f}", n_batches, f"{per_step:.3f}", f"{per_step * n_batches:.1f}"])
    base = float(rows[0][-1])
    for r in rows:
        r.append(f"{float(r[-1]) / base:.1f}")
    print(f"SinMo, ML-1M T2 ({data.n_users} users, {data.n_pairs} pairs), preset {args.preset}, "
          f"{args.threads} thread(s), steps of {cfg.batch} pairs")
    print(tabulate(rows, headers=["pairs_per_user", "sequences per step", "steps per pass", "s per step",
                                  "s per pass (extrapolated)", f"vs {rows[0][0]}"], tablefmt="github"))


if __name__ == "__main__":
    main()
