"""TERACON (docs/protocol.md §6.8): relation-aware task-specific masks + relation-aware knowledge retention.

One shared, always-trainable NextItNet serves every task. Each task T owns an embedding e^T
[K, f] (K = 2 x blocks gated sublayers, row 2k+r gates sublayer r of block k), a head, and,
once at least two tasks are known, relation maps f^T [K, 2N-1 -> 1]. Its mask is

    T1 stage (one task):      m = sigmoid(s * e^T)                                   (plain)
    later (N known tasks):    m = sigmoid(s * f^T[tanh(s e^T), +-tanh(s e^T') for T' != T])

applied to h1/h2 after the ReLU (the backbone's `gates` hook). Because the relation input of
task T includes tasks learned after T, later tasks reshape old tasks' masks (positive BWT is
possible); every task's relation map is re-initialised when a task arrives (its width changed).

While learning Ti (i >= 2) a frozen copy of the model after T(i-1) (the teacher) labels, for
every past task Tj, a random subset of the current mini-batch of size max(1, floor(B rho_ij))
(never a mean over zero users, docs/protocol.md §9.3); the student's Tj outputs are pulled to the teacher's by
MSE, weighted by rho_ij / sum_l rho_il; loss = CE + alpha * KR. rho_ij = 1 - mean_k
sigmoid(c cos(m_k^{Ti}, m~_k^{Tj})) from this step's masks, used by the NEXT step (as [R]).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from curb.backbone import BackboneConfig, Hooks, NextItNet, make_head
from curb.config import ConfigError
from curb.method import Batch, Knob, Method, Setup, TaskInfo, anneal, full_sequences, inputs_for, readout, register
from curb.metrics import mask_similarity


def relation_rate(current: Tensor, past: Tensor, c: float) -> float:
    """Eq. 15: rho = 1 - (1/K) sum_k sigmoid(c * cos(m_k^{Ti}, m~_k^{Tj})); masks [K, f]."""
    return relation_rates(current, past[None], c)[0]


def relation_rates(current: Tensor, past: Tensor, c: float) -> list[float]:
    """Eq. 15 for every past task at once: current [K, f], past [J, K, f] -> J rates (one host read)."""
    cos = F.cosine_similarity(current[None], past, dim=-1, eps=1e-6)
    return [1.0 - v for v in torch.sigmoid(c * cos).mean(dim=-1).tolist()]


class RelationMaps(nn.Module):
    """The relation maps f^T_{k,r} of one task: K independent Linear(width -> 1), each applied per
    channel to the stacked [width, f] relation input of its sublayer (so 2N parameters each)."""

    def __init__(self, k: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(k, width).normal_(0.0, 0.01))
        self.bias = nn.Parameter(torch.full((k,), 0.1))

    def forward(self, rows: Tensor) -> Tensor:
        """rows [width, K, f] -> pre-activation [K, f]."""
        return torch.einsum("wkf,kw->kf", rows, self.weight) + self.bias[:, None]


class TeraconNet(nn.Module):
    """Backbone, heads, task embeddings and relation maps: everything TERACON learns."""

    def __init__(self, n_items: int, cfg: BackboneConfig):
        super().__init__()
        self.backbone = NextItNet(n_items, cfg)
        self.heads = nn.ModuleDict()
        self.emb = nn.ParameterDict()  # task -> [K, f]
        self.rel = nn.ModuleDict()  # task -> RelationMaps (absent in the T1 stage)

    def frozen(self, dtype: torch.dtype | None = None) -> "TeraconNet":
        """A frozen copy (the teacher): no gradients. With `dtype` (the autocast dtype under
        `train.precision=bf16`), the weights autocast casts on every pass (conv kernels and
        biases, heads) are stored in it: the same values, cast once per stage instead of every
        step (autocast caches the casts of trainable leaves only)."""
        net = copy.deepcopy(self).requires_grad_(False)
        if dtype is not None:
            for m in [*net.backbone.convs(), *net.heads.values()]:
                m.to(dtype)
        return net

    def mask(self, task: str, others: list[str], s: float) -> Tensor:
        """Task mask [K, f] at temperature s; relation-aware once the task has relation maps."""
        e = self.emb[task]
        if task not in self.rel:
            return torch.sigmoid(s * e)
        rows = [torch.tanh(s * e)]
        for o in others:
            rows += [torch.tanh(s * self.emb[o]), torch.tanh(-s * self.emb[o])]
        return torch.sigmoid(s * self.rel[task](torch.stack(rows)))

    def represent(self, x: Tensor, mask: Tensor, all_positions: bool = False) -> Tensor:
        gates = [(mask[2 * k], mask[2 * k + 1]) for k in range(len(self.backbone.blocks))]
        return self.backbone.read(x, Hooks(gates=gates), all_positions)

    def represent_rows(self, x: Tensor, masks: list[Tensor], counts: list[int],
                       parts: list[tuple[int, int | None]]) -> list[Tensor]:
        """Backbone outputs of x whose consecutive row groups (counts[g] rows each) are gated by
        their own mask [K, f], each row computed as in a pass of its own (the backbone's per-row
        gates [B, f]); `parts` splits the rows again by the positions they read
        (`NextItNet.segments`): one pass for all of them."""
        if len(masks) == 1:
            gates = [(masks[0][2 * k], masks[0][2 * k + 1]) for k in range(len(self.backbone.blocks))]
        else:
            rows = torch.cat([m[:, None].expand(-1, n, -1) for m, n in zip(masks, counts)], dim=1).unbind(0)  # K x [B, f]
            gates = list(zip(rows[0::2], rows[1::2]))
        return self.backbone.segments(x, parts, Hooks(gates=gates))

    def logits(self, task: str, x: Tensor, mask: Tensor, all_positions: bool = False) -> Tensor:
        return self.heads[task](self.represent(x, mask, all_positions))


@dataclass
class _StageStats:
    """Running statistics of one stage's knowledge retention (in epoch checkpoints via `phase_state`)."""

    past: list[str]
    steps: int = 0
    rho: np.ndarray = field(init=False)  # sum over steps of the Eq. 15 rate per past task
    fraction: np.ndarray = field(init=False)  # sum of sampled users / batch users
    users: np.ndarray = field(init=False)  # sum of sampled users

    def __post_init__(self) -> None:
        n = len(self.past)
        self.rho, self.fraction, self.users = np.zeros(n), np.zeros(n), np.zeros(n)

    def summary(self) -> dict:
        d = max(self.steps, 1)
        return {"steps": self.steps,
                **{k: dict(zip(self.past, (getattr(self, a) / d).tolist()))
                   for k, a in (("rho_mean", "rho"), ("sampled_fraction_mean", "fraction"),
                                ("sampled_users_mean", "users"))}}


