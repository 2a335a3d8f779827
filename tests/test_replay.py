"""Replay (DER++): a fixed, seeded buffer of training users per task, with the logits of the moment
they were stored, replayed as an MSE on those logits and a CE on their labels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import curb.methods.replay as replay_module
from curb.evaluator import model_inputs
from curb.method import task_loss
from curb.training import batches
from harness import Harness


def _buffers(h: Harness) -> dict:
    return {k: (b.rows.copy(), b.data.inputs.copy()) for k, b in h.method.buffers.items()}


def test_buffer_keeps_the_stated_number_of_training_users_per_task():
    h = Harness("replay", **{"replay.users": "25"})
    h.learn("T1", "T2", "T3", "T4")
    for name, b in h.method.buffers.items():
        train = h.ev.train_data(name)
        assert b.data.n_users == len(b.rows) == 25 and len(np.unique(b.rows)) == 25
        assert np.array_equal(b.data.inputs, train.inputs[b.rows])
        for k, r in enumerate(b.rows):  # each stored user keeps exactly its training labels
            assert np.array_equal(b.data.labels[b.data.ptr[k]:b.data.ptr[k + 1]], train.labels[train.ptr[r]:train.ptr[r + 1]])
        held_out = {row.tobytes() for part in ("val", "test") for row in h.ev._data(name, part).inputs}
        assert not any(row.tobytes() in held_out for row in b.data.inputs), name  # no validation or test user
    small = Harness("replay", **{"replay.users": "100000"}).learn("T1", "T2")
    assert small.buffers["T2"].data.n_users == h.ev.train_data("T2").n_users  # all, when a task has fewer


def test_buffer_is_seeded():
    a, b = Harness("replay"), Harness("replay")
    a.learn("T1", "T2")
    b.learn("T1", "T2")
    c = Harness("replay")
    c.setup = dataclasses.replace(c.setup, seed=1)
    c.method = c.fresh()
    c.learn("T1", "T2")
    ba, bb, bc = _buffers(a), _buffers(b), _buffers(c)
    assert all(np.array_equal(ba[k][0], bb[k][0]) for k in ba)
    assert not all(np.array_equal(ba[k][0], bc[k][0]) for k in ba)


def test_stored_logits_are_the_models_output_when_stored_and_never_recomputed():
    h = Harness("replay")
    m = h.learn("T1")
    x = torch.from_numpy(model_inputs("next_item", m.buffers["T1"].data.inputs))
    assert torch.equal(m.buffers["T1"].logits, m.score("T1", x))
    stored = m.buffers["T1"].logits.clone()
    h.learn("T2")
    assert torch.equal(m.buffers["T1"].logits, stored)
    assert not torch.allclose(m.score("T1", x), stored)  # the model moved; the buffer did not
    x2 = torch.from_numpy(m.buffers["T2"].data.inputs)
    assert torch.equal(m.buffers["T2"].logits, m.score("T2", x2))


def _start_t3_after_moving_the_backbone(h, m):
    """Nudge the backbone (so the stored logits differ from the current ones), begin T3; returns
    T3's info and its first training batch."""
    with torch.no_grad():
        for p in m.model.backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    t3 = h.ev.info("T3")
    m.tasks.append(t3)
    m.begin_task(t3)
    return t3, h.batch("T3")


@pytest.mark.parametrize("alpha,beta", [(0.0, 0.0), (0.7, 0.0), (0.0, 0.4), (0.7, 0.4)])
def test_loss_is_ce_plus_the_mean_over_old_tasks_of_the_weighted_replay_terms(alpha, beta):
    h = Harness("replay", **{"replay.users": "20", "replay.batch_users": "1000", "replay.alpha": str(alpha),
                             "replay.beta": str(beta)})
    m = h.learn("T1", "T2")
    t3, b = _start_t3_after_moving_the_backbone(h, m)
    want = task_loss(m.model.logits("T3", b.x), b)
    terms = []
    for name in ("T1", "T2"):  # batch_users >= buffer: every stored user, in some order (means are order-free)
        buf = m.buffers[name]
        x = torch.from_numpy(model_inputs(buf.data.task.kind, buf.data.inputs))
        mse = F.mse_loss(m.model.logits(name, x), buf.logits)
        full = next(batches(buf.data, 1 << 40, np.random.default_rng(0), m.device))
        ce = task_loss(m.model.logits(name, full.x, all_positions=full.rows is None), full)
        terms.append(alpha * mse + beta * ce)
    if alpha or beta:
        want = want + torch.stack(terms).mean()
    assert m.loss(t3, b).item() == pytest.approx(want.item(), rel=1e-5)


def test_replay_runs_end_to_end_and_round_trips(run_mini):
    r = run_mini("replay", **{"replay.users": "30"})
    assert r["method_report"]["buffer_users"] == {t["name"]: 30 for t in r["tasks"]}
    h = Harness("replay")
    h.learn("T1", "T2")
    fresh = h.reload()
    assert h.scores_equal(h.method, fresh)
    assert all(torch.equal(fresh.buffers[k].logits, h.method.buffers[k].logits) for k in fresh.buffers)


