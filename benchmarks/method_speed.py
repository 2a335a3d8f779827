"""Seconds per epoch and peak memory of methods on one task (default: ML-1M T2, paper preset).

Each method runs in its own subprocess (so its peak memory is its own): it learns T1 (the
shared pre-trained T1 model is trained once and cached under --cache; methods with their own
T1 stage run it with --t1-epochs), then learns the target task for --epochs epochs per phase.
Reported per phase: seconds per epoch of the training loop (the fit log's epoch time, without
validation), its ratio to the baseline method's (--baseline, SinMo) measured in the same round,
steps per epoch, the wall time of the whole task (validation included), the peak resident memory
sampled while the task was learned, and the process's lifetime peak (maxrss).

A method entry may carry overrides after `@` (`teracon@teracon.sampling=none`, several joined by
`;`); such a row also gets its ratio to the plain method's row. `--rounds R` runs the whole list R
times, interleaved (A, B, C, A, B, C, ...), and reports medians over the rounds: a ratio is taken
between runs of the same round, so a load that drifts over minutes moves both of its sides.

    CURB_DATA=/work/shared/data python benchmarks/method_speed.py --methods sinmo,teracon,hat,conure,piggyback

The numbers are only comparable between rows of one invocation (same machine and load).

`--interleave STEPS` measures ratios that a drifting load cannot move: every method is built in
one process (each after its own T1 stage, as above), then the methods take turns on the same
T2 batches, a block of `--block` optimiser steps each (loss, backward, step; a block keeps a
method's weights warm in the caches, as in an epoch of its own), for STEPS batches after one
warm-up block. It reports each method's median step time (median of its block medians) and
the median over blocks of its block median divided by the baseline's on the same batches;
times the steps of an epoch, that is the epoch ratio. (Only each method's first phase of the task is stepped: CONURE's retrain phase
follows a pruning, which this mode does not run.)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """Samples this process's resident memory in a background thread (torch allocates outside
    Python's allocator, so tracemalloc would not see tensors)."""

    def __init__(self, every_s: float = 0.02):
        self.every_s, self.peak, self._stop = every_s, _rss_mib(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, _rss_mib())

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mib())


def after_t1(args: argparse.Namespace, name: str, sets: dict[str, str], echo) -> tuple:
    """`name` built as the runner builds it, after its T1 stage (the shared pre-trained T1 model is
    trained once and cached under --cache): (method, evaluator, resolved config, fitter)."""
    import numpy as np
    import torch

    from curb.evaluator import Evaluator
    from curb.method import Setup, get_method
    from curb.runner import CellSpec, Fitter, _t1_provider, build_stream, resolve_config

    spec = CellSpec(name, args.dataset, seed=args.seed, preset=args.preset, overrides=tuple(sorted(sets.items())))
    cfg = resolve_config(spec)
    stream = build_stream(spec, args.data_dir)
    ev = Evaluator(stream, cfg.split, cfg.train.eval_batch)
    fitter = Fitter(cfg, echo)
    t1 = stream.task_names[0]
    dev = torch.device(args.device)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    setup = Setup(stream.n_items, stream.sequences.shape[1], cfg.backbone, cfg.train, cfg.method, dev, args.seed,
                  pretrained_t1=_t1_provider(stream, ev.train_data(t1), ev.val_data(t1), cfg, args.seed, dev,
                                             Path(args.cache) / "t1", fitter))
    method = get_method(name)(setup)
    method.learn_task(ev.info(t1), ev.train_data(t1), ev.val_data(t1), fitter)
    return method, ev, cfg, fitter


def _sets(args: argparse.Namespace, extra: list[str]) -> dict[str, str]:
    sets = dict(s.split("=", 1) for s in [*args.set, *extra])
    return {**sets, "train.t1_epochs": str(args.t1_epochs), "train.epochs": str(args.epochs)}


