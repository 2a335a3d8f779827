"""The reference TERACON code against curb's TERACON, side by side on this machine: ML-1M T2,
paper preset, one thread (docs/performance.md, "The ≥ 40× figure against the reference code").

Machine speed drifts between sessions (the same curb epoch took 48 s one day and 55 s another),
so a speed-up over the reference is only meaningful when both are timed in the same session.
The reference code is not part of curb and is not copied into it: pass a checkout of the
authors' repository (`--reference DIR`, github.com/Sein-Kim/TERACON). The script

1. writes ML-1M's T1 sequences and T2 targets (curb's `ml` recipe) in the reference's file
   formats into a scratch folder (`--work`);
2. copies the reference into the scratch folder with three compatibility fixes, none in the
   T2 training loop that is timed: `.view([-1])` on a non-contiguous tensor, which torch 2.x
   refuses, becomes `.reshape([-1])` (same values; T1 script and T1 evaluation); the T1
   script's validation batch of 512 becomes 128 (ML-1M has about 300 validation users, and the
   reference's batcher drops an incomplete batch, so 512 would validate nobody and divide by
   zero); on a machine without CUDA a shim sends the reference's integer device ids to the CPU
   (`CPU_SHIM`). Then it trains the reference T1 model for one
   epoch with its own `train_task1.py` (its T2 script starts from a T1 checkpoint; one epoch is
   enough for timing, and curb's side also caps its T1 stage at one epoch);
3. per round: runs the reference `train_teracon.py` on T2 (batch 1,024, its defaults), reads
   the timestamps it prints every 10 batches, and stops it after `--batches` batches; then times
   one curb TERACON T2 epoch (`benchmarks/method_speed.py`'s child: default batching, one thread).

It prints the reference's seconds per 1,024-pair batch, its epoch extrapolated to the
batches of a full pass (the pairs of the reference's 80 % training part / 1,024), curb's epoch,
and their ratio per round. Run it on a quiet machine: every second the other work takes shows.

    OMP_NUM_THREADS=1 python benchmarks/reference_speed.py --reference ~/src/TERACON --rounds 2
    OMP_NUM_THREADS=1 python benchmarks/reference_speed.py --reference ~/src/TERACON --set train.precision=bf16
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The reference moves tensors with `.to(gpu_num)` (an int: a CUDA device); on a machine without
# CUDA this shim sends integer devices to the CPU, then runs the script as __main__.
CPU_SHIM = """import runpy, sys, torch
if not torch.cuda.is_available():
    _to = torch.Tensor.to
    def to(self, *args, **kwargs):
        if args and isinstance(args[0], int):
            args = ("cpu",) + args[1:]
        return _to(self, *args, **kwargs)
    torch.Tensor.to = to
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\]epoch: 0\t (\d+)/([\d.]+)")


def write_reference_files(work: Path, data_dir: Path | None) -> int:
    """ML-1M T1 and T2 in the reference's formats; returns the number of T2 pairs."""
    from curb.runner import CellSpec, build_stream

    stream = build_stream(CellSpec("pop", "ml"), data_dir)
    seqs = stream.sequences
    # T1: one comma-separated sequence per line (0 = padding), the last item included
    (work / "t1.csv").write_text("".join(",".join(map(str, row)) + "\n" for row in seqs))
    t2 = stream.tasks[1].targets
    lines = []
    for k, u in enumerate(t2.users):  # file writing, once per run: not a hot path
        labels = t2.labels[t2.ptr[k]:t2.ptr[k + 1]]
        lines.append(",".join(map(str, seqs[u])) + ",," + ",".join(map(str, labels)) + "\n")
    (work / "t2.csv").write_text("".join(lines))
    return int(t2.ptr[-1])


def run_logged(cmd: list[str], cwd: Path, log: Path, env: dict) -> None:
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log}")


