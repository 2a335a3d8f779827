"""EWC: the penalty is the Fisher-weighted squared distance to the anchor, and the Fisher is the
mean squared per-user gradient of the task loss on the task's training data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from curb.config import ConfigError
from curb.runner import CellSpec, resolve_config
from harness import Harness


def _per_user_fisher(model, data) -> dict[str, torch.Tensor]:
    """The T1 Fisher written out: one backward per training sequence, squared, averaged."""
    params = dict(model.backbone.named_parameters())
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    x_all = torch.from_numpy(data.inputs)
    for row in x_all:
        s = row[None]
        logits = model.logits("T1", s[:, :-1], all_positions=True)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), s[:, 1:].reshape(-1))
        for (n, _), g in zip(params.items(), torch.autograd.grad(loss, list(params.values()))):
            total[n] += g ** 2
    return {n: v / len(x_all) for n, v in total.items()}


def test_fisher_is_the_mean_squared_per_user_gradient_on_training_data():
    h = Harness("ewc")
    m = h.learn("T1")  # T1: the pre-trained model is loaded, then its Fisher computed
    want = _per_user_fisher(h.pretrained(), h.ev.train_data("T1"))
    assert m.fisher.keys() == want.keys()
    for n in want:
        assert torch.allclose(m.fisher[n], want[n], rtol=1e-4, atol=1e-10), n
    assert m.fisher_stats["T1"]["users"] == h.ev.train_data("T1").n_users
    on_val = _per_user_fisher(h.pretrained(), h.ev.val_data("T1"))
    assert not torch.allclose(m.fisher["blocks.0.conv1.weight"], on_val["blocks.0.conv1.weight"], rtol=1e-2)


def test_an_item_task_fisher_squares_per_user_gradients_not_per_pair_ones(monkeypatch):
    """On a task with many targets per user, one gradient per user (the loss over all its pairs),
    squared and averaged over users: the definition the docs give, at one backward pass per user."""
    h = Harness("ewc")
    m = h.method
    got = []
    real = m.task_fisher
    monkeypatch.setattr(m, "task_fisher", lambda t, d: got.append(real(t, d)) or got[-1])
    h.learn("T1", "T2")
    data = h.ev.train_data("T2")
    assert (data.ptr[1:] - data.ptr[:-1]).max() > 1  # users with several targets: pairs != users
    params = dict(m.model.backbone.named_parameters())
    want = {n: torch.zeros_like(p) for n, p in params.items()}
    for u in range(data.n_users):
        logits = m.model.logits("T2", torch.from_numpy(data.inputs[u : u + 1]))
        y = torch.from_numpy(data.labels[data.ptr[u] : data.ptr[u + 1]]).long()
        loss = -F.log_softmax(logits, dim=-1)[0, y].mean()
        for (n, _), g in zip(params.items(), torch.autograd.grad(loss, list(params.values()), allow_unused=True)):
            if g is not None:
                want[n] += g ** 2
    for n in want:
        assert torch.allclose(got[1][n], want[n] / data.n_users, rtol=1e-4, atol=1e-10), n
    assert m.fisher_stats["T2"]["batches"] == data.n_users


def test_penalty_is_zero_at_the_anchor_and_grows_with_the_fisher_weighted_distance():
    h = Harness("ewc", **{"ewc.lam": "250"})
    m = h.learn("T1", "T2")
    assert m.penalty().item() == 0.0  # θ = θ* right after consolidation, exactly
    w = m.model.backbone.blocks[1].conv2.weight
    f = m.fisher["blocks.1.conv2.weight"]
    g = torch.Generator().manual_seed(0)
    delta = torch.zeros_like(w)
    idx = torch.randperm(w.numel(), generator=g)[:50]
    delta.view(-1)[idx] = torch.randn(50, generator=g) * 0.1
    assert (f.view(-1)[idx] > 0).sum() >= 10  # (some ReLU units never fire: their Fisher is 0)
    zero = (f == 0) & (delta == 0)
    with torch.no_grad():  # moving only entries without Fisher information costs nothing
        w.add_(zero * 0.5)
        assert m.penalty().item() == 0.0
        w.sub_(zero * 0.5)
        w.add_(delta)
    want = 0.5 * 250 * float((f.double() * delta.double() ** 2).sum())  # by hand
    assert m.penalty().item() == pytest.approx(want, rel=1e-4)
    with torch.no_grad():
        w.add_(delta)  # twice the distance: four times the penalty
    assert m.penalty().item() == pytest.approx(4 * want, rel=1e-4)
    loss = m.loss(h.ev.info("T2"), h.batch("T2"))
    plain = super(type(m), m).loss(h.ev.info("T2"), h.batch("T2"))
    assert (loss - plain).item() == pytest.approx(4 * want, rel=1e-3)


@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_fisher_accumulates_over_tasks_summed_or_decayed(gamma, monkeypatch):
    h = Harness("ewc", **{"ewc.gamma": str(gamma)})
    m = h.method
    per_task = []
    real = m.task_fisher
    monkeypatch.setattr(m, "task_fisher", lambda t, d: per_task.append(real(t, d)) or per_task[-1])
    h.learn("T1", "T2", "T3")
    f1, f2, f3 = (p["blocks.0.conv1.weight"] for p in per_task)
    want = gamma * (gamma * f1 + f2) + f3
    assert torch.allclose(m.fisher["blocks.0.conv1.weight"], want, rtol=1e-6)
    anchor = m.anchor["blocks.0.conv1.weight"]
    assert torch.equal(anchor, m.model.backbone.blocks[0].conv1.weight)  # the anchor is the latest task's


def test_fisher_users_is_a_seeded_sample_of_training_users():
    a = Harness("ewc", **{"ewc.fisher_users": "40"}).learn("T1")
    b = Harness("ewc", **{"ewc.fisher_users": "40"}).learn("T1")
    assert a.fisher_stats["T1"]["users"] == 40
    assert all(torch.equal(a.fisher[k], b.fisher[k]) for k in a.fisher)


def _drift(lam: str) -> float:
    """Fisher-weighted squared distance from the T1 anchor after learning T2."""
    h = Harness("ewc", **{"ewc.lam": lam, "train.epochs": "3", "train.patience": "3"})
    m = h.learn("T1")
    fisher = {k: v.clone() for k, v in m.fisher.items()}
    anchor = {k: v.clone() for k, v in m.anchor.items()}
    h.learn("T2")
    return sum(float((fisher[n] * (p.detach() - anchor[n]) ** 2).sum()) for n, p in m.model.backbone.named_parameters())


def test_the_penalty_keeps_the_backbone_near_the_anchor():
    free, held = _drift("0"), _drift("1000000")
    assert held < 0.2 * free, (held, free)


def test_old_heads_do_not_change_and_save_load_round_trips():
    h = Harness("ewc")
    h.learn("T1")
    head = {k: v.clone() for k, v in h.method.model.heads["T1"].state_dict().items()}
    h.learn("T2")
    assert all(torch.equal(v, h.method.model.heads["T1"].state_dict()[k]) for k, v in head.items())
    fresh = h.reload()
    assert h.scores_equal(h.method, fresh)
    assert fresh.penalty().item() == h.method.penalty().item() == 0.0


@pytest.mark.parametrize("bad", [("ewc.lam", "-1"), ("ewc.gamma", "1.5"), ("ewc.fisher_batch", "0"),
                                 ("ewc.fisher_users", "0")])
def test_invalid_knobs_are_config_errors(bad):
    with pytest.raises(ConfigError):
        resolve_config(CellSpec("ewc", "synthetic-mini", overrides=(bad,)))


def _grouped_fisher(model, head, group_loss, data, order, size) -> tuple[dict[str, torch.Tensor], int]:
    """The Fisher written out for `size` users per gradient: users taken in `order`, cut into groups of
    `size` (the last one shorter), one backward of the group's loss each, squared, averaged over groups."""
    params = dict(model.backbone.named_parameters())
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    groups = [order[i:i + size] for i in range(0, len(order), size)]
    for users in groups:
        loss = group_loss(model, head, data, users)
        for (n, _), g in zip(params.items(), torch.autograd.grad(loss, list(params.values()), allow_unused=True)):
            if g is not None:
                total[n] += g ** 2
    return {n: v / len(groups) for n, v in total.items()}, len(groups)


