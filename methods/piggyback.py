"""Piggyback (docs/protocol.md §6.5; Mallya et al., ECCV 2018): binary weight masks on a frozen
pre-trained model.

T1 is the shared pre-trained plain model, used unmasked. Every later task learns one real-valued
score tensor S per masked weight W (the 16 conv kernels; optionally the item embeddings) and uses
W ⊙ 1[S > τ]. The threshold passes gradients straight through (dL/dS = dL/dmask), so the scores
learn although the forward pass only ever sees a binary mask. Nothing of the backbone trains
(kernels, biases, LayerNorms, embeddings), so old tasks are untouched by construction; after a
task its scores are binarised and kept as packed bits (one bit per masked weight) + its head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from curb.backbone import Hooks, OwnedItemRows, PlainModel
from curb.method import Knob, Method, Setup, TaskData, TaskInfo, register

_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_bits(mask: Tensor) -> Tensor:
    """Bool tensor -> uint8 tensor of ceil(numel / 8) bytes (big-endian bit order)."""
    flat = mask.reshape(-1).to(torch.uint8)
    flat = F.pad(flat, (0, -flat.numel() % 8))
    return (flat.view(-1, 8) * _BIT_WEIGHTS.to(flat.device)).sum(1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, shape: torch.Size) -> Tensor:
    """Inverse of `pack_bits`: a bool tensor of `shape`."""
    bits = (packed.unsqueeze(1) & _BIT_WEIGHTS.to(packed.device)) != 0
    return bits.reshape(-1)[: math.prod(shape)].view(shape)


class _Binarize(torch.autograd.Function):
    """1[S > τ] forward; identity backward (the straight-through estimator of [PB])."""

    @staticmethod
    def forward(ctx, scores: Tensor, tau: float) -> Tensor:  # type: ignore[override]
        return (scores > tau).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad, None


class TaskMasks(nn.Module):
    """One task's masks: real-valued `scores` while it trains, packed `bits` once it is done.

    Tensor k is conv kernel k (k < n_convs), then the item-embedding matrix if masked.
    """

    def __init__(self, shapes: list[torch.Size], init: float | None, device: torch.device):
        super().__init__()
        self.shapes = shapes
        self.scores = nn.ParameterList()
        if init is not None:
            self.scores.extend(nn.Parameter(torch.full(s, init, device=device)) for s in shapes)
        else:  # binarised: filled by load_state_dict or `freeze`
            for k, s in enumerate(shapes):
                self.register_buffer(f"bits{k}", torch.zeros(math.ceil(math.prod(s) / 8), dtype=torch.uint8,
                                                             device=device))

    @property
    def binarised(self) -> bool:
        return len(self.scores) == 0

    @staticmethod
    def freeze(scores: "TaskMasks", tau: float) -> "TaskMasks":
        """A binarised copy of a trained score set (the only thing stored per task)."""
        out = TaskMasks(scores.shapes, None, scores.scores[0].device)
        for k, s in enumerate(scores.scores):
            getattr(out, f"bits{k}").copy_(pack_bits(s.detach() > tau))
        return out

    def masks(self, tau: float) -> list[Tensor]:
        """The 0/1 masks: float and differentiable into the scores while they train, bool after."""
        if not self.binarised:
            return [_Binarize.apply(s, tau) for s in self.scores]
        return [unpack_bits(getattr(self, f"bits{k}"), s) for k, s in enumerate(self.shapes)]

    def n_weights(self) -> int:
        return sum(math.prod(s) for s in self.shapes)


@register("piggyback")
class Piggyback(Method):
    summary = "binary masks (learned scores, straight-through) on the frozen pre-trained T1 convs"
    benchmark = True  # one of the `--methods all` set
    grows_items = True  # the rows of new items belong to the task that brings them
    tune_space = {"piggyback.mask_lr": Knob("log", 1e-4, 1e-2)}

    @dataclass
    class Config:
        tau: float = 5e-3  # binarisation threshold ([PB])
        score_init: float = 1e-2  # constant init, above tau: every mask starts at 1 (= the T1 network)
        mask_lr: float | None = None  # Adam lr of the scores; None: the task lr (1e-4, docs/protocol.md §4.3; as [PB])
        mask_embeddings: bool = False  # also mask the item-embedding matrix (UNSURE: docs/protocol.md §7.1 item 6)

        def __post_init__(self) -> None:
            if self.mask_lr is not None and not self.mask_lr > 0:
                raise ValueError(f"mask_lr must be > 0, got {self.mask_lr}")

    def __init__(self, setup: Setup):
        super().__init__(setup)
        self.model = PlainModel(setup.n_items, setup.backbone).to(self.device)
        self.masks = nn.ModuleDict()
        self._cache: dict[str, list[Tensor]] = {}  # unpacked bool masks of finished tasks (not state)
        self.new_rows = OwnedItemRows()

    # ------------------------------------------------------------------ lifecycle
    def learn_task(self, task: TaskInfo, train: TaskData, val: TaskData, fit) -> None:
        if not self.tasks:  # T1: the shared pre-trained model as is
            if self.setup.pretrained_t1 is None:
                raise ValueError("piggyback starts from the shared pre-trained T1 model: Setup.pretrained_t1 is required")
            self.tasks.append(task)
            self.model = self.setup.pretrained_t1()
            self._freeze_backbone()
            return
        super().learn_task(task, train, val, fit)

    def begin_task(self, task: TaskInfo) -> None:
        self.model.add_head(task.name, task.n_labels)
        self.masks[task.name] = TaskMasks(self._shapes(), self.cfg.score_init, self.device)
        self._freeze_backbone()

    def end_task(self, task: TaskInfo) -> None:
        self.masks[task.name] = TaskMasks.freeze(self.masks[task.name], self.cfg.tau)
        self.new_rows.release()
        self._freeze_backbone()

    def grow_items(self, n_new: int) -> None:
        self.new_rows.grow(self.model.backbone, n_new)

    def trainable_parameters(self, task: TaskInfo):
        lr = self.lr_for(task)
        rows = [{"params": [self.model.backbone.item_emb.weight], "lr": lr}] if self.new_rows.owned else []
        return [{"params": list(self.masks[task.name].parameters()), "lr": self.cfg.mask_lr or lr},
                {"params": list(self.model.heads[task.name].parameters()), "lr": lr}, *rows]

    def before_step(self, task: TaskInfo) -> None:
        self.new_rows.mask_grad(self.model.backbone)

    # ------------------------------------------------------------------ forward
    def head(self, task: str) -> nn.Linear:
        return self.model.heads[task]

    def represent(self, task: str, x: Tensor, *, train: bool = False, all_positions: bool = False,
                  batch=None) -> Tensor:
        hooks = self.hooks(task) if task in self.masks else Hooks()  # T1: unmasked
        return self.model.backbone.read(x, hooks, all_positions)

    def hooks(self, task: str) -> Hooks:
        """Backbone hooks of a masked task: kernels W ⊙ mask (and embeddings, if masked)."""
        tm, n, tau = self.masks[task], self.setup.backbone.n_convs, self.cfg.tau
        if tm.binarised:
            if task not in self._cache:
                self._cache[task] = tm.masks(tau)
            conv, emb = self._cache[task][:n], self._cache[task][n:]
            embed = (lambda x, w: F.embedding(x, w) * F.embedding(x, emb[0])) if emb else None
        else:
            conv = [_Binarize.apply(s, tau) for s in tm.scores[:n]]
            # gather the used rows' scores before binarising: cheap for large vocabularies
            embed = (lambda x, w: F.embedding(x, w) * _Binarize.apply(F.embedding(x, tm.scores[n]), tau)
                     ) if len(tm.scores) > n else None
        return Hooks(conv_weight=lambda i, w: w * conv[i], embed=embed)

    # ------------------------------------------------------------------ state
    def _shapes(self) -> list[torch.Size]:
        shapes = [c.weight.shape for c in self.model.backbone.convs()]
        if self.cfg.mask_embeddings:
            shapes.append(self.model.backbone.item_emb.weight.shape)
        return shapes

    def _freeze_backbone(self) -> None:
        """Only scores and the newest head ever train (saves their backward through the rest), and
        on a time-aware stream the item rows the current task brings."""
        self.model.requires_grad_(False)
        if self.tasks:
            self.model.heads[self.tasks[-1].name].requires_grad_(True)
        self.model.backbone.item_emb.requires_grad_(self.new_rows.owned)

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "masks": self.masks}

    def extra_state(self) -> dict:
        return {"training": [k for k, m in self.masks.items() if not m.binarised],
                "shapes": {k: [list(s) for s in m.shapes] for k, m in self.masks.items()},
                "new_rows_start": self.new_rows.start}

    def load_extra_state(self, state: dict) -> None:
        """Recreate every task's head and masks (scores or bits, as saved) for the modules to fill."""
        self._cache.clear()
        self.new_rows.start = state.get("new_rows_start")
        shapes = {k: [torch.Size(s) for s in v] for k, v in state.get("shapes", {}).items()}  # an old task's
        # embedding mask keeps the vocabulary of its time on a time-aware stream
        for t in self.tasks:
            if t.name not in self.model.heads:
                self.model.add_head(t.name, t.n_labels)
        for t in self.tasks[1:]:
            training = t.name in state["training"]
            if t.name not in self.masks or self.masks[t.name].binarised == training:
                self.masks[t.name] = TaskMasks(shapes.get(t.name, self._shapes()), self.cfg.score_init if training else None,
                                               self.device)
        self._freeze_backbone()

    def report(self) -> dict:
        """Per-task storage: one bit per masked weight + the head in float32 (the backbone is
        shared with T1 and stored once)."""
        out: dict = {"shared_backbone_bytes": 4 * sum(p.numel() for p in self.model.backbone.parameters()),
                     "storage_bytes": {}, "mask_bytes": {}, "mask_ones": {}}
        for t in self.tasks[1:]:
            tm = self.masks[t.name]
            head = 4 * sum(p.numel() for p in self.model.heads[t.name].parameters())
            out["mask_bytes"][t.name] = sum(b.numel() for b in tm.buffers())  # uint8 packed bits
            out["storage_bytes"][t.name] = out["mask_bytes"][t.name] + head
            ones = sum(float(m.sum()) for m in tm.masks(self.cfg.tau))
            out["mask_ones"][t.name] = ones / tm.n_weights()
        return out
