"""The `Method` API every continual learner implements, and the method registry.

Lifecycle (driven by the runner, one task at a time, in stream order):

    m = MethodClass(setup)                      # stream facts, configs, device, seed
    for task in stream:                          # only the current task's train/val data
        m.learn_task(task, train, val, fit)      # default: begin_task -> fit loop -> end_task
        evaluator scores m.score(task_name, x)   # for every task seen so far -> R[j, i]
    m.state_dict() / m.load_state_dict()         # checkpoint between tasks

A method never receives user ids or test labels: `TaskData` carries model inputs and the
labels of its own part only. Most methods override just `trainable_parameters`,
`forward_logits` and a hook or two (`before_step`, `after_step`, `loss`, `end_task`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, ClassVar, Iterable, Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import BackboneConfig
from .errors import CurbError


@dataclass(frozen=True)
class TaskInfo:
    """What a method may know about a task: no users, no labels."""

    name: str
    kind: str
    n_labels: int
    metric: str
    label_names: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TaskData:
    """One part (train or val) of a task, as a method sees it.

    `inputs[k]` is user k's full sequence; `labels[ptr[k]:ptr[k+1]]` are its targets. For a
    next_item task the model input is `inputs[:, :-1]` and the target at position t is
    `inputs[:, t+1]` (the evaluation target is the last item).
    """

    task: TaskInfo
    inputs: np.ndarray
    ptr: np.ndarray
    labels: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.inputs)

    @property
    def n_pairs(self) -> int:
        return len(self.labels)


@dataclass
class TrainConfig:
    """Optimisation protocol shared by all methods (METHODS.md §4)."""

    t1_lr: float = 1e-3
    t1_batch: int = 32  # sequences per step on the next-item task
    t1_epochs: int = 10
    lr: float = 1e-4
    t2_lr: float | None = None  # lr of the first task after T1 (None: `lr`)
    batch: int = 1024  # (user, target) pairs per step on later tasks
    epochs: int = 100
    patience: int = 5
    eval_batch: int = 512  # users scored per chunk
    ignore_pad: bool = False  # T1 loss: skip padding targets (reference counts them)
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast forward passes (for GPUs)
    compile: bool = False  # torch.compile each method's training loss (first steps compile)

    def __post_init__(self) -> None:
        for k in ("t1_lr", "lr", "t2_lr"):
            v = getattr(self, k)
            if v is not None and not 0 < v < float("inf"):
                raise ValueError(f"train.{k} must be > 0 and finite, got {v}")
        for k in ("t1_batch", "t1_epochs", "batch", "epochs", "patience", "eval_batch"):
            if getattr(self, k) < 1:
                raise ValueError(f"train.{k} must be >= 1, got {getattr(self, k)}")


@dataclass
class Batch:
    """One training step's data on `device`.

    next_item: x [B, n-1], y [B, n-1] (target at every position), rows None.
    otherwise: x [B, n], y [P] labels of all pairs, rows [P] the x-row of each label.
    `index`/`n_batches` locate the step inside the epoch (for temperature annealing).
    """

    x: Tensor
    y: Tensor
    rows: Tensor | None
    index: int
    n_batches: int


@dataclass
class Setup:
    """Everything a method is constructed with."""

    n_items: int
    seq_len: int
    backbone: BackboneConfig
    train: TrainConfig
    config: Any  # the method's own Config dataclass instance
    device: torch.device
    seed: int
    pretrained_t1: Callable[[], dict] | None = None  # -> {"state": state_dict of PlainModel}


def anneal(index: int, n_batches: int, smax: float) -> float:
    """Per-batch temperature s_b = 1/smax + (smax - 1/smax) * b / Nb (METHODS.md §4.4)."""
    return 1.0 / smax + (smax - 1.0 / smax) * index / max(n_batches, 1)


def readout(h: Tensor, all_positions: bool) -> Tensor:
    """Backbone output [B, n, f] -> what a head reads: the last position [B, f], or all positions."""
    return h if all_positions else h[:, -1]


def task_loss(logits: Tensor, batch: Batch, ignore_pad: bool = False) -> Tensor:
    """Cross-entropy with a full softmax.

    next_item: mean over every position (padding targets included unless `ignore_pad`).
    other tasks: logits are per user [B, C]; each (user, target) pair is one CE term, so
    encoding a user once for all its targets gives exactly the per-pair objective.
    """
    if batch.rows is None:
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch.y.reshape(-1), ignore_index=0 if ignore_pad else -100
        )
    logp = F.log_softmax(logits, dim=-1)
    return -logp[batch.rows, batch.y].mean()


class Method:
    """Base class of every continual learner. Subclass, decorate with `@register("name")`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line for `curb methods`
    joint: ClassVar[bool] = False  # learns all tasks after T1 at once (not continual; MTL)

    @dataclass
    class Config:
        pass

    def __init__(self, setup: Setup):
        self.setup = setup
        self.cfg = setup.config
        self.device = setup.device
        self.tasks: list[TaskInfo] = []  # learned so far, in stream order
        self.rng = np.random.default_rng(setup.seed)

    # ------------------------------------------------------------------ to override
    def begin_task(self, task: TaskInfo) -> None:
        """Create what the task needs (heads, masks, patches). Called before training."""

    def trainable_parameters(self, task: TaskInfo) -> Iterable[nn.Parameter] | list[dict]:
        raise NotImplementedError

    def forward_logits(self, task: str, x: Tensor, *, train: bool, all_positions: bool = False,
                       batch: Batch | None = None) -> Tensor:
        """Logits of task `task` for inputs x: [B, C] at the last position, or [B, n, C]."""
        raise NotImplementedError

    def represent(self, task: str, x: Tensor, *, train: bool = False, all_positions: bool = False,
                  batch: Batch | None = None) -> Tensor:
        """The user representation task `task`'s head reads: the backbone output at the last
        position [B, f] (or every position, [B, n, f]) under that task's masks, patches or
        weights. Methods whose logits are `head(represent(...))` implement it, so downstream
        models (the cold-start study) can start from what the continual learner built."""
        raise NotImplementedError(
            f"method {self.name!r} exposes no user representation: it does not implement Method.represent()")

    def loss(self, task: TaskInfo, batch: Batch) -> Tensor:
        logits = self.forward_logits(task.name, batch.x, train=True,
                                     all_positions=batch.rows is None, batch=batch)
        return task_loss(logits, batch, self.setup.train.ignore_pad)

    def before_step(self, task: TaskInfo) -> None:
        """After backward, before the optimiser step (gradient surgery)."""

    def after_step(self, task: TaskInfo) -> None:
        """After the optimiser step (clamping, projections)."""

    def end_task(self, task: TaskInfo) -> None:
        """Consolidate after training on `task` (freeze, prune, cumulate masks)."""

    def modules(self) -> dict[str, nn.Module]:
        """Every nn.Module holding the method's state (checkpointed and moved to device)."""
        raise NotImplementedError

    def extra_state(self) -> dict:
        """Non-module state to checkpoint (lists, counters, per-task tensors)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def report(self) -> dict:
        """Method-specific numbers for the result file (storage, free capacity, realised rates)."""
        return {}

    # ------------------------------------------------------------------ driven by the runner
    def learn_task(self, task: TaskInfo, train: TaskData, val: TaskData, fit: "FitFn") -> None:
        self.tasks.append(task)
        self.begin_task(task)
        fit(self, task, train, val)
        self.end_task(task)

    def learn_joint(self, tasks: list[TaskInfo], trains: list[TaskData], vals: list[TaskData],
                    fit: "FitFn") -> None:
        raise NotImplementedError(f"{self.name} is continual; the runner calls learn_task")

    def make_optimizer(self, task: TaskInfo) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.trainable_parameters(task), lr=self.lr_for(task))

    def lr_for(self, task: TaskInfo) -> float:
        t = self.setup.train
        if task.kind == "next_item":
            return t.t1_lr
        if t.t2_lr is not None and self.tasks.index(task) == 1:
            return t.t2_lr
        return t.lr

    def autocast(self) -> torch.autocast:
        """bf16 autocast when `train.precision=bf16` (a no-op context otherwise)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.setup.train.precision == "bf16")

    @contextlib.contextmanager
    def inference(self) -> Iterator[None]:
        """No gradients, modules in eval mode (back to train mode after), autocast as configured."""
        mods = self.modules().values()
        for m in mods:
            m.eval()
        try:
            with torch.no_grad(), self.autocast():
                yield
        finally:
            for m in mods:
                m.train()

    def score(self, task: str, x: Tensor) -> Tensor:
        """Inference scores [B, C] for task `task` (already learned) on model inputs x."""
        with self.inference():
            return self.forward_logits(task, x, train=False)

    def user_vectors(self, task: str, x: Tensor) -> Tensor:
        """Inference user representations [B, f] read through task `task`'s view (`represent`)."""
        with self.inference():
            return self.represent(task, x)

    def state_dict(self) -> dict:
        return {
            "modules": {k: m.state_dict() for k, m in self.modules().items()},
            "tasks": [dataclasses.asdict(t) for t in self.tasks],
            "extra": self.extra_state(),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        self.tasks = [TaskInfo(**{**t, "label_names": tuple(t["label_names"]) if t["label_names"] else None})
                      for t in state["tasks"]]
        self.load_extra_state(state["extra"])  # may create modules the state below fills
        mods = self.modules()
        for k, sd in state["modules"].items():
            mods[k].load_state_dict(sd)
        self.rng.bit_generator.state = state["rng"]

    def snapshot(self) -> dict:
        """In-memory copy of the state for model selection (best validation epoch)."""
        return copy.deepcopy(self.state_dict())

    def restore(self, snap: dict) -> None:
        self.load_state_dict(copy.deepcopy(snap))


FitFn = Callable[[Method, TaskInfo, TaskData, TaskData], Any]


# ---------------------------------------------------------------------------------- registry
_REGISTRY: dict[str, type[Method]] = {}
ENTRY_POINT_GROUP = "curb.methods"


class UnknownNameError(CurbError, KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: `@register("teracon") class Teracon(Method): ...`."""

    def deco(cls: type[Method]) -> type[Method]:
        key = name.lower().replace("_", "-")
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"method name {key!r} is already registered by {_REGISTRY[key].__module__}")
        cls.name = key
        _REGISTRY[key] = cls
        return cls

    return deco


_loaded = False


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import curb.methods  # noqa: F401  (built-in methods register on import)

    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        ep.load()  # a third-party module registering its methods


def available_methods() -> dict[str, type[Method]]:
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def get_method(name: str) -> type[Method]:
    methods = available_methods()
    key = name.lower().replace("_", "-")
    if key not in methods:
        raise UnknownNameError(f"unknown method {name!r}; valid methods: {', '.join(methods)}")
    return methods[key]
