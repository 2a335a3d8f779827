"""LwF (Li & Hoiem, ECCV 2016 / TPAMI 2017): learning without forgetting, on the shared backbone.

One shared NextItNet and one head per task (`FineTune`). Before a later task is learned, the
model is snapshotted and frozen. The snapshot's old heads, run on the NEW task's inputs, give
soft targets; while the new task is learned the loss is

    L = CE(new task) + λ · Σ_o  −Σ_c softmax(z̃_o / T)_c · log softmax(z_o / T)_c     (mean over users)

for every old task o, z̃_o the snapshot's logits and z_o the current model's. The backbone, the
new head and the old heads all train (the paper's joint step). As in the paper, the new head is
first trained alone for a warm-up phase (backbone and old heads frozen); `lwf.warmup=false`
skips it. A next-item head reads a sequence without its last item (how it is scored); other
heads read the whole sequence.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from curb.backbone import PlainModel
from curb.method import Batch, Knob, TaskData, TaskInfo, full_sequences, inputs_for, register

from .finetune import FineTune


def soft_cross_entropy(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """−Σ_c softmax(teacher/T)_c · log softmax(student/T)_c, averaged over rows (LwF's L_old)."""
    target = F.softmax(teacher / temperature, dim=-1)
    return -(target * F.log_softmax(student / temperature, dim=-1)).sum(-1).mean()


@register("lwf")
class LwF(FineTune):
    summary = "learning without forgetting: old heads' softened outputs on each new task's inputs are distilled"
    benchmark = True  # one of the `--methods all` set
    tune_space = {"lwf.lam": Knob("log", 0.1, 10.0), "lwf.temperature": Knob("uniform", 1.0, 4.0)}

    @dataclass
    class Config:
        lam: float = 1.0  # λ_o of the distillation term (the paper's 1)
        temperature: float = 2.0  # T of the softened outputs (the paper's 2)
        warmup: bool = True  # train the new head alone first, as the paper does

        def __post_init__(self) -> None:
            if not self.lam >= 0 or not self.temperature > 0:
                raise ValueError(f"need lam >= 0 and temperature > 0; got {self}")

    def __init__(self, setup):
        super().__init__(setup)
        self.old: PlainModel | None = None  # frozen snapshot taken before the current task
        self.phase: str | None = None  # "warmup" | "train" while a later task is learned

    # ------------------------------------------------------------------ lifecycle
    def learn_task(self, task: TaskInfo, train: TaskData, val: TaskData, fit) -> None:
        if not self.tasks:  # T1: the shared pre-trained model (FineTune)
            super().learn_task(task, train, val, fit)
            return
        self.tasks.append(task)
        self.begin_task(task)
        for phase in ("warmup", "train") if self.cfg.warmup else ("train",):
            self.phase = phase
            self._set_trainable()
            fit(self, task, train, val, phase=phase)
        self.end_task(task)

    def begin_task(self, task: TaskInfo) -> None:
        if self.model is not None:
            self.old = copy.deepcopy(self.model).requires_grad_(False)
        super().begin_task(task)

    def end_task(self, task: TaskInfo) -> None:
        self.old, self.phase = None, None
        self._set_trainable()

    def _set_trainable(self) -> None:
        """Warm-up: only the newest head has gradients (no wasted backward through the backbone)."""
        self.model.requires_grad_(self.phase != "warmup")
        self.model.heads[self.tasks[-1].name].requires_grad_(True)

    def trainable_parameters(self, task: TaskInfo):
        return [p for p in self.model.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ loss
    def loss(self, task: TaskInfo, batch: Batch) -> Tensor:
        ce = super().loss(task, batch)
        if self.old is None or self.phase != "train" or not self.cfg.lam:
            return ce
        return ce + self.cfg.lam * self.distillation(batch)

    def distillation(self, batch: Batch) -> Tensor:
        """Σ over old tasks of the soft cross-entropy between the snapshot's and the current model's
        outputs of that task's head on this batch's users (one backbone pass per input kind)."""
        full = full_sequences(batch)
        student_h: dict[bool, Tensor] = {}
        teacher_h: dict[bool, Tensor] = {}
        total = full.new_zeros((), dtype=torch.float32)
        for old in self.tasks[:-1]:
            key = old.kind == "next_item"
            if key not in student_h:
                x = inputs_for(old.kind, full)
                student_h[key] = self.model.backbone.read(x)
                with torch.no_grad():
                    teacher_h[key] = self.old.backbone.read(x)
            with torch.no_grad():
                target = self.old.heads[old.name](teacher_h[key])
            total = total + soft_cross_entropy(self.model.heads[old.name](student_h[key]), target,
                                               self.cfg.temperature)
        return total

    # ------------------------------------------------------------------ state
    def extra_state(self) -> dict:
        return {"phase": self.phase}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        self.phase = state["phase"]
        if self.tasks:
            self._set_trainable()
