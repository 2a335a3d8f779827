"""FineTune: one shared NextItNet with one head per task, fine-tuned task after task.

Nothing protects old tasks: every later task trains the whole backbone, so this is the
forgetting lower bound of sequential learning. T1 is the shared pre-trained plain model (as for
SinMo, FineAll, PeterRec and Piggyback), so its R(T1, T1) equals theirs.

It is also the base of the generic continual-learning baselines that add one mechanism to it:
EWC (a Fisher-weighted penalty), LwF (distillation of the old heads) and Replay (a user buffer).
They hook `consolidate` (what to keep from a task's training data once it is learned) and `loss`.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from curb.backbone import PlainModel
from curb.method import Method, OneModelViews, Setup, TaskData, TaskInfo, register
from curb.streams import Targets


def take_users(data: TaskData, rows: np.ndarray) -> TaskData:
    """The users at positions `rows` of `data` (in that order), with all their labels."""
    tg = Targets(np.arange(data.n_users), data.ptr, data.labels).take(rows)
    return TaskData(data.task, data.inputs[rows], tg.ptr, tg.labels)


@register("finetune")
class FineTune(OneModelViews, Method):
    summary = "one shared model fine-tuned task after task, nothing protects old tasks (forgetting lower bound)"
    grows_items = True

    def __init__(self, setup: Setup):
        super().__init__(setup)
        self.model: PlainModel | None = None  # the shared pre-trained T1 model once T1 arrives

    # ------------------------------------------------------------------ lifecycle
    def learn_task(self, task: TaskInfo, train: TaskData, val: TaskData, fit) -> None:
        if not self.tasks and self.setup.pretrained_t1 is not None:  # T1: the shared pre-trained model as is
            self.tasks.append(task)
            self.model = self.setup.pretrained_t1()
        else:
            super().learn_task(task, train, val, fit)
        self.consolidate(task, train)

    def consolidate(self, task: TaskInfo, train: TaskData) -> None:
        """After `task` is learned (T1: loaded): keep what later tasks need from its training data
        (EWC: the Fisher information; Replay: a user buffer). Nothing here."""

    def begin_task(self, task: TaskInfo) -> None:
        if self.model is None:  # no shared pre-trained model offered: T1 is trained here, plainly
            self.model = PlainModel(self.n_items, self.setup.backbone).to(self.device)
        self.model.add_head(task.name, task.n_labels)

    def grow_items(self, n_new: int) -> None:
        if self.model is not None:
            self.model.backbone.grow_items(n_new)

    def trainable_parameters(self, task: TaskInfo):
        # Backbone and every head: old heads receive gradient only from a method's own loss terms
        # (LwF's distillation, Replay's buffer); Adam skips parameters without a gradient.
        return self.model.parameters()

    # ------------------------------------------------------------------ state (logits: OneModelViews)
    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model} if self.model is not None else {}

    def load_extra_state(self, state: dict) -> None:
        if self.model is None:  # the module skeleton the checkpoint fills
            self.model = PlainModel(self.n_items, self.setup.backbone).to(self.device)
        for t in self.tasks:
            if t.name not in self.model.heads:
                self.model.add_head(t.name, t.n_labels)
