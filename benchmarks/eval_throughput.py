"""Full-ranking evaluation throughput: users and (user, target) pairs scored per second.

Times `curb.evaluator.evaluate_data` (the code every reported number goes through) with a plain
model on the test part of T1 (ranking all |V| items) and T2 (ranking all |Y| targets, many
targets per user) of a dataset.

Usage:  python benchmarks/eval_throughput.py [--dataset ml --data-dir DIR] [--preset paper] [--threads N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from tabulate import tabulate

from curb.backbone import PRESETS
from curb.evaluator import Evaluator, evaluate_data
from curb.method import Setup, TaskData, TrainConfig
from curb.methods.sinmo import SinMo
from curb.runner import CellSpec, build_stream


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ml")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--preset", default="paper", choices=list(PRESETS))
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    stream = build_stream(CellSpec("sinmo", args.dataset), args.data_dir)
    ev = Evaluator(stream)
    torch.manual_seed(0)
    m = SinMo(Setup(stream.n_items, stream.sequences.shape[1], PRESETS[args.preset].backbone, TrainConfig(),
                    SinMo.Config(), torch.device("cpu"), 0))
    rows = []
    for name in stream.task_names[:2]:
        info = ev.info(name)
        m.tasks.append(info)
        m.begin_task(info)
        tg = ev._splits[name]["test"]  # a benchmark may read the test part; methods never can
        data = TaskData(info, stream.sequences[tg.users], tg.ptr, tg.labels)
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            evaluate_data(m, info, data)
            best = min(best, time.perf_counter() - t0)
        rows.append([name, info.n_labels, data.n_users, data.n_pairs, f"{best:.2f}",
                     f"{data.n_users / best:,.0f}", f"{data.n_pairs / best:,.0f}"])
    print(f"dataset {args.dataset}, preset {args.preset}, {args.threads} threads, best of {args.repeat}")
    print(tabulate(rows, headers=["task", "labels ranked", "test users", "test pairs", "seconds", "users/s", "pairs/s"],
                   tablefmt="github"))


if __name__ == "__main__":
    main()
