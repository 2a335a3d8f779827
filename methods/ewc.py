"""EWC (Kirkpatrick et al., PNAS 2017): elastic weight consolidation on the shared backbone.

One shared NextItNet and one head per task (`FineTune`). After a task is learned (T1: once the
shared pre-trained model is loaded), the diagonal empirical Fisher information of its loss is
computed on its TRAINING data: F_i = mean over batches b of (dL_b/dθ_i)², L_b the task loss of
`fisher_batch` training users (1: per-user squared gradients). It is accumulated over tasks,
F <- gamma·F + F_t (gamma = 1: summed, the default; gamma < 1: online EWC), and the anchor θ* is
set to the parameters after that task. While a later task is learned the loss is

    L = CE(task) + λ/2 · Σ_i F_i (θ_i − θ*_i)²

over the backbone parameters (item embeddings, convolutions, LayerNorms). Heads are per task and
not penalised: an old head receives no gradient from a later task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from curb.method import Batch, Knob, TaskData, TaskInfo, register
from curb.training import batches

from .finetune import FineTune, take_users


@register("ewc")
class EWC(FineTune):
    summary = "elastic weight consolidation: a diagonal-Fisher penalty keeps the shared backbone near past optima"
    benchmark = True  # one of the `--methods all` set
    tune_space = {"ewc.lam": Knob("log", 10.0, 1e5)}

    @dataclass
    class Config:
        lam: float = 1000.0  # λ of the penalty λ/2 Σ F (θ − θ*)²
        gamma: float = 1.0  # F <- gamma F + F_task; 1: Fisher summed over tasks, < 1: online EWC's decay
        fisher_batch: int = 1  # training users per gradient, each with all its targets (1: per-user gradients)
        fisher_users: int | None = None  # training users per task's Fisher, a seeded sample; None: all

        def __post_init__(self) -> None:
            if not self.lam >= 0 or not 0 <= self.gamma <= 1 or self.fisher_batch < 1:
                raise ValueError(f"need lam >= 0, 0 <= gamma <= 1, fisher_batch >= 1; got {self}")
            if self.fisher_users is not None and self.fisher_users < 1:
                raise ValueError("fisher_users must be >= 1 or None")

    def __init__(self, setup):
        super().__init__(setup)
        self.fisher: dict[str, Tensor] = {}  # backbone parameter name -> accumulated diagonal Fisher
        self.anchor: dict[str, Tensor] = {}  # backbone parameter name -> its value after the last task
        self.fisher_stats: dict[str, dict] = {}  # per task: users used, mean and max of its Fisher

    # ------------------------------------------------------------------ the Fisher information
    def task_fisher(self, task: TaskInfo, train: TaskData) -> dict[str, Tensor]:
        """Diagonal empirical Fisher of `task`'s loss on its training users: the mean over batches
        of `fisher_batch` users of the squared gradient of the task loss (no penalty term)."""
        cap = self.cfg.fisher_users
        if cap is not None and cap < train.n_users:
            train = take_users(train, np.sort(self.rng.choice(train.n_users, cap, replace=False)))
        params = dict(self.model.backbone.named_parameters())
        total = {n: torch.zeros_like(p) for n, p in params.items()}
        steps = 0
        for batch in self.user_batches(task, train):
            with self.autocast():
                loss = super().loss(task, batch)
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for (n, _), g in zip(params.items(), grads):
                if g is not None:
                    total[n] += g.detach().float() ** 2
            steps += 1
        flat = torch.cat([v.flatten() for v in total.values()]) / max(steps, 1)
        self.fisher_stats[task.name] = {"users": train.n_users, "batches": steps, "mean": flat.mean().item(),
                                        "max": flat.max().item()}
        return {n: v / max(steps, 1) for n, v in total.items()}

    def user_batches(self, task: TaskInfo, train: TaskData) -> Iterator[Batch]:
        """`fisher_batch` whole users per batch, in a seeded order: a next-item batch holds their
        sequences, any other batch all of their (user, target) pairs, each user encoded once. (The
        training batcher cuts steps by pairs: at 1 it would take one backward pass per pair, about
        60 per ML-1M T2 user, and square per-pair gradients instead of per-user ones.)"""
        if task.kind == "next_item":
            yield from batches(train, self.cfg.fisher_batch, self.rng, self.device)
            return
        order = self.rng.permutation(train.n_users)
        for i in range(0, train.n_users, self.cfg.fisher_batch):
            users = take_users(train, order[i:i + self.cfg.fisher_batch])
            yield from batches(users, len(users.labels), self.rng, self.device)  # one step: each user one row

    def consolidate(self, task: TaskInfo, train: TaskData) -> None:
        fisher = self.task_fisher(task, train)
        for n, p in self.model.backbone.named_parameters():
            prev = self.fisher.get(n)
            self.fisher[n] = fisher[n] if prev is None else self.cfg.gamma * prev + fisher[n]
            self.anchor[n] = p.detach().clone()

    def grow_items(self, n_new: int) -> None:
        """New item rows carry no Fisher information: they are not penalised (their anchor is moot)."""
        super().grow_items(n_new)
        if self.fisher:
            key = "item_emb.weight"
            rows = self.model.backbone.item_emb.weight.detach()[-n_new:]
            self.fisher[key] = torch.cat([self.fisher[key], torch.zeros_like(rows)])
            self.anchor[key] = torch.cat([self.anchor[key], rows.clone()])

    def penalty(self) -> Tensor:
        """λ/2 · Σ_i F_i (θ_i − θ*_i)² over the backbone; exactly 0 at the anchor."""
        terms = [(self.fisher[n] * (p - self.anchor[n]) ** 2).sum()
                 for n, p in self.model.backbone.named_parameters()]
        return 0.5 * self.cfg.lam * torch.stack(terms).sum()

    def loss(self, task: TaskInfo, batch: Batch) -> Tensor:
        loss = super().loss(task, batch)
        return loss + self.penalty() if self.fisher and self.cfg.lam else loss

    # ------------------------------------------------------------------ state
    def extra_state(self) -> dict:
        cpu = lambda d: {k: v.cpu() for k, v in d.items()}  # noqa: E731
        return {"fisher": cpu(self.fisher), "anchor": cpu(self.anchor), "fisher_stats": dict(self.fisher_stats)}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        self.fisher = {k: v.to(self.device) for k, v in state["fisher"].items()}
        self.anchor = {k: v.to(self.device) for k, v in state["anchor"].items()}
        self.fisher_stats = dict(state["fisher_stats"])

    def report(self) -> dict:
        return {"lam": self.cfg.lam, "gamma": self.cfg.gamma, "fisher": self.fisher_stats}
