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
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import BackboneConfig
from .registry import METHODS_GROUP, UnknownNameError, failures_note, import_from_env, load_entry_points


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
    """Optimisation and model-selection protocol shared by all methods (docs/protocol.md §4)."""

    t1_lr: float = 1e-3
    t1_batch: int = 32  # sequences per step on the next-item task
    t1_epochs: int = 100  # budget in validation rounds; patience ends T1 (not a fixed cap)
    lr: float = 1e-4
    t2_lr: float | None = None  # lr of the first task after T1 (None: by its kind)
    classify_lr: float | None = None  # lr of profile (classify) tasks (None: `lr`)
    batch: int = 1024  # (user, target) pairs per step on later tasks
    pairs_per_user: int | None = None  # most pairs of one user in a step (None: all; 1: the reference)
    epochs: int = 100  # budget in validation rounds for later tasks
    patience: int = 5  # rounds without a strict improvement of the criterion
    select: Literal["loss", "metric"] = "loss"  # selection criterion: validation CE, or the task metric
    round_steps: int = 0  # a validation round makes whole passes until at least this many steps
    eval_batch: int = 512  # users scored per chunk
    ignore_pad: bool = False  # T1 loss: skip padding targets (reference counts them)
    # T1 loss: None = full softmax; a float in (0, 1] = that share of the vocabulary, an int = that
    # many items, drawn uniformly per step as negatives shared by the batch (sampled softmax, §4.1)
    t1_negatives: int | float | None = None
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast forward passes (for GPUs)
    compile: bool = False  # torch.compile each method's training loss (first steps compile)

    def __post_init__(self) -> None:
        for k in ("t1_lr", "lr", "t2_lr", "classify_lr"):
            v = getattr(self, k)
            if v is not None and not 0 < v < float("inf"):
                raise ValueError(f"train.{k} must be > 0 and finite, got {v}")
        for k in ("t1_batch", "t1_epochs", "batch", "epochs", "patience", "eval_batch"):
            if getattr(self, k) < 1:
                raise ValueError(f"train.{k} must be >= 1, got {getattr(self, k)}")
        if self.pairs_per_user is not None and self.pairs_per_user < 1:
            raise ValueError(f"train.pairs_per_user must be >= 1 or none, got {self.pairs_per_user}")
        if self.round_steps < 0:
            raise ValueError(f"train.round_steps must be >= 0, got {self.round_steps}")
        v = self.t1_negatives
        if v is not None and (isinstance(v, bool) or not (isinstance(v, int) and v >= 1
                                                           or isinstance(v, float) and 0 < v <= 1)):
            raise ValueError(f"train.t1_negatives must be none, a share of the vocabulary in (0, 1] (written with a "
                             f"decimal point) or a count >= 1, got {v!r}")

    def t1_negative_count(self, n_labels: int) -> int | None:
        """Negatives a sampled next-item step draws from `n_labels` items; None: full softmax."""
        v = self.t1_negatives
        if v is None:
            return None
        return min(n_labels, max(1, round(v * n_labels)) if isinstance(v, float) else v)


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

    n_items: int  # item vocabulary at the first task (time-aware streams add items later: `grow_items`)
    seq_len: int
    backbone: BackboneConfig
    train: TrainConfig
    config: Any  # the method's own Config dataclass instance
    device: torch.device
    seed: int
    pretrained_t1: Callable[[], dict] | None = None  # -> {"state": state_dict of PlainModel}


def anneal(index: int, n_batches: int, smax: float) -> float:
    """Per-batch temperature s_b = 1/smax + (smax - 1/smax) * b / Nb (docs/protocol.md §4.6)."""
    return 1.0 / smax + (smax - 1.0 / smax) * index / max(n_batches, 1)


def adam(params, lr: float) -> torch.optim.Adam:
    """Adam as every method trains with it: the fused kernel (one pass over each tensor instead of
    about ten elementwise ops per parameter; 5x faster per step on this CPU, same update to float
    round-off, docs/performance.md)."""
    return torch.optim.Adam(params, lr=lr, fused=True)


def readout(h: Tensor, all_positions: bool) -> Tensor:
    """Backbone output [B, n, f] -> what a head reads: the last position [B, f], or all positions."""
    return h if all_positions else h[:, -1]


