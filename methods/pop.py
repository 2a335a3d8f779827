"""`pop`: the trivial baseline every table carries (docs/protocol.md §6.9).

Scores every label by its frequency among the task's training targets, the same for every
user: item popularity for next-item and recommendation tasks, the majority class for
classification. Ties rank tie-aware, so equally frequent labels share their rank.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from curb.method import Method, Setup, TaskData, TaskInfo, register


@register("pop")
class Pop(Method):
    summary = "popularity / majority-class baseline from training-label counts (no learning)"
    benchmark = True  # one of the `--methods all` set
    grows_items = True  # it has no item table: new items change nothing
    trains = False

    def __init__(self, setup: Setup):
        super().__init__(setup)
        self.counts: dict[str, Tensor] = {}

    def learn_task(self, task: TaskInfo, train: TaskData, val: TaskData, fit) -> None:
        self.tasks.append(task)
        if task.kind == "next_item":  # every next-item target of the training sequences
            labels = train.inputs[:, 1:].ravel()
            labels = labels[labels != 0]
        else:
            labels = train.labels
        counts = np.bincount(labels, minlength=task.n_labels).astype(np.float32)
        self.counts[task.name] = torch.from_numpy(counts).to(self.device)

    def grow_items(self, n_new: int) -> None:
        pass

    def forward_logits(self, task: str, x: Tensor, *, train: bool, all_positions: bool = False, batch=None) -> Tensor:
        return self.counts[task].expand(x.shape[0], -1)

    def modules(self) -> dict[str, nn.Module]:
        return {}

    def extra_state(self) -> dict:
        return {"counts": {k: v.cpu() for k, v in self.counts.items()}}

    def load_extra_state(self, state: dict) -> None:
        self.counts = {k: v.to(self.device) for k, v in state["counts"].items()}
