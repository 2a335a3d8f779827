"""LwF: old heads are distilled from a frozen snapshot taken before the task, on the new task's
inputs, with the paper's temperature-softened cross-entropy; the warm-up trains the new head only."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import curb.methods.lwf as lwf
from curb.method import task_loss
from curb.training import train_epoch
from harness import Harness, Spy


def _start(h: Harness, name: str):
    """Begin task `name` without fitting it: the state right before its first step."""
    m, t = h.method, h.ev.info(name)
    m.tasks.append(t)
    m.begin_task(t)
    m.phase = "train"
    m._set_trainable()
    return m, t


def test_distillation_targets_are_the_frozen_snapshots_outputs_on_the_batch(monkeypatch):
    h = Harness("lwf")
    h.learn("T1", "T2")
    before = copy.deepcopy(h.method.model)
    m, t3 = _start(h, "T3")
    for k, v in before.state_dict().items():  # the snapshot is the model before T3, bit for bit
        assert torch.equal(m.old.state_dict()[k], v)
    spy = Spy(lwf.soft_cross_entropy)
    monkeypatch.setattr(lwf, "soft_cross_entropy", spy)
    b = h.batch("T3")
    m.loss(t3, b)
    (s1, t1, temp1), (s2, t2, _) = spy.calls  # T1's head, then T2's
    assert temp1 == 2.0
    assert torch.equal(t1, before.logits("T1", b.x[:, :-1]))  # a next-item head reads x[:, :-1]
    assert torch.equal(t2, before.logits("T2", b.x))
    assert t1.shape == (len(b.x), h.ev.info("T1").n_labels)
    # After a whole fit the snapshot has not moved and takes no gradient; the model has moved.
    h.fit(m, t3, h.ev.train_data("T3"), h.ev.val_data("T3"), max_epochs=2)
    for k, v in before.state_dict().items():
        assert torch.equal(m.old.state_dict()[k], v)
    assert not any(p.requires_grad for p in m.old.parameters())
    assert not torch.equal(m.model.backbone.blocks[0].conv1.weight, before.backbone.blocks[0].conv1.weight)
    assert not torch.equal(m.model.heads["T1"].weight, before.heads["T1"].weight)  # old heads train too


def test_loss_is_ce_plus_lambda_times_the_softened_cross_entropy_of_each_old_head():
    h = Harness("lwf", **{"lwf.lam": "0.3", "lwf.temperature": "3"})
    h.learn("T1")
    m, t2 = _start(h, "T2")
    with torch.no_grad():  # make the student differ from the snapshot, so the term is not trivial
        m.model.heads["T1"].bias.add_(torch.randn_like(m.model.heads["T1"].bias))
    b = h.batch("T2")
    x1 = b.x[:, :-1]
    p = F.softmax(m.old.logits("T1", x1) / 3, dim=-1)
    kd = -(p * F.log_softmax(m.model.logits("T1", x1) / 3, dim=-1)).sum(-1).mean()
    ce = task_loss(m.model.logits("T2", b.x), b)
    assert m.loss(t2, b).item() == pytest.approx((ce + 0.3 * kd).item(), rel=1e-5)


def test_warmup_trains_the_new_head_alone_and_lambda_zero_is_plain_ce():
    h = Harness("lwf", **{"lwf.lam": "0"})
    h.learn("T1")
    m, t2 = _start(h, "T2")
    b = h.batch("T2")
    assert torch.equal(m.loss(t2, b), task_loss(m.model.logits("T2", b.x), b))
    m.phase = "warmup"
    m._set_trainable()
    before = copy.deepcopy(m.model.state_dict())
    opt = m.make_optimizer(t2)
    train_epoch(m, t2, h.ev.train_data("T2"), opt, h.fit.train_cfg.batch)
    after = m.model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved == {"heads.T2.weight", "heads.T2.bias"}


def test_a_full_task_runs_both_phases_and_round_trips(run_mini):
    r = run_mini("lwf")
    phases = [(f["task"], f["phase"]) for f in r["fits"]]
    assert ("T2", "warmup") in phases and ("T2", "train") in phases
    h = Harness("lwf")
    h.learn("T1", "T2")
    assert h.method.old is None and h.method.phase is None
    assert h.scores_equal(h.method, h.reload())


def _t1_drift(lam: str) -> float:
    """Mean squared change of T1's scores over 4 fixed epochs of T2 (no model selection)."""
    h = Harness("lwf", **{"lwf.lam": lam})
    h.learn("T1")
    x = torch.from_numpy(h.ev.val_data("T1").inputs[:, :-1])
    ref = h.method.score("T1", x)
    m, t2 = _start(h, "T2")
    opt = m.make_optimizer(t2)
    for _ in range(4):
        train_epoch(m, t2, h.ev.train_data("T2"), opt, h.fit.train_cfg.batch)
    return F.mse_loss(m.score("T1", x), ref).item()


def test_distillation_reduces_drift_of_old_outputs():
    free, kept = _t1_drift("0"), _t1_drift("5")
    assert kept < 0.5 * free, (kept, free)


def test_warmup_false_runs_only_the_joint_phase_with_distillation_from_the_first_step():
    """warmup=false: one fit, phase "train", and the first step's loss is CE + λ·H(softmax(z̃_T1/T)) (distillation on)."""
    h = Harness("lwf", **{"lwf.warmup": "false", "lwf.lam": "0.5", "lwf.temperature": "2"})
    h.learn("T1")
    m, real = h.method, h.fit
    calls, first = [], {}
    real_loss = m.loss

    def spy(task, batch):
        out = real_loss(task, batch)
        if not first:  # the first training step: the model is still the snapshot, plus the new head
            x1 = batch.x[:, :-1]
            with torch.no_grad():
                ce = task_loss(m.model.logits("T2", batch.x), batch)
                p = F.softmax(m.model.logits("T1", x1) / 2, dim=-1)
                entropy = -(p * p.log()).sum(-1).mean()
            first.update(loss=out.item(), ce=ce.item(), entropy=entropy.item())
        return out

    def fit(method, task, train, val, phase="train", **kw):
        calls.append((task.name, phase, method.phase, method.model.backbone.blocks[0].conv1.weight.requires_grad))
        return real(method, task, train, val, phase=phase, max_epochs=1)

    m.loss = spy
    h.fit = fit
    h.learn("T2")
    assert calls == [("T2", "train", "train", True)]
    assert first["entropy"] > 0.1
    assert first["loss"] == pytest.approx(first["ce"] + 0.5 * first["entropy"], rel=1e-5)
    assert abs(first["loss"] - first["ce"]) > 0.05