def full_sequences(batch: Batch) -> Tensor:
    """The whole sequences of a batch's users (a next-item batch holds x[:, :-1] and x[:, 1:])."""
    return batch.x if batch.rows is not None else torch.cat([batch.x, batch.y[:, -1:]], dim=1)


def inputs_for(kind: str, full: Tensor) -> Tensor:
    """What a task of `kind` reads from whole sequences: a next-item task predicts the last item
    from the rest (as the evaluator scores it), any other task reads everything."""
    return full[:, :-1] if kind == "next_item" else full


def sampled_softmax_ce(h: Tensor, head: nn.Linear, y: Tensor, n_negatives: int, rng: np.random.Generator,
                       ignore_index: int = -100) -> Tensor:
    """Mean cross-entropy of the targets `y` (any shape; `ignore_index` entries skipped) from the
    representations `h` [..., f], with a softmax over a candidate subset of `head`'s rows.

    Candidates: every target of the batch (each row's own target and, for every other row, an
    in-batch negative) plus `n_negatives` ids drawn uniformly without replacement from all of
    `head`'s rows with `rng`, shared by the whole batch. Only the candidates' weight rows are read,
    so only they receive gradient. logQ correction: a batch target is a candidate with probability
    1, any other id with probability q = n_negatives / |rows|, so the logits of sampled non-targets
    get -log q; the sum of exponentials is then an unbiased estimate of the full softmax's, and
    with n_negatives = |rows| (q = 1) the loss IS the full-softmax cross-entropy.
    """
    n_rows = head.out_features
    y = y.reshape(-1)
    keep = y != ignore_index
    pos = y[keep]
    neg = torch.from_numpy(rng.choice(n_rows, size=n_negatives, replace=False, shuffle=False)).to(y.device)
    cand, inverse = torch.unique(torch.cat([pos, neg]), return_inverse=True)  # sorted, no duplicates
    target = inverse[: len(pos)]
    sampled_only = torch.ones(len(cand), dtype=torch.bool, device=cand.device)
    sampled_only[target] = False
    bias = head.bias[cand]
    if n_negatives < n_rows:
        bias = bias + sampled_only * math.log(n_rows / n_negatives)
    logits = F.linear(h.reshape(-1, h.shape[-1])[keep], head.weight[cand], bias)
    return F.cross_entropy(logits, target)


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


@dataclass(frozen=True)
class Knob:
    """One searchable config value for `curb tune`: log-uniform or uniform in [low, high], or
    one of `choices`. Values are rendered as `--set` strings."""

    kind: Literal["log", "uniform", "choice"]
    low: float = 0.0
    high: float = 0.0
    choices: tuple[str, ...] = ()

    def draw(self, rng: np.random.Generator) -> str:
        if self.kind == "choice":
            return str(self.choices[int(rng.integers(len(self.choices)))])
        u = rng.random()
        if self.kind == "log":
            return f"{float(np.exp(np.log(self.low) + u * (np.log(self.high) - np.log(self.low)))):.3g}"
        return f"{self.low + u * (self.high - self.low):.3g}"


