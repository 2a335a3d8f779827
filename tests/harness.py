"""A method on `synthetic-mini` with the runner's own config, splits, evaluator and fit loop, driven
task by task from a test: mechanism tests need to stop between tasks and look inside the method
object, which the runner does not return."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
import torch

from curb.backbone import PlainModel
from curb.evaluator import Evaluator, model_inputs
from curb.method import Batch, Method, Setup, get_method
from curb.runner import CellSpec, Fitter, _t1_provider, build_stream, resolve_config
from curb.training import batches


class Harness:
    """`Harness("hat", **{"hat.clamp": "0.5"})`: overrides are config keys as in `--set` and `run_mini`.

    `t1_cache=None` gives the method an untrained random T1 model (enough for mechanism tests and
    costs no training); a folder gives it the runner's real pre-trained T1, trained once and
    cached there (tests that need a T1 that has learned something, or the runner's exact start).
    """

    def __init__(self, method: str, t1_cache: Path | None = None, dataset: str = "synthetic-mini", **overrides: object):
        self.spec = CellSpec(method, dataset, overrides=tuple(sorted((k, str(v)) for k, v in overrides.items())))
        self.stream = build_stream(self.spec, None)
        self.cfg = resolve_config(self.spec)
        self.ev = Evaluator(self.stream, self.cfg.split, self.cfg.train.eval_batch)
        self.fit = Fitter(self.cfg, lambda *_: None)
        t1 = self.stream.tasks[0].name
        if t1_cache is None:
            torch.manual_seed(123)
            plain = PlainModel(self.stream.vocab_at(0), self.cfg.backbone)
            plain.add_head(t1, self.stream.tasks[0].n_labels)
            provider = lambda: copy.deepcopy(plain)  # noqa: E731
        else:
            provider = _t1_provider(self.stream, self.ev.train_data(t1), self.ev.val_data(t1), self.cfg, 0,
                                    torch.device("cpu"), Path(t1_cache), self.fit)
        self.setup = Setup(self.stream.vocab_at(0), self.stream.sequences.shape[1], self.cfg.backbone, self.cfg.train,
                           self.cfg.method, torch.device("cpu"), 0, pretrained_t1=provider)
        self.method = self.fresh()

    @property
    def names(self) -> list[str]:
        return self.stream.task_names

    def pretrained(self) -> PlainModel:
        """A fresh copy of the T1 model the method starts from."""
        return self.setup.pretrained_t1()

    def fresh(self) -> Method:
        """A new instance with the same setup and seed (the same initial weights as `self.method`)."""
        torch.manual_seed(0)
        return get_method(self.spec.method)(self.setup)

    def learn(self, *names: str, method: Method | None = None) -> Method:
        """Learns the tasks `names` in turn (on `self.method` unless `method` is given); returns it.
        As the runner does, the method first grows to the vocabulary known at each task."""
        m = self.method if method is None else method
        for n in names:
            m.extend_items(self.stream.vocab_at(self.names.index(n)))
            m.learn_task(self.ev.info(n), self.ev.train_data(n), self.ev.val_data(n), self.fit)
        return m

    def x(self, name: str, n: int = 64) -> torch.Tensor:
        """Model inputs of the first `n` training users of task `name`."""
        data = self.ev.train_data(name)
        return torch.from_numpy(model_inputs(data.task.kind, data.inputs[:n]))

    def batch(self, name: str, index: int = 0) -> Batch:
        """The `index`-th training batch of task `name` (drawn with a fixed generator)."""
        for b in batches(self.ev.train_data(name), self.fit.train_cfg.batch, np.random.default_rng(123),
                         self.method.device):
            if b.index == index:
                return b
        raise IndexError(index)

    def reload(self, method: Method | None = None) -> Method:
        """A fresh instance filled from the checkpoint of `method` (default `self.method`), written
        and read through torch.save as the runner's checkpoints are."""
        buf = io.BytesIO()
        torch.save((self.method if method is None else method).state_dict(), buf)
        buf.seek(0)
        out = self.fresh()
        out.load_state_dict(torch.load(buf, weights_only=False))
        return out

    def scores(self, method: Method | None = None) -> dict[str, torch.Tensor]:
        """Raw test-user scores of every task `method` (default `self.method`) has learned."""
        m = self.method if method is None else method
        out = {}
        for t in m.tasks:
            data = self.ev._data(t.name, "test")
            out[t.name] = m.score(t.name, torch.from_numpy(model_inputs(t.kind, data.inputs)))
        return out

    def scores_equal(self, a: Method, b: Method) -> bool:
        """Same learned tasks and bit-identical test scores on every one of them."""
        sa, sb = self.scores(a), self.scores(b)
        return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def fits_without_clocks(fits: list[dict]) -> list[list[dict]]:
    """Every round of a result's `fits` without its wall and CPU seconds: what a resumed run must
    reproduce exactly (the clocks differ from run to run)."""
    return [[{k: v for k, v in e.items() if k not in ("seconds", "cpu_seconds")} for e in f["epochs"]] for f in fits]


class Spy:
    """Stands in for a loss function (monkeypatched): records each call's positional arguments
    (tensors detached) and result, and returns the real loss, so training goes on unchanged."""

    def __init__(self, real):
        self.real, self.calls, self.outs = real, [], []

    def __call__(self, *args, **kw):
        self.calls.append(tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args))
        out = self.real(*args, **kw)
        self.outs.append(out.detach().clone())
        return out


def assert_cap_keeps_the_first_users(m: Method, task, batch: Batch, spy: Spy, cap: int, exact_targets: bool) -> None:
    """`kr_max_users=cap` (TERACON, DITTO): each of the two past tasks' distillation MSE terms of
    one step on `batch` reads `cap` users, and they are the first `cap` rows of the same step
    uncapped (same draw: the method's generator is rewound), which reads every user. With
    `exact_targets` the capped targets are those rows bit for bit (DITTO's are; TERACON's agree
    to 1e-6)."""
    state = copy.deepcopy(m.rng.bit_generator.state)
    m.loss(task, batch)
    capped = list(spy.calls)
    assert [(len(x), len(y)) for x, y in capped] == [(cap, cap)] * 2
    assert m._stats.users.tolist() == [cap, cap]
    spy.calls.clear()
    m.cfg.kr_max_users = None
    m.rng.bit_generator.state = state
    m.loss(task, batch)
    n = len(batch.x)
    assert n > cap and [(len(x), len(y)) for x, y in spy.calls] == [(n, n)] * 2
    for (xc, yc), (xu, yu) in zip(capped, spy.calls):
        assert torch.allclose(xc, xu[:cap], atol=1e-6)
        assert torch.equal(yc, yu[:cap]) if exact_targets else torch.allclose(yc, yu[:cap], atol=1e-6)