@register("teracon")
class Teracon(Method):
    summary = "relation-aware task masks + relation-aware knowledge retention (KDD 2023; the paper's method)"
    benchmark = True  # one of the `--methods all` set
    grows_items = True  # one shared, always-trainable backbone: new item rows join it

    tune_space = {"teracon.alpha": Knob("uniform", 0.1, 1.5)}

    @dataclass
    class Config:
        smax: float = 50.0
        alpha: float = 0.7  # weight of the knowledge-retention loss
        c: float = 6.0  # Eq. 15 sharpness
        rho_init: float = 0.9  # rate of every past task at the first step of a stage
        sampling: str = "relation"  # relation (Eq. 15) | min (rho_min = 1 - sigmoid(c)) | none (rho = 1) | fixed:<rate>
        emb_clamp: float = 6.0  # task embeddings clamped to [-clamp, clamp] after every step
        t1_mask_reg: float = 0.0  # [O]'s lambda * mean(T1 masks) in the T1 stage ([R]: off; [O]: 0.75)
        kr_student_mask: Literal["own", "current"] = "own"  # student's Tj output with m^{Tj} (code) or m^{Ti} (slides)
        relation_set: Literal["all", "previous"] = "all"  # other tasks in a mask: all known (code) or earlier only
        kr_max_users: int | None = None  # cap on KR users per past task and step (memory for huge |V|)

        def __post_init__(self) -> None:
            self.fixed_rate()  # validates `sampling`
            if not self.smax > 0 or self.alpha < 0 or not 0 < self.rho_init <= 1 or not self.emb_clamp > 0:
                raise ValueError("need smax > 0, alpha >= 0, 0 < rho_init <= 1, emb_clamp > 0")
            if self.kr_max_users is not None and self.kr_max_users < 1:
                raise ValueError("kr_max_users must be >= 1 or None")

        def fixed_rate(self) -> float | None:
            """The constant sampling rate, or None for Eq. 15."""
            if self.sampling == "relation":
                return None
            if self.sampling == "none":
                return 1.0
            if self.sampling == "min":  # the smallest rate Eq. 15 can give (all masks identical)
                return 1.0 - 1.0 / (1.0 + math.exp(-self.c))
            if self.sampling.startswith("fixed:"):
                try:
                    rate = float(self.sampling[len("fixed:"):])
                except ValueError:
                    rate = -1.0
                if 0 < rate <= 1:
                    return rate
            raise ValueError(f"sampling must be relation, min, none or fixed:<rate in (0, 1]>, got {self.sampling!r}")

    def __init__(self, setup: Setup):
        super().__init__(setup)
        if setup.backbone.readout != "last":  # the fused step reads positions itself (represent_rows)
            raise ConfigError(f"{self.name} reads the last position in its fused training pass; "
                              f"backbone.readout={setup.backbone.readout} is not supported")
        self.net = TeraconNet(setup.n_items, setup.backbone).to(self.device)
        self.k = 2 * len(setup.backbone.dilations)
        self.teacher: TeraconNet | None = None  # frozen model after T(i-1), only while learning Ti
        self.rho: list[float] = []  # Eq. 15 rate per past task, from the previous step
        self.stage_stats: dict[str, dict] = {}  # per task from T2 on: realised retention statistics
        self._stats: _StageStats | None = None
        self._eval_masks: dict[str, Tensor] = {}  # inference masks at smax, valid until a step

    # ------------------------------------------------------------------ masks
    def others(self, task: str, known: list[str]) -> list[str]:
        """The tasks whose embeddings enter `task`'s relation-aware mask, in stream order."""
        if self.cfg.relation_set == "all":
            return [t for t in known if t != task]
        return known[: known.index(task)]

    def known(self) -> list[str]:
        return [t.name for t in self.tasks]

    def mask(self, task: str, s: float) -> Tensor:
        return self.net.mask(task, self.others(task, self.known()), s)

    def _build_relations(self) -> None:
        """(Re)create every relation map whose input width changed: with relation_set=all that is
        every task's map whenever a task arrives (docs/protocol.md §6.8.2, [R] drops them all)."""
        known = self.known()
        if len(known) < 2:
            return
        for t in known:
            width = 2 * len(self.others(t, known)) + 1
            if t not in self.net.rel or self.net.rel[t].weight.shape[1] != width:
                self.net.rel[t] = RelationMaps(self.k, width).to(self.device)

    def _add_task_modules(self, task: TaskInfo) -> None:
        f = self.setup.backbone.channels
        self.net.emb[task.name] = nn.Parameter(torch.empty(self.k, f, device=self.device).uniform_(0.0, 2.0))
        self.net.heads[task.name] = make_head(f, task.n_labels).to(self.device)

    # ------------------------------------------------------------------ lifecycle
    def begin_task(self, task: TaskInfo) -> None:
        self._eval_masks.clear()
        if len(self.tasks) > 1:
            self.teacher = self.net.frozen(torch.bfloat16 if self.setup.train.precision == "bf16" else None)
            self.rho = [self.cfg.rho_init] * (len(self.tasks) - 1)
            self._stats = _StageStats(self.known()[:-1])
        self._add_task_modules(task)
        self._build_relations()

    def end_task(self, task: TaskInfo) -> None:
        if self._stats is not None:
            self.stage_stats[task.name] = self._stats.summary()
        self.teacher, self._stats = None, None
        self._eval_masks.clear()

    def grow_items(self, n_new: int) -> None:
        self.net.backbone.grow_items(n_new)  # between tasks: no teacher exists yet

    def trainable_parameters(self, task: TaskInfo):
        return self.net.parameters()  # whole backbone, every embedding, relation map and head

    def after_step(self, task: TaskInfo) -> None:
        with torch.no_grad():
            for e in self.net.emb.values():
                e.clamp_(-self.cfg.emb_clamp, self.cfg.emb_clamp)
        self._eval_masks.clear()

    # ------------------------------------------------------------------ forward and loss
    def head(self, task: str) -> nn.Linear:
        return self.net.heads[task]

    def represent(self, task: str, x: Tensor, *, train: bool = False, all_positions: bool = False,
                  batch: Batch | None = None) -> Tensor:
        if train:
            s = self.cfg.smax if batch is None else anneal(batch.index, batch.n_batches, self.cfg.smax)
            m = self.mask(task, s)
        else:  # masks do not depend on the input: computed once per task until the next step
            if task not in self._eval_masks:
                with torch.no_grad():
                    self._eval_masks[task] = self.mask(task, self.cfg.smax)
            m = self._eval_masks[task]
        return self.net.represent(x, m, all_positions)

    def loss(self, task: TaskInfo, batch: Batch) -> Tensor:
        s = anneal(batch.index, batch.n_batches, self.cfg.smax)
        m_cur = self.mask(task.name, s)
        if self.teacher is not None:
            return self.stage_loss(task, batch, m_cur, s)
        h = self.net.represent(batch.x, m_cur, all_positions=batch.rows is None)  # T1 stage
        loss = self.head_loss(task, h, batch)
        return loss + self.cfg.t1_mask_reg * m_cur.mean() if self.cfg.t1_mask_reg else loss

    def stage_loss(self, task: TaskInfo, batch: Batch, m_cur: Tensor, s: float) -> Tensor:
        """A later task's loss: CE + α · L_KR+ (Eq. 16), exactly the CE alone when α = 0.

        The retained users' student pass joins the batch's own forward pass: one backbone pass over
        the batch's rows and the sampled rows of every past task, each row gated by its own mask
        (per-row gates) and each row group computing only the positions it reads
        (`NextItNet.segments`): the same arithmetic as separate passes. A past task reads its position of
        the whole sequence (causal convolutions: the sequence without its last item gives the same
        output there). The teacher labels all past tasks' sampled rows in one pass too.
        """
        main_all = batch.rows is None
        if not self.cfg.alpha:
            return self.head_loss(task, self.net.represent(batch.x, m_cur, all_positions=main_all), batch)
        full = full_sequences(batch)
        n_users = full.shape[0]
        past = self.tasks[:-1]
        fixed = self.cfg.fixed_rate()
        rates = self.rho if fixed is None else [fixed] * len(past)
        counts = [self.retained_users(n_users, rate) for rate in rates]
        # one draw per past task, in stream order (the order of the rng calls is part of the seed's meaning)
        idx = torch.from_numpy(np.concatenate([self.rng.permutation(n_users)[:n] for n in counts])).to(full.device)
        kept = full[idx]
        known, teacher_known = self.known(), self.known()[:-1]
        with torch.no_grad():  # pseudo-labels: the teacher's Tj masks at the current annealed s
            m_t = [self.teacher.mask(pt.name, self.others(pt.name, teacher_known), s) for pt in past]
            (h_kept,) = self.teacher.represent_rows(kept, m_t, counts, [(len(kept), 2)])
            h_t = h_kept.split(counts)
            targets = [self.teacher.heads[pt.name](readout(inputs_for(pt.kind, h), False)) for pt, h in zip(past, h_t)]
            self.rho = relation_rates(m_cur.detach(), torch.stack(m_t), self.cfg.c)  # Eq. 15, for the next step
        own = self.cfg.kr_student_mask == "own"
        m_s = [self.net.mask(pt.name, self.others(pt.name, known), s) if own else m_cur for pt in past]
        # the batch's rows read the last position (every position for a next-item task), the
        # retained rows the last or the one before (a past next-item task): each group computes
        # only the positions it reads, in one pass
        h_main, h_kept = self.net.represent_rows(torch.cat([full, kept]), [m_cur, *m_s], [n_users, *counts],
                                                 [(n_users, None if main_all else 1), (len(kept), 2)])
        h_past = h_kept.split(counts)
        h_task = readout(h_main[:, : batch.x.shape[1]], main_all)
        kr = full.new_zeros((), dtype=m_cur.dtype)
        total = sum(rates)
        for pt, rate, hj, target in zip(past, rates, h_past, targets):
            kr = kr + (rate / total) * F.mse_loss(self.net.heads[pt.name](readout(inputs_for(pt.kind, hj), False)), target)
        st = self._stats
        st.rho += self.rho
        st.fraction += np.asarray(counts) / n_users
        st.users += counts
        st.steps += 1
        return self.head_loss(task, h_task, batch) + self.cfg.alpha * kr

    def retained_users(self, n_users: int, rate: float) -> int:
        """max(1, floor(B ρ)) users of a batch of B for one past task (never a mean over zero users,
        docs/protocol.md §9.3), at most `kr_max_users`."""
        n = max(1, math.floor(n_users * rate))
        return n if self.cfg.kr_max_users is None else min(n, self.cfg.kr_max_users)

    # ------------------------------------------------------------------ state
    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}  # the teacher is a frozen copy, rebuilt by begin_task

    def extra_state(self) -> dict:
        return {"stage_stats": copy.deepcopy(self.stage_stats)}

    def load_extra_state(self, state: dict) -> None:
        self.stage_stats = copy.deepcopy(state["stage_stats"])
        for t in self.tasks:  # recreate what the checkpoint fills
            if t.name not in self.net.emb:
                self._add_task_modules(t)
        self._build_relations()

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._eval_masks.clear()

    def phase_state(self) -> dict:
        """The stage's running rates and retention statistics (they span all its steps)."""
        if self._stats is None:
            return {}
        st = self._stats
        return {"rho": list(self.rho), "steps": st.steps, "sums": [st.rho.copy(), st.fraction.copy(), st.users.copy()]}

    def load_phase_state(self, state: dict) -> None:
        if state:
            self.rho = list(state["rho"])
            self._stats.steps = state["steps"]
            self._stats.rho, self._stats.fraction, self._stats.users = (a.copy() for a in state["sums"])

    def report(self) -> dict:
        """Deterministic numbers only: per-epoch training seconds are in the result's `fits`."""
        with torch.no_grad():
            masks = {t.name: self.mask(t.name, self.cfg.smax) for t in self.tasks}
        return {"sampling": self.cfg.sampling, "stages": self.stage_stats, "mask_similarity": mask_similarity(masks)}