def test_each_step_draws_two_distinct_samples_of_batch_users_without_replacement_per_old_task(monkeypatch):
    """Per old task: draw 1 (logit MSE vs its stored logits), then draw 2 (label CE), each batch_users without replacement."""
    alpha, beta, k = 0.7, 0.4, 5
    h = Harness("replay", **{"replay.users": "20", "replay.batch_users": str(k), "replay.alpha": str(alpha),
                             "replay.beta": str(beta)})
    m = h.learn("T1")
    t2 = h.ev.info("T2")  # T2's buffer without training T2 (a no-op fit): the buffer is what matters here
    m.learn_task(t2, h.ev.train_data("T2"), h.ev.val_data("T2"), lambda *a, **kw: None)
    t3, b = _start_t3_after_moving_the_backbone(h, m)
    mse_x, ce_batches = {}, {}
    real_logits, real_head_loss = m.forward_logits, m.head_loss

    def spy_logits(task, x, **kw):
        if task != "T3":
            mse_x.setdefault(task, []).append(x.clone())
        return real_logits(task, x, **kw)

    def spy_head_loss(task, hidden, batch):
        out = real_head_loss(task, hidden, batch)
        ce_batches.setdefault(task.name, []).append((batch, out.detach()))
        return out

    mse_calls, real_mse = [], F.mse_loss

    def spy_mse(z, target, *a, **kw):
        out = real_mse(z, target, *a, **kw)
        mse_calls.append((target.clone(), out.detach()))
        return out

    monkeypatch.setattr(m, "forward_logits", spy_logits)
    monkeypatch.setattr(m, "head_loss", spy_head_loss)
    monkeypatch.setattr(replay_module.F, "mse_loss", spy_mse)
    ref = np.random.default_rng()
    ref.bit_generator.state = m.rng.bit_generator.state
    got = m.loss(t3, b)
    monkeypatch.undo()
    assert len(mse_calls) == 2  # one logit term per old task, in stream order

    bb, heads = m.model.backbone, m.model.heads
    z3 = heads["T3"](bb.read(b.x))
    want_ce = -F.log_softmax(z3, dim=-1)[b.rows, b.y].mean()  # one CE term per (user, target) pair
    terms = []
    for name in ("T1", "T2"):
        buf = m.buffers[name]
        inputs, n = buf.data.inputs, buf.data.n_users
        assert n == 20 > k and len({r.tobytes() for r in inputs}) == n  # rows identify the stored users
        first = ref.choice(n, k, replace=False)
        second = ref.choice(n, k, replace=False)
        assert set(first.tolist()) != set(second.tolist())  # the draws differ (so reusing one would show)
        seqs1 = torch.from_numpy(inputs[first])
        x1 = seqs1[:, :-1] if name == "T1" else seqs1  # T1: the last item is the scored target
        # the logit term reads exactly draw 1, in the draw's order (paired with its stored logits)
        (seen,) = mse_x[name]
        assert torch.equal(seen, x1)
        stored = buf.logits[torch.from_numpy(first)]
        mse = ((heads[name](bb.read(x1)) - stored) ** 2).mean()
        target, term = mse_calls.pop(0)
        assert torch.equal(target, stored) and term.item() == pytest.approx(mse.item(), rel=1e-5)
        # the label term reads exactly the users of draw 2 (in a shuffled order), all their labels
        ((batch, term),) = ce_batches[name]
        seqs2 = inputs[second]
        labels2 = [buf.data.labels[buf.data.ptr[r]:buf.data.ptr[r + 1]] for r in second]
        if name == "T1":  # next item: every position of the sequence without its last item
            assert batch.rows is None
            assert sorted(map(tuple, batch.x.tolist())) == sorted(map(tuple, seqs2[:, :-1].tolist()))
            s2 = torch.from_numpy(seqs2)
            z = heads[name](bb(s2[:, :-1]))
            ce = F.cross_entropy(z.reshape(-1, z.shape[-1]), s2[:, 1:].reshape(-1))  # padding targets count
        else:
            assert sorted(map(tuple, batch.x.tolist())) == sorted(map(tuple, seqs2.tolist()))
            assert sorted(batch.y.tolist()) == sorted(np.concatenate(labels2).tolist())
            logp = F.log_softmax(heads[name](bb.read(torch.from_numpy(seqs2))), dim=-1)
            ce = -torch.cat([logp[u, torch.from_numpy(lab)] for u, lab in enumerate(labels2)]).mean()
        assert term.item() == pytest.approx(ce.item(), rel=1e-5)
        # the label draw is shuffled into one batch by the trainer's batcher, from the same generator
        sizes = np.array([len(lab) for lab in labels2])
        next(batches(dataclasses.replace(buf.data, inputs=seqs2, ptr=np.r_[0, np.cumsum(sizes)],
                                         labels=np.concatenate(labels2)), 1 << 40, ref, m.device))
        terms.append(alpha * mse + beta * ce)
    assert m.rng.bit_generator.state == ref.bit_generator.state  # these draws and nothing else
    want = want_ce + (terms[0] + terms[1]) / 2
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
