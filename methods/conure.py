"""CONURE (docs/protocol.md §6.7; Yuan et al., SIGIR 2021): prune → retrain → freeze parameter isolation.

Every conv kernel entry is owned by at most one task (an ownership map per kernel: 0 = free,
j = the j-th task of the stream). Each task i runs three phases:
1. train: forward with the whole kernel (owned + free entries, free ones keep whatever stale
   values earlier tasks left); only free entries (and the head) receive gradient.
2. prune: per kernel, the largest-|W| free entries, cutoff_i = (1 − p_i)·Π_{j<i} p_j of the
   kernel, become task i's; the rest stay free.
3. retrain: forward with the entries owned by tasks 1..i only; only task i's entries (and the
   head) train. Then they are frozen for good.
Inference for task i uses exactly the entries owned by tasks 1..i, which never change again,
with item embeddings and LayerNorms frozen after T1's train phase and conv biases fixed at 0
([C] creates them non-trainable): old tasks' predictions are bit-identical forever (BWT = 0),
and capacity shrinks geometrically — when no free entry is left, a new task is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from curb.backbone import Hooks, NextItNet, OwnedItemRows, make_head
from curb.config import ConfigError
from curb.method import Knob, Method, Setup, TaskData, TaskInfo, register


class NoFreeWeightsError(ConfigError):
    """CONURE has no free conv weight left for a new task: its capacity is fixed by the backbone
    size and the prune schedule (the limitation the TERACON paper criticises). A ConfigError,
    because the remedy is a configuration change (fewer tasks, larger p, bigger backbone)."""


class _Entries(torch.autograd.Function):
    """w ⊙ keep forward (w itself when keep is None); the gradient reaches only the entries where
    `learn` is 1. Both masks are float 0/1: on the CPU a product with a float mask is many times
    faster than a select with a bool one, and g ⊙ 1[learn] equals where(learn, g, 0) for every
    finite gradient (a non-finite one comes with a non-finite loss, whose step the fit loop skips)."""

    @staticmethod
    def forward(ctx, w: Tensor, keep: Tensor | None, learn: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(learn)
        return w.clone() if keep is None else w * keep

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (learn,) = ctx.saved_tensors
        return grad * learn, None, None


class ConureNet(nn.Module):
    """Backbone, per-task heads and one ownership map (uint8, 0 = free) per conv kernel."""

    def __init__(self, setup: Setup, train_bias: bool):
        super().__init__()
        self.backbone = NextItNet(setup.n_items, setup.backbone)
        self.heads = nn.ModuleDict()
        for i, conv in enumerate(self.backbone.convs()):
            self.register_buffer(f"owner{i}", torch.zeros(conv.weight.shape, dtype=torch.uint8))
            if not train_bias:
                nn.init.zeros_(conv.bias)

    def owners(self) -> list[Tensor]:
        return [getattr(self, f"owner{i}") for i in range(len(self.backbone.convs()))]


@register("conure")
class Conure(Method):
    summary = "prune -> retrain -> freeze: disjoint magnitude-pruned kernel entries per task (BWT = 0)"
    benchmark = True  # one of the `--methods all` set
    grows_items = True  # the rows of new items belong to the task that brings them
    tune_space = {"conure.p": Knob("uniform", 0.3, 0.9)}  # the pruned share of each task's free entries

    @dataclass
    class Config:
        p: tuple[float, ...] = (0.7,)  # maskp of task 1, 2, ... ([C]); the last value repeats
        train_bias: bool = False  # [C] keeps conv biases at 0 (docs/protocol.md §6.7)

        def __post_init__(self) -> None:
            if not self.p or any(not 0.0 <= q < 1.0 for q in self.p):
                raise ValueError(f"conure.p needs values in [0, 1), got {self.p}")

    def __init__(self, setup: Setup):
        super().__init__(setup)
        self.net = ConureNet(setup, self.cfg.train_bias).to(self.device)
        self.phase: str | None = None  # "train" | "retrain" while the newest task is learned
        self.kept: dict[str, float] = {}  # realised share of all kernel entries each task owns
        self.new_rows = OwnedItemRows()
        # float masks of the task being learned, per conv: ((tasks, phase), [(keep or None, learn)])
        self._masks: tuple[tuple[int, str], list[tuple[Tensor | None, Tensor]]] | None = None

    def cutoff(self, j: int) -> float:
        """Share of every kernel task j (1-based) keeps: (1 − p_j) · Π_{l<j} p_l."""
        ps = [self.cfg.p[min(l, len(self.cfg.p) - 1)] for l in range(j)]
        return (1.0 - ps[-1]) * math.prod(ps[:-1])

    # ------------------------------------------------------------------ lifecycle
    def learn_task(self, task: TaskInfo, train: TaskData, val: TaskData, fit) -> None:
        self.tasks.append(task)
        self.begin_task(task)
        self.phase = "train"
        self._set_trainable(task)
        fit(self, task, train, val, phase="train")
        self.prune(task)
        self.phase = "retrain"
        self._set_trainable(task)
        fit(self, task, train, val, phase="retrain")
        self.phase = None
        self.end_task(task)

    def begin_task(self, task: TaskInfo) -> None:
        j = len(self.tasks)
        free = sum(int((o == 0).sum()) for o in self.net.owners())
        if free == 0 or j > 255:
            done = ", ".join(t.name for t in self.tasks[:-1])
            raise NoFreeWeightsError(
                f"conure: no free conv weights left for task {task.name!r} (task {j}): tasks {done} own every "
                f"kernel entry{' (at most 255 tasks)' if j > 255 else ''}. CONURE's capacity is fixed by the "
                f"backbone and the prune schedule conure.p={self.cfg.p}; learn fewer tasks, raise p (each task "
                f"keeps less), or use a wider backbone.")
        self.net.heads[task.name] = make_head(self.setup.backbone.channels, task.n_labels).to(self.device)

    @torch.no_grad()
    def prune(self, task: TaskInfo) -> None:
        """Give task j the top-|W| free entries of every kernel, cutoff_j of its size."""
        j = len(self.tasks)
        share, owned, total = self.cutoff(j), 0, 0
        for conv, owner in zip(self.net.backbone.convs(), self.net.owners()):
            free = owner == 0
            k = min(round(share * owner.numel()), int(free.sum()))
            mag = torch.where(free, conv.weight.abs(), torch.full_like(conv.weight, -1.0))
            owner.view(-1)[torch.topk(mag.view(-1), k).indices] = j
            owned, total = owned + k, total + owner.numel()
        self.kept[task.name] = owned / total
        self._masks = None

    def end_task(self, task: TaskInfo) -> None:
        self.net.requires_grad_(False)  # everything task j trained is now frozen
        self.new_rows.release()

    def grow_items(self, n_new: int) -> None:
        self.new_rows.grow(self.net.backbone, n_new)

    def before_step(self, task: TaskInfo) -> None:
        self.new_rows.mask_grad(self.net.backbone)

    def _set_trainable(self, task: TaskInfo) -> None:
        """T1's train phase trains the whole backbone; afterwards only kernels (masked) + head."""
        bb = self.net.backbone
        self.net.requires_grad_(False)
        first = len(self.tasks) == 1 and self.phase == "train"
        bb.item_emb.requires_grad_(first or self.new_rows.owned)  # a later task: only the rows it brings
        for b in bb.blocks:
            b.ln1.requires_grad_(first)
            b.ln2.requires_grad_(first)
        for conv in bb.convs():
            conv.weight.requires_grad_(True)
            conv.bias.requires_grad_(first and self.cfg.train_bias)
        self.net.heads[task.name].requires_grad_(True)

    def trainable_parameters(self, task: TaskInfo):
        return [p for p in self.net.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ forward
    def kernel(self, i: int, w: Tensor, task: str) -> Tensor:
        """Effective kernel i for `task`; gradient flows only into the entries now being learned."""
        j = self._index(task)
        if j == len(self.tasks) and self.phase is not None:
            keep, learn = self._phase_masks()[i]
            return _Entries.apply(w, keep, learn)
        owner = self.net.owners()[i]
        return w * ((owner > 0) & (owner <= j))

    def _phase_masks(self) -> list[tuple[Tensor | None, Tensor]]:
        """Per conv, the newest task's (keep, learn) masks in its phase, built once per phase: train
        uses the whole kernel and learns the free entries; retrain uses the entries of tasks 1..j and
        learns task j's."""
        j = len(self.tasks)
        if self._masks is None or self._masks[0] != (j, self.phase):
            out = []
            for owner, w in zip(self.net.owners(), (c.weight for c in self.net.backbone.convs())):
                if self.phase == "train":
                    out.append((None, (owner == 0).to(w.dtype)))
                else:
                    out.append((((owner > 0) & (owner <= j)).to(w.dtype), (owner == j).to(w.dtype)))
            self._masks = ((j, self.phase), out)
        return self._masks[1]

    def head(self, task: str) -> nn.Linear:
        return self.net.heads[task]

    def represent(self, task: str, x: Tensor, *, train: bool = False, all_positions: bool = False,
                  batch=None) -> Tensor:
        return self.net.backbone.read(x, Hooks(conv_weight=lambda i, w: self.kernel(i, w, task)), all_positions)

    def _index(self, task: str) -> int:
        return next(k for k, t in enumerate(self.tasks, 1) if t.name == task)

    # ------------------------------------------------------------------ state
    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def extra_state(self) -> dict:
        return {"phase": self.phase, "kept": dict(self.kept), "new_rows_start": self.new_rows.start}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._masks = None  # the ownership maps were just loaded

    def load_extra_state(self, state: dict) -> None:
        for t in self.tasks:  # recreate per-task heads for the checkpoint to fill
            if t.name not in self.net.heads:
                self.net.heads[t.name] = make_head(self.setup.backbone.channels, t.n_labels).to(self.device)
        self.phase, self.kept = state["phase"], dict(state["kept"])
        self.new_rows.start = state.get("new_rows_start")
        if self.phase is not None:
            self._set_trainable(self.tasks[-1])

    def report(self) -> dict:
        """Per task: scheduled and realised share of kernel entries owned, and the free share left."""
        free, out = 1.0, {"scheduled": {}, "kept": {}, "free_after": {}}
        for j, t in enumerate(self.tasks, 1):
            free -= self.kept.get(t.name, 0.0)
            out["scheduled"][t.name] = self.cutoff(j)
            out["kept"][t.name] = self.kept.get(t.name)
            out["free_after"][t.name] = free
        return out
