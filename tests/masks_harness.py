"""Direct access to a method while it learns `synthetic-mini` (mechanism tests need the method
object, which the runner does not return): the runner's own config, splits and fit loop."""

from __future__ import annotations

import copy
import io

import torch

from curb.backbone import PlainModel
from curb.evaluator import Evaluator
from curb.method import Method, Setup, get_method
from curb.runner import CellSpec, Fitter, build_stream, resolve_config


class Harness:
    def __init__(self, method: str, order: str = "default", noise: int | None = None, **overrides: object):
        """`overrides`: config keys with '.' written as '__', e.g. conure__p="0.5" or train__lr=1e-2."""
        sets = tuple(sorted((k.replace("__", "."), str(v)) for k, v in overrides.items()))
        self.method = method
        self.spec = CellSpec(method, "synthetic-mini", order, noise, 0, None, sets)
        self.stream = build_stream(self.spec, None)
        self.cfg = resolve_config(self.spec)
        self.ev = Evaluator(self.stream, self.cfg.split, self.cfg.train.eval_batch)
        self.fit = Fitter(self.cfg, lambda *_: None)
        torch.manual_seed(123)
        self.pretrained = PlainModel(self.stream.n_items, self.cfg.backbone)  # untrained: mechanism tests only
        self.pretrained.add_head(self.stream.tasks[0].name, self.stream.n_items)

    @property
    def names(self) -> list[str]:
        return self.stream.task_names

    def new(self) -> Method:
        torch.manual_seed(0)
        setup = Setup(self.stream.n_items, self.stream.sequences.shape[1], self.cfg.backbone, self.cfg.train,
                      self.cfg.method, torch.device("cpu"), 0, pretrained_t1=lambda: copy.deepcopy(self.pretrained))
        return get_method(self.method)(setup)

    def learn(self, m: Method, *names: str) -> Method:
        for n in names:
            m.learn_task(self.ev.info(n), self.ev.train_data(n), self.ev.val_data(n), self.fit)
        return m

    def x(self, name: str, n: int = 64) -> torch.Tensor:
        """Model inputs of the first `n` training users of task `name`."""
        from curb.evaluator import model_inputs

        data = self.ev.train_data(name)
        return torch.from_numpy(model_inputs(data.task.kind, data.inputs[:n]))

    def reload(self, m: Method) -> Method:
        """A fresh instance filled from `m`'s checkpoint, written and read through torch.save."""
        buf = io.BytesIO()
        torch.save(m.state_dict(), buf)
        buf.seek(0)
        fresh = self.new()
        fresh.load_state_dict(torch.load(buf, weights_only=False))
        return fresh

    def scores_equal(self, a: Method, b: Method) -> bool:
        return all(torch.equal(a.score(t.name, self.x(t.name)), b.score(t.name, self.x(t.name))) for t in a.tasks)
