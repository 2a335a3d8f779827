"""PeterRec (docs/protocol.md §6.3): model patches on the frozen pre-trained NextItNet.

T1 is the shared pre-trained plain model, frozen for good. Each later task gets its own
patches (one per conv), its own copy of every block's second LayerNorm (initialised from the
pre-trained one) and its own head; nothing shared ever changes, so old tasks cannot forget.

    serial (default, [PR] `PeterRec_cau_serial`): z <- z + W_up GELU(W_down z)  after each conv,
                                                  before its LayerNorm
    parallel ([T]'s port):                        z <- z + W_up LeakyReLU(W_down x), x = conv input
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from curb.backbone import Hooks, OwnedItemRows, PlainModel, make_head
from curb.method import Batch, Knob, Method, Setup, TaskInfo, register


class Patch(nn.Module):
    """A position-wise bottleneck f -> f/4 -> f (1x1 convs), trunc-normal(0.02) weights, zero bias."""

    def __init__(self, channels: int, parallel: bool):
        super().__init__()
        hidden = max(1, channels // 4)
        self.down, self.up = nn.Linear(channels, hidden), nn.Linear(hidden, channels)
        for lin in (self.down, self.up):
            nn.init.trunc_normal_(lin.weight, std=0.02, a=-0.04, b=0.04)
            nn.init.zeros_(lin.bias)
        self.parallel = parallel

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        if self.parallel:
            return z + self.up(F.leaky_relu(self.down(x)))
        return z + self.up(F.gelu(self.down(z)))


class TaskPatch(nn.Module):
    """Everything one task owns: a patch per conv, a LayerNorm-2 copy per block, the head."""

    def __init__(self, base: PlainModel, n_labels: int, parallel: bool):
        super().__init__()
        f = base.backbone.cfg.channels
        self.patches = nn.ModuleList(Patch(f, parallel) for _ in base.backbone.convs())
        self.ln2 = nn.ModuleList(copy.deepcopy(b.ln2).requires_grad_(True) for b in base.backbone.blocks)
        self.head = make_head(f, n_labels)

    def hooks(self) -> Hooks:
        return Hooks(patch=lambda i, z, x: self.patches[i](z, x), norms=[(None, ln) for ln in self.ln2])


@register("peterrec")
class PeterRec(Method):
    summary = "frozen pre-trained backbone + per-task model patches, LayerNorm-2 and head (SIGIR 2020)"
    benchmark = True  # one of the `--methods all` set
    grows_items = True  # the rows of new items belong to the task that brings them
    tune_space = {"peterrec.insertion": Knob("choice", choices=("serial", "parallel"))}

    @dataclass
    class Config:
        insertion: Literal["serial", "parallel"] = "serial"
        loss: Literal["ce", "bce_neg1"] = "ce"  # full-softmax CE (curb) or [PR]'s BCE, 1 positive + 1 negative

    def __init__(self, setup: Setup):
        super().__init__(setup)
        self.base: PlainModel | None = None  # the frozen pre-trained T1 model
        self.adapters = nn.ModuleDict()
        self.new_rows = OwnedItemRows()

    def learn_task(self, task: TaskInfo, train, val, fit) -> None:
        if task.kind == "next_item" and self.setup.pretrained_t1 is not None:
            self.tasks.append(task)
            self.base = self.setup.pretrained_t1().requires_grad_(False)
            return
        super().learn_task(task, train, val, fit)

    def begin_task(self, task: TaskInfo) -> None:
        if self.base is None:  # no shared pre-trained model offered: train T1 here, plainly
            self.base = PlainModel(self.setup.n_items, self.setup.backbone).to(self.device)
            self.base.add_head(task.name, task.n_labels)
            return
        self.adapters[task.name] = self._new_patch(task)
        self.base.backbone.item_emb.requires_grad_(self.new_rows.owned)

    def _new_patch(self, task: TaskInfo) -> TaskPatch:
        return TaskPatch(self.base, task.n_labels, self.cfg.insertion == "parallel").to(self.device)

    def end_task(self, task: TaskInfo) -> None:
        self.base.requires_grad_(False)  # the shared model never changes after T1 (new items' rows: after their task)
        self.new_rows.release()

    def grow_items(self, n_new: int) -> None:
        if self.base is not None:
            self.new_rows.grow(self.base.backbone, n_new)

    def trainable_parameters(self, task: TaskInfo):
        if task.name not in self.adapters:
            return self.base.parameters()
        rows = [self.base.backbone.item_emb.weight] if self.new_rows.owned else []
        return [*self.adapters[task.name].parameters(), *rows]

    def before_step(self, task: TaskInfo) -> None:
        self.new_rows.mask_grad(self.base.backbone)

    def head(self, task: str) -> nn.Linear:
        return self.adapters[task].head if task in self.adapters else self.base.heads[task]

    def represent(self, task: str, x: Tensor, *, train: bool = False, all_positions: bool = False,
                  batch: Batch | None = None) -> Tensor:
        hooks = self.adapters[task].hooks() if task in self.adapters else Hooks()  # T1: the plain base model
        return self.base.backbone.read(x, hooks, all_positions)

    def loss(self, task: TaskInfo, batch: Batch) -> Tensor:
        if self.cfg.loss == "ce" or batch.rows is None:
            return super().loss(task, batch)
        logits = self.forward_logits(task.name, batch.x, train=True, batch=batch)
        # One uniformly drawn wrong label per (user, target) pair.
        shift = torch.from_numpy(self.rng.integers(1, task.n_labels, size=len(batch.y))).to(batch.y.device)
        pos = logits[batch.rows, batch.y]
        neg = logits[batch.rows, (batch.y + shift) % task.n_labels]
        return (F.softplus(-pos) + F.softplus(neg)).mean()

    def modules(self) -> dict[str, nn.Module]:
        return {"base": self.base, "adapters": self.adapters} if self.base is not None else {}

    def extra_state(self) -> dict:
        return {"new_rows_start": self.new_rows.start}

    def load_extra_state(self, state: dict) -> None:
        self.new_rows.start = state.get("new_rows_start")
        if self.base is None:
            self.base = PlainModel(self.n_items, self.setup.backbone).to(self.device).requires_grad_(False)
            self.base.add_head(self.tasks[0].name, self.tasks[0].n_labels)
        for t in self.tasks[1:]:
            if t.name not in self.adapters:
                self.adapters[t.name] = self._new_patch(t)

    def report(self) -> dict:
        per_task = {k: sum(p.numel() for p in a.parameters()) for k, a in self.adapters.items()}
        return {"insertion": self.cfg.insertion, "loss": self.cfg.loss, "parameters_per_task": per_task,
                "shared_parameters": sum(p.numel() for p in self.base.parameters()) if self.base is not None else 0}
