"""The shared training loop: batching, one epoch, and model selection with patience (docs/protocol.md §4.4).

Every method trains through `fit`, so early stopping and validation are identical for all of
them; a method only changes what a step does (its `loss`, `before_step`, `after_step`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from .method import Batch, Method, TaskData, TaskInfo


def batches(data: TaskData, batch_size: int, rng: np.random.Generator, device: torch.device) -> Iterator[Batch]:
    """Shuffled mini-batches of one epoch.

    next_item: `batch_size` sequences per step, input x[:, :-1], targets x[:, 1:].
    other tasks: users are shuffled and cut so that each batch holds about `batch_size`
    (user, target) pairs; a user's sequence is encoded once for all its targets.
    """
    perm = rng.permutation(data.n_users)
    if data.task.kind == "next_item":
        n_b = math.ceil(data.n_users / batch_size)
        seqs = torch.from_numpy(data.inputs[perm]).to(device)
        for b in range(n_b):
            s = seqs[b * batch_size : (b + 1) * batch_size]
            yield Batch(x=s[:, :-1], y=s[:, 1:], rows=None, index=b, n_batches=n_b)
        return
    counts = np.diff(data.ptr)[perm]
    ends = np.cumsum(counts)
    bid = (ends - 1) // batch_size  # batch of each shuffled user, by running pair count
    cuts = np.flatnonzero(np.diff(bid)) + 1
    groups = np.split(np.arange(len(perm)), cuts)
    n_b = len(groups)
    for b, g in enumerate(groups):
        users = perm[g]
        c = np.diff(data.ptr)[users]
        starts = data.ptr[users]
        offs = np.repeat(starts - np.concatenate([[0], np.cumsum(c)[:-1]]), c) + np.arange(c.sum())
        yield Batch(
            x=torch.from_numpy(data.inputs[users]).to(device),
            y=torch.from_numpy(data.labels[offs]).to(device),
            rows=torch.from_numpy(np.repeat(np.arange(len(users)), c)).to(device),
            index=b,
            n_batches=n_b,
        )


@dataclass
class EpochLog:
    epoch: int
    loss: float
    val: float
    seconds: float
    steps: int


@dataclass
class FitLog:
    """Per-epoch history of one fitting phase; `best_epoch` is the restored one."""

    task: str
    phase: str
    epochs: list[EpochLog] = field(default_factory=list)
    best_epoch: int = -1
    best_val: float = float("-inf")
    stopped_early: bool = False

    def as_dict(self) -> dict:
        return {
            "task": self.task, "phase": self.phase, "best_epoch": self.best_epoch,
            "best_val": self.best_val, "stopped_early": self.stopped_early,
            "epochs": [e.__dict__ for e in self.epochs],
        }


Validate = Callable[[Method, TaskInfo, TaskData], dict[str, float]]


def _compiled_loss(method: Method) -> Callable:
    """One compiled loss per method instance (dynamic shapes: batches vary in users)."""
    if getattr(method, "_compiled_loss", None) is None:
        method._compiled_loss = torch.compile(method.loss, dynamic=True)
    return method._compiled_loss


def train_epoch(method: Method, task: TaskInfo, data: TaskData, opt: torch.optim.Optimizer,
                batch_size: int, on_step: Callable[[int, int], None] | None = None) -> tuple[float, int]:
    total, steps = 0.0, 0
    loss_fn = _compiled_loss(method) if method.setup.train.compile else method.loss
    for batch in batches(data, batch_size, method.rng, method.device):
        with method.autocast():
            loss = loss_fn(task, batch)
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            continue  # a non-finite step is skipped, as the reference does, and not counted
        loss.backward()
        method.before_step(task)
        opt.step()
        method.after_step(task)
        total += loss.item()
        steps += 1
        if on_step is not None:
            on_step(batch.index + 1, batch.n_batches)
    return total / max(steps, 1), steps


def fit(method: Method, task: TaskInfo, train: TaskData, val: TaskData, validate: Validate,
        *, max_epochs: int, patience: int, batch_size: int, phase: str = "train",
        progress: Callable[[str], None] | None = None,
        on_step: Callable[[int, int], None] | None = None) -> FitLog:
    """Train until validation stops improving (strictly) for `patience` epochs; restore the best.

    The selection criterion is the task's own metric on validation (MRR@5 or accuracy).
    """
    log = FitLog(task.name, phase)
    opt = method.make_optimizer(task)
    best_state, bad = None, 0
    for epoch in range(max_epochs):
        t0 = time.perf_counter()
        loss, steps = train_epoch(method, task, train, opt, batch_size, on_step)
        secs = time.perf_counter() - t0
        score = validate(method, task, val)[task.metric]
        log.epochs.append(EpochLog(epoch, loss, score, secs, steps))
        if progress is not None:
            progress(f"{task.name} {phase} epoch {epoch + 1}: loss {loss:.4f} val {task.metric} {score:.4f} ({secs:.1f}s)")
        if score > log.best_val:
            log.best_val, log.best_epoch, bad = score, epoch, 0
            best_state = method.snapshot()
        else:
            bad += 1
            if bad >= patience:
                log.stopped_early = True
                break
    if best_state is not None:
        method.restore(best_state)
    return log