def time_reference_batches(ref: Path, work: Path, batches: int, env: dict) -> dict:
    """Start the reference T2 training, read the batch counter it prints every 10 batches with a
    timestamp, stop it once `batches` batches are done. Seconds per batch are taken between the
    first and the last print (the first print comes after batch 0, so start-up is excluded)."""
    cmd = [sys.executable, "-u", "cpu_shim.py", "train_teracon.py", "--lr", "0.0001", "--smax", "50", "--batch", "1024",
           "--datapath", str(work / "t2.csv"), "--datapath_index", str(work / "index.csv"),
           "--paths", str(work / "task1.t7"), "--savepath", str(work / "task2"), "--n_tasks", "2",
           "--seed", "0", "--gpu_num", "0"]
    log = open(work / "reference-t2.log", "w")
    proc = subprocess.Popen(cmd, cwd=ref, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    marks: list[tuple[int, float]] = []
    batch_num = None
    try:
        for line in proc.stdout:
            log.write(line)
            m = STAMP.match(line)
            if m:
                t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
                marks.append((int(m.group(2)), t))
                batch_num = float(m.group(3))
                if marks[-1][0] >= batches:
                    break
    finally:
        proc.kill()
        proc.wait()
        log.close()
    if len(marks) < 2:
        raise SystemExit(f"the reference printed {len(marks)} batch counters; see {work / 'reference-t2.log'}")
    (b0, t0), (b1, t1) = marks[0], marks[-1]
    per_batch = (t1 - t0) / (b1 - b0)
    return {"batches_timed": b1 - b0, "s_per_batch": per_batch, "batch_num": batch_num,
            "epoch_s": per_batch * int(batch_num)}


def time_curb_epoch(data_dir: Path | None, cache: Path, sets: list[str], env: dict) -> float:
    cmd = [sys.executable, str(HERE / "method_speed.py"), "--methods", "teracon", "--baseline", "teracon",
           "--preset", "paper", "--threads", "1", "--cache", str(cache), "--child", "teracon",
           *(a for kv in sets for a in ("--set", kv))]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["phases"][0]["s_per_epoch"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", type=Path, required=True, help="a checkout of github.com/Sein-Kim/TERACON")
    p.add_argument("--data-dir", type=Path, default=None, help="ML-1M raw files (default: $CURB_DATA/ml-1m)")
    p.add_argument("--work", type=Path, default=Path.home() / ".cache" / "curb" / "reference-speed",
                   help="scratch folder for the reference's data files, T1 checkpoint and logs")
    p.add_argument("--batches", type=int, default=30, help="reference T2 batches timed per round (multiple of 10)")
    p.add_argument("--rounds", type=int, default=2, help="reference and curb timed this many times, interleaved")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for curb's side (repeatable), e.g. train.precision=bf16")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "curb" / "bench", help="curb's T1 cache")
    args = p.parse_args(argv)
    if not (args.reference / "train_teracon.py").exists():
        p.error(f"{args.reference} holds no train_teracon.py: pass a checkout of github.com/Sein-Kim/TERACON")
    if args.batches < 10 or args.batches % 10:
        p.error("--batches must be a positive multiple of 10 (the reference prints every 10 batches)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    ref = work / "reference"
    if not (work / "task1.t7").exists():
        shutil.rmtree(ref, ignore_errors=True)
        shutil.copytree(args.reference, ref, ignore=shutil.ignore_patterns(".git", "imgs", "__pycache__"))
        for name in ("train_task1.py", "utils.py"):
            f = ref / name
            f.write_text(f.read_text().replace(".view([-1])", ".reshape([-1])")
                         .replace("batch_size_test = 512", "batch_size_test = 128"))
        (ref / "cpu_shim.py").write_text(CPU_SHIM)
        pairs = write_reference_files(work, args.data_dir)
        print(f"wrote the reference's T1 and T2 files ({pairs:,} T2 pairs) to {work}", file=sys.stderr)
        print("training the reference T1 model for one epoch ...", file=sys.stderr, flush=True)
        run_logged([sys.executable, "cpu_shim.py", "train_task1.py", "--epochs", "1", "--lr", "0.001", "--seed", "0", "--gpu_num", "0",
                    "--datapath", str(work / "t1.csv"), "--datapath_index", str(work / "index.csv"),
                    "--savepath", str(work / "task1")], ref, work / "reference-t1.log", env)
    rows = []
    for k in range(args.rounds):
        print(f"[round {k + 1}/{args.rounds}] reference T2, {args.batches} batches ...", file=sys.stderr, flush=True)
        timed = time_reference_batches(ref, work, args.batches, env)
        print(f"[round {k + 1}/{args.rounds}] curb TERACON T2 epoch ...", file=sys.stderr, flush=True)
        curb_s = time_curb_epoch(args.data_dir, args.cache, args.set, env)
        rows.append([k + 1, f"{timed['s_per_batch']:.2f}", f"{int(timed['batch_num'])}", f"{timed['epoch_s']:.0f}",
                     f"{curb_s:.1f}", f"{timed['epoch_s'] / curb_s:.1f}"])
    from tabulate import tabulate

    print(tabulate(rows, headers=["round", "reference s/batch", "batches/epoch", "reference s/epoch (extrapolated)",
                                  "curb TERACON s/epoch" + (f" ({', '.join(args.set)})" if args.set else ""), "ratio"], tablefmt="github", disable_numparse=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
