"""Replay: experience replay with a fixed per-task user buffer, DER++-style (Buzzega et al., NeurIPS 2020).

One shared NextItNet and one head per task (`FineTune`). Once a task is learned (T1: once the
shared pre-trained model is loaded), `users` of its TRAINING users are drawn with the method's
seeded generator and stored: their sequences, their labels and the logits the model gives them
at that moment (DER's "dark knowledge"). The buffer of a task never changes afterwards. Every step
of a later task draws, for every old task o, two independent sets of `batch_users` buffer users:

    L = CE(new task) + mean_o [ α · MSE(z_o(x1), stored logits of x1) + β · CE_o(x2, stored labels of x2) ]

where z_o is the current model's head o. A next-item task stores the logits of its last position
(the scored prediction; every position would cost n−1 times the memory) and replays its labels
at every position (its training objective).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from curb.method import Batch, Knob, TaskData, TaskInfo, inputs_for, register
from curb.training import batches

from .finetune import FineTune, take_users

ONE_BATCH = 1 << 62  # a batch size no buffer reaches: `batches` yields all given users at once


@dataclass
class TaskBuffer:
    """The stored users of one task: their training data, where they sit in it, and their logits
    at storing time."""

    data: TaskData
    rows: np.ndarray  # positions of the stored users in the task's training data
    logits: Tensor  # [users, labels], the model's scores of `data` right after the task


@register("replay")
class Replay(FineTune):
    summary = "experience replay (DER++): a fixed seeded buffer of training users per task replays labels and logits"
    benchmark = True  # one of the `--methods all` set
    tune_space = {"replay.alpha": Knob("uniform", 0.1, 1.0), "replay.beta": Knob("uniform", 0.1, 1.0)}

    @dataclass
    class Config:
        users: int = 100  # users stored per task (all its training users when it has fewer)
        batch_users: int = 32  # buffer users per old task and step, drawn twice (logits, labels)
        alpha: float = 0.5  # weight of the MSE on stored logits (DER++'s α)
        beta: float = 0.5  # weight of the CE on stored labels (DER++'s β)

        def __post_init__(self) -> None:
            if self.users < 1 or self.batch_users < 1 or not self.alpha >= 0 or not self.beta >= 0:
                raise ValueError(f"need users >= 1, batch_users >= 1, alpha >= 0, beta >= 0; got {self}")

    def __init__(self, setup):
        super().__init__(setup)
        self.buffers: dict[str, TaskBuffer] = {}

    # ------------------------------------------------------------------ the buffer
    def consolidate(self, task: TaskInfo, train: TaskData) -> None:
        """Store `users` training users of the task just learned, with their current logits."""
        n = min(self.cfg.users, train.n_users)
        rows = np.sort(self.rng.choice(train.n_users, n, replace=False))
        data = take_users(train, rows)
        x = torch.from_numpy(inputs_for(task.kind, data.inputs)).to(self.device)
        self.buffers[task.name] = TaskBuffer(data, rows, self.score(task.name, x).float())

    def replay(self, task: TaskInfo) -> Tensor:
        """α·MSE on stored logits + β·CE on stored labels of one old task, each on its own draw."""
        buf = self.buffers[task.name]
        n = min(self.cfg.batch_users, buf.data.n_users)
        loss = buf.logits.new_zeros(())
        if self.cfg.alpha:
            idx = self.rng.choice(buf.data.n_users, n, replace=False)
            x = torch.from_numpy(inputs_for(task.kind, buf.data.inputs[idx])).to(self.device)
            loss = loss + self.cfg.alpha * F.mse_loss(self.forward_logits(task.name, x, train=True),
                                                      buf.logits[torch.from_numpy(idx).to(self.device)])
        if self.cfg.beta:
            batch = next(batches(take_users(buf.data, self.rng.choice(buf.data.n_users, n, replace=False)),
                                 ONE_BATCH, self.rng, self.device))
            h = self.represent(task.name, batch.x, train=True, all_positions=batch.rows is None)
            loss = loss + self.cfg.beta * self.head_loss(task, h, batch)  # T1's: sampled if train.t1_negatives
        return loss

    def loss(self, task: TaskInfo, batch: Batch) -> Tensor:
        loss = super().loss(task, batch)
        old = [t for t in self.tasks if t.name != task.name and t.name in self.buffers]
        if not old or not (self.cfg.alpha or self.cfg.beta):
            return loss
        return loss + torch.stack([self.replay(t) for t in old]).mean()

    # ------------------------------------------------------------------ state
    def extra_state(self) -> dict:
        return {k: {"inputs": b.data.inputs, "ptr": b.data.ptr, "labels": b.data.labels, "rows": b.rows,
                    "logits": b.logits.cpu()} for k, b in self.buffers.items()}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        info = {t.name: t for t in self.tasks}
        self.buffers = {k: TaskBuffer(TaskData(info[k], b["inputs"], b["ptr"], b["labels"]), b["rows"],
                                      b["logits"].to(self.device)) for k, b in state.items()}

    def report(self) -> dict:
        return {"buffer_users": {k: b.data.n_users for k, b in self.buffers.items()}}