def child(args: argparse.Namespace) -> dict:
    """Run one method in this process and return its measurements."""
    import torch

    torch.set_num_threads(args.threads)
    name, _, extra = args.child.partition("@")
    method, ev, _, fitter = after_t1(args, name, _sets(args, list(filter(None, extra.split(";")))),
                                       lambda msg: print(msg, file=sys.stderr, flush=True))
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # pay torch's one-time optimiser imports outside the timing
    n_logs = len(fitter.logs)
    task = ev.info(args.task)
    before = _rss_mib()
    t0 = time.perf_counter()
    with PeakRSS() as peak:
        method.learn_task(task, ev.train_data(task.name), ev.val_data(task.name), fitter)
    wall = time.perf_counter() - t0
    phases = [{"phase": log["phase"], "epochs": len(log["epochs"]),
               "s_per_epoch": sum(e["seconds"] for e in log["epochs"]) / max(len(log["epochs"]), 1),
               "steps": log["epochs"][0]["steps"] if log["epochs"] else 0}
              for log in fitter.logs[n_logs:]]
    return {"method": args.child, "task": task.name, "phases": phases, "task_wall_s": wall,
            "rss_before_mib": before, "peak_rss_task_mib": peak.peak,
            "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": torch.get_num_threads(), "device": str(method.device)}


class _FitReached(Exception):
    pass


def _stop_at_fit(*args, **kwargs) -> None:
    raise _FitReached


