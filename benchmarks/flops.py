"""Achieved FLOP rate of curb's training step next to this machine's own dense-matmul rate.

Absolute seconds drift on shared machines; the ratio measured in the same run does not (much).
Matmul FLOPs are counted analytically (everything else — LayerNorm, ReLU, softmax, Adam — is
real work the step does but is not counted, so the ratio is a lower bound):

  conv (per step, forward + backward = 3 x forward):  6 * R * (k*f) * f  per conv, 2*blocks convs
  head:                                                6 * H * f * C
  R = rows through the convs (sequences x positions), H = rows through the head, C = labels.

  T1 step: R = H = B * (L-1), C = |V|          (head at every position)
  T2 step: R = U * L, H = U, C = |Y_T2|        (U users per step; each encoded once for all
                                                its targets; the loss over P pairs adds no matmul)

Usage:  python benchmarks/flops.py [--dataset ml --data-dir DIR] [--preset paper] [--steps 20] [--threads N]
                                  [--device cuda --precision bf16]
On a GPU the matmul reference runs in the step's compute dtype (bf16 under --precision bf16), so
the ratio compares like with like.
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
from curb.method import Setup, TrainConfig
from curb.methods.sinmo import SinMo
from curb.runner import CellSpec, build_stream
from curb.training import batches


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock times measure it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(m: int, k: int, n: int, device: torch.device, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """Best sustained GFLOP/s of an [m,k]@[k,n] matmul in `dtype` on `device`."""
    a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(5):
            a @ b
        sync(device)
        best = max(best, 5 * 2 * m * k * n / (time.perf_counter() - t0) / 1e9)
    return best


def step_rate(method: SinMo, task, data, batch_size: int, steps: int, flops_of) -> tuple[float, float]:
    """(GFLOP/s, seconds per step) of real training steps: forward, backward, Adam."""
    opt = method.make_optimizer(task)
    it = batches(data, batch_size, np.random.default_rng(0), method.device)
    done, flops, t_total = 0, 0.0, 0.0
    for k, batch in enumerate(it):
        sync(method.device)
        t0 = time.perf_counter()
        with method.autocast():  # as the shared training loop does
            loss = method.loss(task, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync(method.device)
        dt = time.perf_counter() - t0
        if k >= 2:  # warm-up steps are not counted
            flops += flops_of(batch)
            t_total += dt
            done += 1
        if done >= steps:
            break
    return flops / t_total / 1e9, t_total / max(done, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ml")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--preset", default="paper", choices=list(PRESETS))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default: all cores)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast, bf16 matmul reference")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32

    stream = build_stream(CellSpec("sinmo", args.dataset), args.data_dir)
    cfg = PRESETS[args.preset].backbone
    train = TrainConfig(precision=args.precision)
    ev = Evaluator(stream)
    f, k, n_convs = cfg.channels, cfg.kernel, cfg.n_convs
    L = stream.sequences.shape[1]
    torch.manual_seed(0)
    m = SinMo(Setup(stream.n_items, L, cfg, train, SinMo.Config(), device, 0))
    rows = []
    peak = matmul_rate(train.t1_batch * (L - 1), k * f, f, device, dtype)
    big = matmul_rate(2048, 2048, 2048, device, dtype)
    for name in stream.task_names[:2]:
        info = ev.info(name)
        m.tasks.append(info)
        m.begin_task(info)
        t1 = info.kind == "next_item"

        def flops_of(b, t1=t1, C=info.n_labels):
            r = b.x.shape[0] * b.x.shape[1]
            h = r if t1 else b.x.shape[0]
            return 6 * r * k * f * f * n_convs + 6 * h * f * C

        rate, sec = step_rate(m, info, ev.train_data(name), train.t1_batch if t1 else train.batch, args.steps, flops_of)
        rows.append([f"{name} train step", f"{sec * 1e3:.1f}", f"{rate:.1f}", f"{rate / peak:.0%}", f"{rate / big:.0%}"])
    print(f"dataset {args.dataset}, preset {args.preset} ({f} channels, {len(cfg.dilations)} blocks), "
          f"torch {torch.__version__}, {device}, {args.precision}, {torch.get_num_threads()} threads")
    print(f"dense matmul: conv-shaped [{train.t1_batch * (L - 1)}x{k * f}]@[{k * f}x{f}] {peak:.1f} GFLOP/s, "
          f"square 2048^3 {big:.1f} GFLOP/s")
    print("FLOPs per step = 6*R*k*f^2*(2*blocks) + 6*H*f*C (matmuls only; forward+backward)")
    print(tabulate(rows, headers=["what", "ms/step", "GFLOP/s", "vs conv-shaped matmul", "vs square matmul"],
                   tablefmt="github"))


if __name__ == "__main__":
    main()
