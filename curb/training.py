"""The shared training loop: batching, one validation round, and model selection with patience.

Every method trains through `fit` (MTL's joint phase through `select`), so batching, the
selection criterion, early stopping and epoch checkpoints are identical for all of them; a
method only changes what a step does (its `loss`, `before_step`, `after_step`). The protocol
and the evidence for its defaults are in docs/protocol.md §4.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from .method import Batch, Method, TaskData, TaskInfo


def batches(data: TaskData, batch_size: int, rng: np.random.Generator, device: torch.device,
            pairs_per_user: int | None = None) -> Iterator[Batch]:
    """Shuffled mini-batches of one pass over the training data.

    next_item: `batch_size` sequences per step, input x[:, :-1], targets x[:, 1:].
    other tasks: every step holds exactly `batch_size` (user, target) pairs (the last step the
    remainder) and every pair appears once per pass. A user's pairs are shuffled and cut into
    chunks of at most `pairs_per_user` (None: all of them); the chunks are shuffled and the pair
    sequence is cut into steps. Each chunk is one encoded row, so a step encodes about
    `batch_size / pairs_per_user` sequences: 1 reproduces the reference's batches of uniformly
    drawn pairs, None encodes each user once per pass (docs/protocol.md §4.2 and §4.8).
    """
    if data.task.kind == "next_item":
        perm = rng.permutation(data.n_users)
        n_b = math.ceil(data.n_users / batch_size)
        seqs = torch.from_numpy(data.inputs[perm]).to(device)
        for b in range(n_b):
            s = seqs[b * batch_size : (b + 1) * batch_size]
            yield Batch(x=s[:, :-1], y=s[:, 1:], rows=None, index=b, n_batches=n_b)
        return
    order, chunk = pair_order(data.ptr, pairs_per_user, rng)
    owner = np.repeat(np.arange(data.n_users), np.diff(data.ptr))
    n_pairs = len(order)
    n_b = math.ceil(n_pairs / batch_size)
    for b in range(n_b):
        sel = slice(b * batch_size, (b + 1) * batch_size)
        pairs, c = order[sel], chunk[sel]
        new_row = np.r_[True, c[1:] != c[:-1]]  # a new encoded row wherever the chunk changes
        starts, rows = np.flatnonzero(new_row), np.cumsum(new_row) - 1
        yield Batch(
            x=torch.from_numpy(data.inputs[owner[pairs[starts]]]).to(device),
            y=torch.from_numpy(data.labels[pairs]).to(device),
            rows=torch.from_numpy(rows).to(device),
            index=b,
            n_batches=n_b,
        )


def pair_order(ptr: np.ndarray, pairs_per_user: int | None, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """(pair indices in training order, chunk id of each) for one pass: pairs of one chunk are
    contiguous, chunks hold at most `pairs_per_user` pairs of one user, chunk order is random."""
    counts = np.diff(ptr)
    owner = np.repeat(np.arange(len(counts)), counts)
    within = np.lexsort((rng.random(len(owner)), owner))  # users in order, each user's pairs shuffled
    rank = np.arange(len(owner)) - ptr[owner[within]]  # position of each pair inside its user
    k = pairs_per_user or max(int(counts.max(initial=1)), 1)
    new_chunk = np.r_[True, owner[within][1:] != owner[within][:-1]] | (rank % k == 0)
    chunk_id = np.cumsum(new_chunk) - 1
    chunk_pos = rng.permutation(int(chunk_id.max(initial=-1)) + 1)
    by_chunk = np.argsort(chunk_pos[chunk_id], kind="stable")
    return within[by_chunk], chunk_pos[chunk_id][by_chunk]


@dataclass
class EpochLog:
    """One validation round: `passes` passes over the training data, `steps` optimiser steps."""

    epoch: int
    loss: float
    val: float  # the task's own metric on validation (MRR@5 or accuracy)
    seconds: float
    steps: int
    val_loss: float | None = None  # validation cross-entropy (the default selection criterion)
    passes: int = 1
    # The process's CPU time for the round's training. With one thread per cell it is the work
    # itself, whatever else shares the cores, so speed comparisons between cells that ran under
    # different loads read it instead of `seconds` (None: written before curb recorded it).
    cpu_seconds: float | None = None


@dataclass
class FitLog:
    """Per-round history of one fitting phase; `best_epoch` is the restored one."""

    task: str
    phase: str
    epochs: list[EpochLog] = field(default_factory=list)
    best_epoch: int = -1
    best_val: float = float("-inf")  # the task metric at the selected round
    stopped_early: bool = False
    select: str = "metric"  # the criterion: "loss" (validation CE) or "metric"
    best_criterion: float = float("-inf")  # higher is better: -val_loss or the metric

    def as_dict(self) -> dict:
        return {
            "task": self.task, "phase": self.phase, "best_epoch": self.best_epoch,
            "best_val": self.best_val, "stopped_early": self.stopped_early, "select": self.select,
            "best_criterion": self.best_criterion, "epochs": [e.__dict__ for e in self.epochs],
        }

    @staticmethod
    def from_dict(d: dict) -> "FitLog":
        return FitLog(**{**d, "epochs": [EpochLog(**e) for e in d["epochs"]]})


Validate = Callable[[Method, TaskInfo, TaskData], dict[str, float]]
Checkpoint = Callable[[dict], None]


def _compiled_loss(method: Method) -> Callable:
    """One compiled loss per method instance (dynamic shapes: batches vary in users)."""
    if getattr(method, "_compiled_loss", None) is None:
        method._compiled_loss = torch.compile(method.loss, dynamic=True)
    return method._compiled_loss


def train_epoch(method: Method, task: TaskInfo, data: TaskData, opt: torch.optim.Optimizer,
                batch_size: int, on_step: Callable[[int, int], None] | None = None,
                pairs_per_user: int | None = None) -> tuple[float, int]:
    """One pass over `data`: (mean loss, optimiser steps)."""
    total, steps = 0.0, 0
    loss_fn = _compiled_loss(method) if method.setup.train.compile else method.loss
    for batch in batches(data, batch_size, method.rng, method.device, pairs_per_user):
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


@dataclass
class Selection:
    """How a phase picks its round: criterion, budget in rounds, patience, and the minimum
    number of optimiser steps in one round (small tasks make several passes per round, so
    their patience is not spent after a handful of steps)."""

    select: str = "loss"
    max_rounds: int = 100
    patience: int = 5
    round_steps: int = 0


def select(method: Method, opt: torch.optim.Optimizer, log: FitLog, one_pass: Callable[[], tuple[float, int]],
           validate: Callable[[], dict[str, float]], sel: Selection, *,
           checkpoint: Checkpoint | None = None, resume: dict | None = None,
           progress: Callable[[str], None] | None = None) -> FitLog:
    """Train round after round until the criterion stops improving (strictly) for `patience`
    rounds or the budget ends; restore the best round's state.

    `validate()` returns the task metric as "val" and, for `select="loss"`, the validation
    cross-entropy as "loss". After every round that does not end the phase, `checkpoint` gets
    everything needed to continue (method and optimiser state, the best snapshot, the log);
    `resume` is such a dict from an interrupted run, and training continues after its round.
    """
    log.select = sel.select
    best, bad, start = None, 0, 0
    if resume is not None:
        method.load_state_dict(resume["method"])
        method.load_phase_state(resume["phase_state"])
        opt.load_state_dict(resume["opt"])
        best, bad = resume["best"], resume["bad"]
        log = FitLog.from_dict(resume["log"])
        start = len(log.epochs)
    for epoch in range(start, sel.max_rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        loss_sum, steps, passes = 0.0, 0, 0
        while passes == 0 or steps < sel.round_steps:
            loss, n = one_pass()
            loss_sum, steps, passes = loss_sum + loss * n, steps + n, passes + 1
            if n == 0:
                break  # nothing trainable in a pass (every step non-finite): do not spin
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        val = validate()
        crit = -val["loss"] if sel.select == "loss" else val["val"]
        log.epochs.append(EpochLog(epoch, loss_sum / max(steps, 1), val["val"], secs, steps,
                                   val.get("loss"), passes, cpu))
        if progress is not None:
            shown = f" val loss {val['loss']:.4f}" if "loss" in val else ""
            progress(f"{log.task} {log.phase} round {epoch + 1}: loss {loss_sum / max(steps, 1):.4f} "
                     f"val {val['val']:.4f}{shown} ({passes} pass{'es' if passes > 1 else ''}, {secs:.1f}s)")
        if crit > log.best_criterion:
            log.best_criterion, log.best_val, log.best_epoch, bad = crit, val["val"], epoch, 0
            best = method.snapshot()
        else:
            bad += 1
            if bad >= sel.patience:
                log.stopped_early = True
                break
        if checkpoint is not None:
            checkpoint({"method": method.state_dict(), "phase_state": method.phase_state(),
                        "opt": opt.state_dict(), "best": best, "bad": bad, "log": log.as_dict()})
    if best is not None:
        method.restore(best)
    return log


def fit(method: Method, task: TaskInfo, train: TaskData, val: TaskData, validate: Validate,
        *, sel: Selection, batch_size: int, pairs_per_user: int | None = None, phase: str = "train",
        progress: Callable[[str], None] | None = None, on_step: Callable[[int, int], None] | None = None,
        checkpoint: Checkpoint | None = None, resume: dict | None = None) -> FitLog:
    """One phase of one task: Adam (the method's `make_optimizer`), the shared batches and
    `select`'s model selection on the task's validation part."""
    opt = method.make_optimizer(task)

    def one_pass() -> tuple[float, int]:
        return train_epoch(method, task, train, opt, batch_size, on_step, pairs_per_user)

    def scores() -> dict[str, float]:
        v = validate(method, task, val)
        return {"val": v[task.metric], **({"loss": v["loss"]} if "loss" in v else {})}

    return select(method, opt, FitLog(task.name, phase), one_pass, scores, sel,
                  checkpoint=checkpoint, resume=resume, progress=progress)