def _next_item_group_loss(model, head, data, users):
    """Mean next-item CE over every position of the group's sequences (T1's training loss)."""
    s = torch.from_numpy(data.inputs[users])
    logits = model.logits(head, s[:, :-1], all_positions=True)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), s[:, 1:].reshape(-1))


def _pair_group_loss(model, head, data, users):
    """Mean CE over every (user, target) pair of the group's users (an item task's training loss)."""
    logp = F.log_softmax(model.logits(head, torch.from_numpy(data.inputs[users])), dim=-1)
    terms = [logp[r, torch.from_numpy(data.labels[data.ptr[u]:data.ptr[u + 1]]).long()]
             for r, u in enumerate(users)]
    return -torch.cat(terms).mean()


@pytest.mark.parametrize("size", [4, 3])
def test_fisher_batch_squares_the_gradient_of_each_group_of_users(size):
    """fisher_batch=k: F = mean over seeded groups of k users of the squared group-loss gradient; ceil(n/k) batches."""
    h = Harness("ewc", **{"ewc.fisher_batch": str(size)})
    m = h.method
    replay = np.random.default_rng()
    replay.bit_generator.state = m.rng.bit_generator.state  # the order the method will draw first
    h.learn("T1")
    d1 = h.ev.train_data("T1")
    want, groups = _grouped_fisher(h.pretrained(), "T1", _next_item_group_loss, d1, replay.permutation(d1.n_users),
                                   size)
    assert groups == math.ceil(d1.n_users / size) and groups < d1.n_users
    assert m.fisher.keys() == want.keys()
    for n in want:
        assert torch.allclose(m.fisher[n], want[n], rtol=1e-4, atol=1e-10), n
    assert m.fisher_stats["T1"]["batches"] == groups and m.fisher_stats["T1"]["users"] == d1.n_users
    # an item task, straight from its start (no fitting): each group's loss is the mean over all its pairs
    t2, d2 = h.ev.info("T2"), h.ev.train_data("T2")
    m.tasks.append(t2)
    m.begin_task(t2)
    replay.bit_generator.state = m.rng.bit_generator.state
    got = m.task_fisher(t2, d2)
    want2, groups2 = _grouped_fisher(m.model, "T2", _pair_group_loss, d2, replay.permutation(d2.n_users), size)
    assert groups2 == math.ceil(d2.n_users / size)
    for n in want2:
        assert torch.allclose(got[n], want2[n], rtol=1e-4, atol=1e-10), n
    assert m.fisher_stats["T2"]["batches"] == groups2
    per_user, _ = _grouped_fisher(m.model, "T2", _pair_group_loss, d2, np.arange(d2.n_users), 1)
    assert float(got["blocks.0.conv1.weight"].sum()) < float(per_user["blocks.0.conv1.weight"].sum())  # averaged first
