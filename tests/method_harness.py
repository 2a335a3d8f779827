"""A method wired to the real evaluator, fitter and cached pre-trained T1 model of `synthetic-mini`,
driven task by task from a test (mechanism tests need to stop between tasks and look inside)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from curb.evaluator import Evaluator
from curb.method import Batch, Method, Setup, get_method
from curb.runner import CellSpec, Fitter, _t1_provider, build_stream, resolve_config
from curb.training import batches


@dataclass
class Harness:
    method: Method
    ev: Evaluator
    fit: Fitter
    spec: CellSpec

    def learn(self, *names: str) -> None:
        for n in names:
            self.method.learn_task(self.ev.info(n), self.ev.train_data(n), self.ev.val_data(n), self.fit)

    def batch(self, name: str, index: int = 0) -> Batch:
        """The `index`-th training batch of task `name` (drawn with a fixed generator)."""
        it = batches(self.ev.train_data(name), self.fit.train_cfg.batch, np.random.default_rng(123), self.method.device)
        for b in it:
            if b.index == index:
                return b
        raise IndexError(index)

    def fresh(self) -> Method:
        """A new instance with the same setup (for save/load round trips)."""
        return type(self.method)(self.method.setup)

    def scores(self, method: Method | None = None) -> dict[str, torch.Tensor]:
        """Raw test-user scores of every learned task."""
        m = method or self.method
        out = {}
        for t in m.tasks:
            x = torch.from_numpy(self.ev._data(t.name, "test").inputs)
            out[t.name] = m.score(t.name, x[:, :-1] if t.kind == "next_item" else x)
        return out


def harness(method: str, cache: Path, seed: int = 0, **overrides) -> Harness:
    spec = CellSpec(method, "synthetic-mini", seed=seed,
                    overrides=tuple(sorted((k, str(v)) for k, v in overrides.items())))
    cfg = resolve_config(spec)
    stream = build_stream(spec, None)
    ev = Evaluator(stream, cfg.split, cfg.train.eval_batch)
    fit = Fitter(cfg, lambda *_: None)
    t1 = stream.tasks[0].name
    torch.manual_seed(seed)
    setup = Setup(stream.n_items, stream.sequences.shape[1], cfg.backbone, cfg.train, cfg.method, torch.device("cpu"),
                  seed, pretrained_t1=_t1_provider(stream, ev.train_data(t1), ev.val_data(t1), cfg, seed,
                                                   torch.device("cpu"), Path(cache), fit))
    return Harness(get_method(method)(setup), ev, fit, spec)
