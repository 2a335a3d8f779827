"""The sampled T1 softmax (`train.t1_negatives`, docs/protocol.md §4.1): its effect on T1, and TTL scale.

`ml`: the plain T1 model (what SinMo, FineAll, PeterRec and Piggyback share) trained under the
protocol's T1 selection (validation cross-entropy, patience) with the full softmax and with
sampled negatives, seed by seed in one process, so the seconds per epoch compare within the run.
Prints the selected round, validation and test MRR@5 (evaluation always ranks every item) and the
training seconds per epoch, and the ratios sampled / full.

    CURB_DATA=/work/shared/data python benchmarks/sampled_softmax.py ml --seeds 0,1 --negatives 0.2

`ttl`: one TERACON epoch per task on the 1 % TTL-shaped stream (646 K items, 100-item sequences)
with the sampled T1. T1's epoch is timed over `--t1-steps` steps and extrapolated to the pass's
step count (said in the output); every later task runs one whole epoch unless `--steps` caps it
the same way. Validation is timed apart (T1's on `--t1-val-users` users, later tasks' on
`--val-users`, extrapolated). Peak resident memory is sampled while each task is learned, and on
`--device cuda` the peak GPU memory too (benchmarks/gpu.sh step 5 runs the full-scale stream).

    python benchmarks/sampled_softmax.py ttl --negatives 0.2 --t1-steps 8
    python benchmarks/sampled_softmax.py ttl --negatives 8192 --t1-steps 32 --tasks 1   # T1 only
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

from curb.evaluator import Evaluator, evaluate_data
from curb.method import Setup, TaskData, get_method
from curb.runner import CellSpec, Fitter, build_stream, resolve_config
from curb.training import train_epoch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from method_speed import PeakRSS  # noqa: E402  (a sibling script, not a package)


def t1_model(dataset: str, preset: str, seed: int, sets: dict[str, str]) -> dict:
    """Train the plain T1 model exactly as the runner's shared T1 cache does; T1 val/test numbers."""
    spec = CellSpec("sinmo", dataset, seed=seed, preset=preset, overrides=tuple(sorted(sets.items())))
    cfg, stream = resolve_config(spec), build_stream(spec, None)
    ev = Evaluator(stream, cfg.split, cfg.train.eval_batch)
    fitter = Fitter(cfg, lambda *_: None)
    name = stream.task_names[0]
    torch.manual_seed(seed)
    setup = Setup(stream.vocab_at(0), stream.sequences.shape[1], cfg.backbone, cfg.train, cfg.method,
                  torch.device("cpu"), seed, pretrained_t1=None)
    method = get_method("sinmo")(setup)
    t0 = time.perf_counter()
    method.learn_task(ev.info(name), ev.train_data(name), ev.val_data(name), fitter)
    wall = time.perf_counter() - t0
    log = fitter.logs[-1]
    epochs = log["epochs"]
    test = ev.test(method, name)
    return {"rounds": len(epochs), "best": log["best_epoch"] + 1, "val": log["best_val"], "test": test["mrr@5"],
            "s_epoch": float(np.mean([e["seconds"] for e in epochs])), "steps": epochs[0]["steps"], "wall": wall}


def run_ml(args: argparse.Namespace) -> None:
    rows, ratios = [], []
    for seed in (int(s) for s in args.seeds.split(",")):
        got = {}
        for label, sets in (("full", {}), (f"sampled {args.negatives}", {"train.t1_negatives": args.negatives})):
            r = got[label] = t1_model(args.dataset, args.preset, seed, sets)
            rows.append([seed, label, f"{r['best']}/{r['rounds']}", f"{r['val']:.4f}", f"{r['test']:.4f}",
                         f"{r['s_epoch']:.2f}", r["steps"], f"{r['wall']:.0f}"])
            print(rows[-1], flush=True)
        full, samp = got["full"], got[f"sampled {args.negatives}"]
        ratios.append([seed, f"{samp['s_epoch'] / full['s_epoch']:.2f}", f"{samp['test'] / full['test']:.3f}",
                       f"{samp['val'] / full['val']:.3f}"])
    print(f"T1 on {args.dataset}, preset {args.preset}, full softmax vs train.t1_negatives={args.negatives}; "
          f"{torch.get_num_threads()} thread(s)")
    print(tabulate(rows, headers=["seed", "T1 softmax", "best/rounds", "val MRR@5", "test MRR@5", "s/epoch", "steps",
                                  "wall s"], tablefmt="github"))
    print(tabulate(ratios, headers=["seed", "s/epoch sampled/full", "test MRR@5 sampled/full",
                                    "val MRR@5 sampled/full"], tablefmt="github"))