def interleaved(args: argparse.Namespace, names: list[str]) -> list[list[str]]:
    """Methods alternating optimiser steps on the same batches in one process (see the docstring)."""
    import numpy as np
    import torch

    from curb.training import batches

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sets = _sets(args, [])
    runs = []
    for name in names:
        print(f"[interleave] {name}: T1 stage ...", file=sys.stderr, flush=True)
        method, ev, cfg, _ = after_t1(args, name, sets, lambda msg: None)
        task = ev.info(args.task)
        try:  # the method's own learn_task sets up the task and its first phase, up to the fit
            method.learn_task(task, ev.train_data(task.name), ev.val_data(task.name), _stop_at_fit)
        except _FitReached:
            pass
        runs.append((name, method, task, method.make_optimizer(task)))
    data = ev.train_data(args.task)
    block = args.block
    n_blocks = max(1, args.interleave // block)
    todo = list(batches(data, cfg.train.batch, np.random.default_rng(args.seed), dev,
                        cfg.train.pairs_per_user))[: block * (n_blocks + 1)]
    blocks = [todo[k * block:(k + 1) * block] for k in range(n_blocks + 1)]  # block 0: warm-up
    medians: dict[str, list[float]] = {name: [] for name in names}  # per block
    for group in blocks:
        for name, method, task, opt in runs:
            ts = []
            for batch in group:
                t0 = time.perf_counter()
                with method.autocast():
                    loss = method.loss(task, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                method.before_step(task)
                opt.step()
                method.after_step(task)
                ts.append(time.perf_counter() - t0)
            medians[name].append(_median(ts))
    base = medians[args.baseline][1:]
    rows = []
    for name in names:
        ms = medians[name][1:]
        rows.append([name, f"{1000 * _median(ms):.1f}", f"{_median([t / b for t, b in zip(ms, base)]):.2f}",
                     f"{n_blocks} x {block}"])
    return rows


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2


def summarise(rounds: list[dict[str, dict]], baseline: str) -> list[dict]:
    """One row per method: its last round's measurements with per-phase medians over the rounds of
    s/epoch, of the ratio to the baseline's first phase in the same round, and (a variant
    `name@...`) of the ratio to the plain `name` in the same round."""
    out = []
    for label in rounds[0]:
        runs = [r[label] for r in rounds if "error" not in r[label]]
        if not runs:
            out.append(rounds[-1][label])
            continue
        row = dict(runs[-1], rounds=len(runs))
        phases = []
        for k, p in enumerate(row["phases"]):
            def ratios(ref: str) -> list[float]:
                return [r[label]["phases"][k]["s_per_epoch"] / r[ref]["phases"][0]["s_per_epoch"]
                        for r in rounds if "error" not in r[label] and ref in r and "error" not in r[ref]]
            base, plain = ratios(baseline), ratios(label.partition("@")[0]) if "@" in label else []
            phases.append({**p, "s_per_epoch": _median([r["phases"][k]["s_per_epoch"] for r in runs]),
                           "vs_baseline": _median(base) if base else None, "vs_plain": _median(plain) if plain else None})
        out.append({**row, "phases": phases})
    return out


def table(rows: list[dict], baseline: str) -> str:
    from tabulate import tabulate

    def ratio(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    out = []
    for r in rows:
        if "error" in r:
            out.append([r["method"], "-", "-", "-", "-", "-", "-", "-", "-", "-", r["error"]])
            continue
        for k, p in enumerate(r["phases"]):
            first = k == 0
            out.append([r["method"] if first else "", p["phase"], f"{p['s_per_epoch']:.1f}", ratio(p["vs_baseline"]),
                        ratio(p["vs_plain"]), p["steps"],
                        f"{r['task_wall_s']:.1f}" if first else "",
                        f"{r['rss_before_mib']:.0f}" if first else "",
                        f"{r['peak_rss_task_mib']:.0f}" if first else "",
                        f"{r['maxrss_mib']:.0f}" if first else "", ""])
    return tabulate(out, headers=["method", "phase", "s/epoch (train loop)", f"vs {baseline} (same round)",
                                  "vs plain method", "steps/epoch", "task wall s (incl. val)", "RSS before task (MiB)",
                                  "peak RSS during task (MiB)", "process maxrss (MiB)", "note"],
                    tablefmt="github", disable_numparse=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="sinmo,teracon,hat,conure,piggyback",
                   help="comma list of method names, each optionally NAME@KEY=VALUE;KEY=VALUE")
    p.add_argument("--baseline", default="sinmo", help="the method every ratio is taken to (run it too)")
    p.add_argument("--rounds", type=int, default=1, help="run the method list this many times, interleaved")
    p.add_argument("--dataset", default="ml")
    p.add_argument("--data-dir", type=Path, default=None, help="raw files (default: $CURB_DATA/<release>)")
    p.add_argument("--task", default="T2", help="the task whose epochs are timed")
    p.add_argument("--preset", default="paper")
    p.add_argument("--epochs", type=int, default=1, help="epochs per phase of the timed task")
    p.add_argument("--t1-epochs", type=int, default=1, help="epochs of any T1 stage before it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or os.cpu_count())
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "curb" / "bench"), help="T1 model cache")
    p.add_argument("--json", type=Path, default=None, help="also write the raw measurements here")
    p.add_argument("--interleave", type=int, default=0, metavar="STEPS",
                   help="instead: all methods in one process, taking turns on the same STEPS batches")
    p.add_argument("--block", type=int, default=10, help="with --interleave: consecutive steps per method and turn")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return 0
    methods = [x.strip() for x in args.methods.split(",") if x.strip()]
    if args.baseline not in methods:
        p.error(f"--baseline {args.baseline} must be one of --methods")
    if args.interleave:
        if args.block < 1 or args.interleave < args.block:
            p.error("--block must be >= 1 and at most --interleave")
        if any("@" in m for m in methods):
            p.error("--interleave takes plain method names (use --set for overrides)")
        from tabulate import tabulate

        print(tabulate(interleaved(args, methods), headers=["method", "median ms/step", f"median ratio to {args.baseline} (same batches)",
                                                         "blocks x steps"], tablefmt="github", disable_numparse=True))
        return 0
    rounds: list[dict[str, dict]] = []
    for k in range(args.rounds):
        rounds.append({})
        for m in methods:
            cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--child", m]
            print(f"[round {k + 1}/{args.rounds}: {m}] running ...", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
            lines = proc.stdout.strip().splitlines()
            rounds[-1][m] = json.loads(lines[-1]) if proc.returncode == 0 and lines else \
                {"method": m, "error": f"exit code {proc.returncode}"}
            rounds[-1][m]["method"] = m
    print(table(summarise(rounds, args.baseline), args.baseline))
    if args.json:
        args.json.write_text(json.dumps(rounds, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