class Method:
    """Base class of every continual learner. Subclass, decorate with `@register("name")`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line for `curb methods`
    joint: ClassVar[bool] = False  # learns all tasks after T1 at once (not continual; MTL)
    trains: ClassVar[bool] = True  # False for baselines without parameters (pop): never tuned
    # At most two of the method's own key knobs, searched by `curb tune` beside the learning
    # rates (keys as in `--set`, e.g. "hat.lam"); every method gets the same number of trials.
    tune_space: ClassVar[dict[str, Knob]] = {}
    # In `--methods all`, the fixed benchmark set. Honoured only when set on a built-in class
    # itself (not inherited, not a plugin's), so a method joins the set deliberately.
    benchmark: ClassVar[bool] = False
    grows_items: ClassVar[bool] = False  # implements `grow_items` (may run on time-aware streams)

    @dataclass
    class Config:
        pass

    def __init__(self, setup: Setup):
        self.setup = setup
        self.cfg = setup.config
        self.device = setup.device
        self.tasks: list[TaskInfo] = []  # learned so far, in stream order
        self.rng = np.random.default_rng(setup.seed)
        self.n_items = setup.n_items  # item vocabulary every item table of the method has now

    # ------------------------------------------------------------------ to override
    def begin_task(self, task: TaskInfo) -> None:
        """Create what the task needs (heads, masks, patches). Called before training."""

    def trainable_parameters(self, task: TaskInfo) -> Iterable[nn.Parameter] | list[dict]:
        raise NotImplementedError

    def forward_logits(self, task: str, x: Tensor, *, train: bool, all_positions: bool = False,
                       batch: Batch | None = None) -> Tensor:
        """Logits of task `task` for inputs x: [B, C] at the last position, or [B, n, C]. By default
        `head(represent(...))`, the form of every built-in method but `pop`: one definition, so
        the logits and the representation downstream models read cannot drift apart."""
        return self.head(task)(self.represent(task, x, train=train, all_positions=all_positions, batch=batch))

    def represent(self, task: str, x: Tensor, *, train: bool = False, all_positions: bool = False,
                  batch: Batch | None = None) -> Tensor:
        """The user representation task `task`'s head reads: the backbone output at the last
        position [B, f] (or every position, [B, n, f]) under that task's masks, patches or
        weights. Methods whose logits are `head(represent(...))` implement it, so downstream
        models (the cold-start study) can start from what the continual learner built."""
        raise NotImplementedError(
            f"method {self.name!r} exposes no user representation: it does not implement Method.represent()")

    def head(self, task: str) -> nn.Linear:
        """The head of task `task` (logits = head(represent(...))): the sampled T1 softmax
        (`train.t1_negatives`) reads only some of its rows."""
        raise NotImplementedError(
            f"method {self.name!r} does not implement Method.head() and Method.represent(): implement them "
            "(logits = head(represent(x))) or override Method.forward_logits(); without them it cannot train "
            "T1 with a sampled softmax (train.t1_negatives: leave it at none)")

    def loss(self, task: TaskInfo, batch: Batch) -> Tensor:
        if batch.rows is None and self.setup.train.t1_negatives is not None:  # sampled T1: through the head
            h = self.represent(task.name, batch.x, train=True, all_positions=True, batch=batch)
            return self.head_loss(task, h, batch)
        logits = self.forward_logits(task.name, batch.x, train=True,
                                     all_positions=batch.rows is None, batch=batch)
        return task_loss(logits, batch, self.setup.train.ignore_pad)

    def head_loss(self, task: TaskInfo, h: Tensor, batch: Batch) -> Tensor:
        """The training cross-entropy of `batch` from the representations `h` its head reads: the
        one place a next-item batch switches to the sampled softmax (`train.t1_negatives`)."""
        if batch.rows is None and self.setup.train.t1_negatives is not None:
            y = batch.y.masked_fill(batch.y == 0, -100) if self.setup.train.ignore_pad else batch.y
            return self.next_item_loss(task.name, h, y)
        return task_loss(self.head(task.name)(h), batch, self.setup.train.ignore_pad)

    def next_item_loss(self, task: str, h: Tensor, y: Tensor) -> Tensor:
        """Mean next-item cross-entropy of the targets `y` (-100: not a target) from the
        representations `h` [..., f]: a full softmax, or the sampled one of `train.t1_negatives`
        with negatives from the method's seeded generator."""
        head = self.head(task)
        n_neg = self.setup.train.t1_negative_count(head.out_features)
        if n_neg is None:
            logits = head(h)
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100)
        return sampled_softmax_ce(h, head, y, n_neg, self.rng)

    def before_step(self, task: TaskInfo) -> None:
        """After backward, before the optimiser step (gradient surgery)."""

    def after_step(self, task: TaskInfo) -> None:
        """After the optimiser step (clamping, projections)."""

    def end_task(self, task: TaskInfo) -> None:
        """Consolidate after training on `task` (freeze, prune, cumulate masks)."""

    def grow_items(self, n_new: int) -> None:
        """Time-aware streams: before the next task, item ids `self.n_items .. self.n_items + n_new - 1`
        enter the vocabulary. Append that many rows to every item table (old rows must stay
        bit-identical: `NextItNet.grow_items`) and to any per-item state; set `grows_items = True`.
        A method that cannot (MTL learns all tasks at once) leaves `grows_items` False and the
        runner refuses it on a time-aware stream."""
        raise NotImplementedError(f"method {self.name!r} cannot add items to its vocabulary")

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

    def phase_state(self) -> dict:
        """Mutable state of the task being learned that is not in `state_dict` because model
        selection must not roll it back (running rates, step statistics): saved with every epoch
        checkpoint so an interrupted phase continues exactly."""
        return {}

    def load_phase_state(self, state: dict) -> None:
        pass

    # ------------------------------------------------------------------ driven by the runner
    def extend_items(self, n_items: int) -> None:
        """Grow the vocabulary to `n_items` (no-op when it is not larger): calls `grow_items`."""
        if n_items > self.n_items:
            self.grow_items(n_items - self.n_items)
            self.n_items = n_items

    def learn_task(self, task: TaskInfo, train: TaskData, val: TaskData, fit: "FitFn") -> None:
        self.tasks.append(task)
        self.begin_task(task)
        fit(self, task, train, val)
        self.end_task(task)

    def learn_joint(self, tasks: list[TaskInfo], trains: list[TaskData], vals: list[TaskData],
                    fit: "FitFn") -> None:
        raise NotImplementedError(f"{self.name} is continual; the runner calls learn_task")

    def make_optimizer(self, task: TaskInfo) -> torch.optim.Optimizer:
        return adam(self.trainable_parameters(task), self.lr_for(task))

    def lr_for(self, task: TaskInfo) -> float:
        t = self.setup.train
        if task.kind == "next_item":
            return t.t1_lr
        if t.t2_lr is not None and self.tasks.index(task) == 1:
            return t.t2_lr
        if task.kind == "classify" and t.classify_lr is not None:
            return t.classify_lr
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
            pooled = self.setup.backbone is not None and self.setup.backbone.readout != "last"  # pop has no backbone
            if pooled and any(t.name == task and t.kind == "next_item" for t in self.tasks):
                # a next-item task predicts from its last position, whatever later tasks' heads read
                return self.forward_logits(task, x, train=False, all_positions=True)[:, -1]
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
            "n_items": self.n_items,
        }

    def load_state_dict(self, state: dict) -> None:
        self.tasks = [TaskInfo(**{**t, "label_names": tuple(t["label_names"]) if t["label_names"] else None})
                      for t in state["tasks"]]
        self.extend_items(state.get("n_items", self.n_items))  # grow existing tables first (time-aware streams)
        self.load_extra_state(state["extra"])  # may create modules the state below fills, at self.n_items
        mods = self.modules()
        for k, sd in state["modules"].items():
            mods[k].load_state_dict(sd)
        self.rng.bit_generator.state = state["rng"]

    def snapshot(self) -> dict:
        """In-memory copy of the state for model selection (best validation epoch)."""
        return copy.deepcopy(self.state_dict())

    def restore(self, snap: dict) -> None:
        self.load_state_dict(copy.deepcopy(snap))