def head_users(data: TaskData, n: int) -> TaskData:
    """The first `n` users of `data` with their labels."""
    n = min(n, data.n_users)
    return TaskData(data.task, data.inputs[:n], data.ptr[: n + 1], data.labels[: data.ptr[n]])


def head_steps(data: TaskData, steps: int, batch: int, next_item: bool) -> TaskData:
    """The first users of `data` that fill about `steps` steps of `batch` (sequences for T1, pairs after)."""
    n = steps * batch if next_item else int(np.searchsorted(data.ptr, steps * batch, side="right")) - 1
    return head_users(data, max(n, 1))


def run_ttl(args: argparse.Namespace) -> None:
    sets = {"train.t1_negatives": args.negatives, "train.t1_epochs": "1", "train.epochs": "1"}
    spec = CellSpec("teracon", args.dataset, seed=0, overrides=tuple(sorted(sets.items())))
    cfg, stream = resolve_config(spec), build_stream(spec, None)
    ev = Evaluator(stream, cfg.split, cfg.train.eval_batch)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    setup = Setup(stream.vocab_at(0), stream.sequences.shape[1], cfg.backbone, cfg.train, cfg.method,
                  device, 0, pretrained_t1=None)
    method = get_method("teracon")(setup)
    rows = []
    for j, name in enumerate(stream.task_names[: args.tasks]):
        info, train, val = ev.info(name), ev.train_data(name), ev.val_data(name)
        t1 = info.kind == "next_item"
        batch = cfg.train.t1_batch if t1 else cfg.train.batch
        full_steps = math.ceil((train.n_users if t1 else train.n_pairs) / batch)
        cap = args.t1_steps if t1 else args.steps
        timed = head_steps(train, cap, batch, t1) if cap is not None and cap < full_steps else train
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        with PeakRSS() as rss:
            method.tasks.append(info)
            method.begin_task(info)
            opt = method.make_optimizer(info)
            t0 = time.perf_counter()
            _, steps = train_epoch(method, info, timed, opt, batch, pairs_per_user=cfg.train.pairs_per_user)
            if cuda:
                torch.cuda.synchronize(device)
            secs = time.perf_counter() - t0
            vdata = head_users(val, args.t1_val_users if t1 else args.val_users or val.n_users)
            t0 = time.perf_counter()
            evaluate_data(method, info, vdata, cfg.train.eval_batch, with_loss=True)
            val_s = (time.perf_counter() - t0) * val.n_users / vdata.n_users
            method.end_task(info)
        extrapolated = steps < full_steps
        epoch_s = secs * full_steps / steps
        gpu = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f}" if cuda else "-"
        rows.append([name, info.kind, f"{info.n_labels:,}", f"{train.n_users:,}",
                     f"{full_steps}" + (f" ({steps} timed)" if extrapolated else ""), f"{secs / steps:.3f}",
                     f"{epoch_s:.0f}" + (" (extrapolated)" if extrapolated else ""),
                     f"{val_s:.0f}" + (" (extrapolated)" if vdata.n_users < val.n_users else ""),
                     f"{rss.peak / 1024:.2f}", gpu])
        print(rows[-1], flush=True)
    print(f"TERACON, one epoch per task on {args.dataset} ({stream.n_users:,} users, {stream.n_items:,} items), "
          f"preset {cfg.preset}, train.t1_negatives={args.negatives}, device {device}; "
          f"{torch.get_num_threads()} thread(s)")
    print(tabulate(rows, headers=["task", "kind", "labels", "train users", "steps", "s/step", "s/epoch",
                                  "validation s", "peak RSS GiB", "peak GPU GiB"], tablefmt="github"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="part", required=True)
    ml = sub.add_parser("ml", help="T1 MRR@5 and s/epoch, full vs sampled softmax")
    ml.add_argument("--dataset", default="ml")
    ml.add_argument("--preset", default="small")
    ml.add_argument("--seeds", default="0")
    ml.add_argument("--negatives", default="0.2")
    ttl = sub.add_parser("ttl", help="one TERACON epoch per task on the TTL-shaped stream")
    ttl.add_argument("--dataset", default="ttl-shaped-1pct")
    ttl.add_argument("--negatives", default="0.2")
    ttl.add_argument("--t1-steps", type=int, default=8)
    ttl.add_argument("--t1-val-users", type=int, default=32)
    ttl.add_argument("--tasks", type=int, default=None, help="only the first N tasks (default: all)")
    ttl.add_argument("--steps", type=int, default=None,
                     help="time this many steps of each later task and extrapolate (default: the whole epoch)")
    ttl.add_argument("--val-users", type=int, default=None,
                     help="validation users timed per later task, extrapolated (default: all)")
    ttl.add_argument("--device", default="cpu", help="cpu or cuda")
    for p in (ml, ttl):
        p.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run_ml(args) if args.part == "ml" else run_ttl(args)


if __name__ == "__main__":
    main()
