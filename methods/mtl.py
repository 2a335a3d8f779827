"""MTL (docs/protocol.md §6.4): every task after T1 learned jointly, one shared backbone, one head each.

Not continual: it needs the whole stream up front (`joint = True`; the runner calls
`learn_joint` once and reports R only at the end, FWT/BWT not applicable, T1 not reported).
No reference code exists; curb's documented design (UNSURE in the spec, all knobs):
- backbone from scratch (`mtl_init=scratch`) or from the pre-trained T1 model (`t1`); no T1 loss;
- each step draws one mini-batch of EVERY task (round-robin, smaller tasks cycle) and
  minimises sum_i w_i CE_i; an epoch is one pass over the largest task;
- model selection as for every method (docs/protocol.md §4.4) on the mean over tasks of the
  validation criterion (cross-entropy, the joint objective, or the metric), best round restored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Literal

import numpy as np
import torch
from torch import Tensor, nn

from curb.backbone import PlainModel
from curb.method import Batch, Knob, Method, OneModelViews, Setup, TaskData, TaskInfo, adam, register
from curb.training import FitLog, batches, select


@register("mtl")
class MTL(OneModelViews, Method):
    summary = "multi-task learning: all tasks after T1 jointly (not continual: needs the whole stream up front)"
    benchmark = True  # one of the `--methods all` set
    joint = True
    joint = True
    tune_space = {"mtl.mtl_init": Knob("choice", choices=("scratch", "t1"))}

    @dataclass
    class Config:
        mtl_init: Literal["scratch", "t1"] = "scratch"
        mtl_task_weights: tuple[float, ...] = ()  # one weight per task after T1; empty: all 1

        def __post_init__(self) -> None:
            if any(not w >= 0 for w in self.mtl_task_weights):
                raise ValueError(f"mtl_task_weights must be >= 0, got {self.mtl_task_weights}")

    def __init__(self, setup: Setup):
        super().__init__(setup)
        self.model = PlainModel(setup.n_items, setup.backbone).to(self.device)
        self._val_per_task: list[dict[str, float]] = []  # per round, for the result's fit log

    def weights(self) -> list[float]:
        w = self.cfg.mtl_task_weights
        if not w:
            return [1.0] * len(self.tasks)
        if len(w) != len(self.tasks):
            raise ValueError(f"mtl_task_weights has {len(w)} values for {len(self.tasks)} tasks "
                             f"({', '.join(t.name for t in self.tasks)})")
        return list(w)

    def joint_loss(self, batch_of: list[Batch]) -> Tensor:
        """sum_i w_i CE_i over one mini-batch of every task (aligned with `self.tasks`)."""
        return sum(w * self.head_loss(t, self.represent(t.name, b.x, train=True, all_positions=b.rows is None), b)
                   for t, b, w in zip(self.tasks, batch_of, self.weights()))

    def _endless(self, data: TaskData) -> Iterator[Batch]:
        """Batches of `data`, reshuffled and restarted whenever a pass ends."""
        t = self.setup.train
        size = t.t1_batch if data.task.kind == "next_item" else t.batch
        while True:
            yield from batches(data, size, self.rng, self.device, t.pairs_per_user)

    def train_epoch(self, trains: list[TaskData], opt: torch.optim.Optimizer,
                    loss_fn: Callable[[list[Batch]], Tensor]) -> tuple[float, int]:
        streams = [self._endless(d) for d in trains]
        step_batches = [next(s) for s in streams]
        n_steps = max(b.n_batches for b in step_batches)  # one pass over the largest task
        total, done = 0.0, 0
        for step in range(n_steps):
            if step:
                step_batches = [next(s) for s in streams]
            with self.autocast():  # train.precision, as in the shared loop
                loss = loss_fn(step_batches)
            opt.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                continue
            loss.backward()
            opt.step()
            total += loss.item()
            done += 1
        return total / max(done, 1), done

    def learn_joint(self, tasks: list[TaskInfo], trains: list[TaskData], vals: list[TaskData], fit) -> None:
        self.tasks = list(tasks)
        self.weights()  # validate against the stream before any training
        if self.cfg.mtl_init == "t1":
            self.model.backbone.load_state_dict(self.setup.pretrained_t1().backbone.state_dict())
        for t in tasks:
            self.model.add_head(t.name, t.n_labels)
        opt = adam(self.model.parameters(), fit.train_cfg.lr)
        loss_fn = torch.compile(self.joint_loss, dynamic=True) if fit.train_cfg.compile else self.joint_loss
        key = "+".join(t.name for t in tasks)
        checkpoint, resume = fit.phase_progress(self, key, "joint")  # resumes after its last finished round

        def validate() -> dict[str, float]:
            """Mean over tasks of the metric and of the validation CE (the joint objective)."""
            got = [fit.validate(self, t, v) for t, v in zip(tasks, vals)]
            self._val_per_task.append({t.name: g[t.metric] for t, g in zip(tasks, got)})
            return {"val": float(np.mean([g[t.metric] for t, g in zip(tasks, got)])),
                    **({"loss": float(np.mean([g["loss"] for g in got]))} if "loss" in got[0] else {})}

        echo = getattr(fit, "echo", None)
        log = select(self, opt, FitLog(key, "joint"), lambda: self.train_epoch(trains, opt, loss_fn), validate,
                     fit.selection(None), checkpoint=checkpoint, resume=resume,
                     progress=None if echo is None else (lambda msg: echo(f"  [{self.name}] {msg}")))
        fit.logs.append({**log.as_dict(), "val_per_task": self._val_per_task})

    def phase_state(self) -> dict:
        return {"val_per_task": list(self._val_per_task)}

    def load_phase_state(self, state: dict) -> None:
        self._val_per_task = list(state["val_per_task"])

    def trainable_parameters(self, task: TaskInfo):
        return self.model.parameters()

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def load_extra_state(self, state: dict) -> None:
        for t in self.tasks:
            if t.name not in self.model.heads:
                self.model.add_head(t.name, t.n_labels)

    def report(self) -> dict:
        return {"init": self.cfg.mtl_init, "task_weights": self.weights() if self.tasks else []}