class OneModelViews:
    """`represent` and `head` (hence the default `forward_logits`) of a method whose whole state is
    one plain model `self.model` (a backbone and one head per task): FineTune and its descendants, MTL."""

    model: Any

    def head(self, task: str) -> nn.Linear:
        return self.model.heads[task]

    def represent(self, task: str, x: Tensor, *, train: bool = False, all_positions: bool = False,
                  batch: Batch | None = None) -> Tensor:
        return self.model.backbone.read(x, all_positions=all_positions)


FitFn = Callable[[Method, TaskInfo, TaskData, TaskData], Any]


# ---------------------------------------------------------------------------------- registry
_REGISTRY: dict[str, type[Method]] = {}


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

    load_entry_points(METHODS_GROUP)  # third-party modules registering their methods; fail soft
    import_from_env()  # modules named by --import (here or in the parent process)


def available_methods() -> dict[str, type[Method]]:
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def is_builtin(cls: type[Method]) -> bool:
    """A method shipped in curb's `methods/` folder (installed as `curb.methods`)."""
    return cls.__module__.startswith("curb.methods.")


def benchmark_methods() -> list[str]:
    """`--methods all`: the built-in methods that set `benchmark = True` on their own class."""
    return [n for n, c in available_methods().items() if is_builtin(c) and c.__dict__.get("benchmark", False)]


def plugin_methods() -> list[str]:
    """What `--methods all+plugins` adds: every registered method that is not built in."""
    return [n for n, c in available_methods().items() if not is_builtin(c)]


def get_method(name: str) -> type[Method]:
    methods = available_methods()
    key = name.lower().replace("_", "-")
    if key not in methods:
        raise UnknownNameError(f"unknown method {name!r}; valid methods: {', '.join(methods)}{failures_note()}")
    return methods[key]
