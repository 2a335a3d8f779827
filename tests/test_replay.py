"""Replay (DER++): a fixed, seeded buffer of training users per task, with the logits of the moment
they were stored, replayed as an MSE on those logits and a CE on their labels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

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


@pytest.mark.parametrize("alpha,beta", [(0.0, 0.0), (0.7, 0.0), (0.0, 0.4), (0.7, 0.4)])
def test_loss_is_ce_plus_the_mean_over_old_tasks_of_the_weighted_replay_terms(alpha, beta):
    h = Harness("replay", **{"replay.users": "20", "replay.batch_users": "1000", "replay.alpha": str(alpha),
                             "replay.beta": str(beta)})
    m = h.learn("T1", "T2")
    with torch.no_grad():  # so the stored logits differ from the current ones
        for p in m.model.backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    t3 = h.ev.info("T3")
    m.tasks.append(t3)
    m.begin_task(t3)
    b = h.batch("T3")
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
