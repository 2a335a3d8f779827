"""DITTO mechanisms: the forward transfer's user selection by similarity to the old item
distribution, the backward transfers (next-item adaptation to new items; contrastive views for
past recommendation tasks), ρ with c = 2, and the growing item table."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import curb.methods.ditto as dt
from curb.method import anneal, full_sequences, inputs_for, task_loss
from curb.methods.teracon import relation_rate
from harness import Harness, Spy, assert_cap_keeps_the_first_users

TIME = "synthetic-time-mini"


def _start(h: Harness, name: str):
    """Grow and begin task `name` (as the runner does) without fitting it."""
    m, t = h.method, h.ev.info(name)
    m.extend_items(h.stream.vocab_at(h.names.index(name)))
    m.tasks.append(t)
    m.begin_task(t)
    return m, t


def _start_unfitted(h: Harness, name: str, shake: float = 0.0):
    """Begin and end every task before `name` without fitting it, then `_start(h, name)`; with
    `shake`, Gaussian noise of that scale moves every student parameter away from the teacher."""
    for past in h.names[: h.names.index(name)]:
        m, t = _start(h, past)
        m.end_task(t)
    m, t = _start(h, name)
    if shake:
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for p in m.net.parameters():
                p.add_(shake * torch.randn(p.shape, generator=g))
    return m, t


def test_item_means_are_the_item_table_mean_after_each_task():
    h = Harness("ditto", dataset=TIME)
    m = h.learn("T1")
    want = m.net.backbone.item_emb.weight.detach().mean(0)
    assert torch.equal(m.item_means["T1"], want) and m.vocab_of == {"T1": 37}
    h.learn("T2")
    assert torch.equal(m.item_means["T1"], want)  # kept from T1's time, not recomputed
    assert m.item_means["T2"].shape == want.shape and m.vocab_of["T2"] == 43


def test_forward_transfer_distils_the_users_most_similar_to_the_old_item_distribution(monkeypatch):
    h = Harness("ditto", dataset=TIME, **{"ditto.sampling": "fixed:0.5", "ditto.min_users": "1",
                                          "ditto.beta": "0", "ditto.gamma": "0"})
    h.learn("T1", "T2")
    m, t3 = _start(h, "T3")
    spy = Spy(F.mse_loss)
    monkeypatch.setattr(dt.F, "mse_loss", spy)
    b = h.batch("T3")
    full = full_sequences(b)
    s = anneal(b.index, b.n_batches, m.cfg.smax)
    m.loss(t3, b)
    assert len(spy.calls) == 2  # one distillation term per past task
    newest = full.max(dim=1).values
    for (student, target), past in zip(spy.calls, ("T1", "T2")):
        x = inputs_for(h.ev.info(past).kind, full)
        m_t = m.teacher.mask(past, m.others(past, ["T1", "T2"]), s)
        h_t = m.teacher.represent(x, m_t)
        sim = F.cosine_similarity(h_t, m.item_means[past][None], dim=1)
        top = torch.argsort(sim, descending=True)[: math.floor(len(full) * 0.5)]
        top = top[newest[top] < 43]  # users holding items new in T3's period are left out
        assert 0 < len(top) < len(full)
        assert torch.equal(target, h_t[top])  # the teacher's representations of exactly those users
        m_s = m.net.mask(past, m.others(past, ["T1", "T2", "T3"]), s)  # the student's own past-task mask
        assert torch.allclose(student, m.net.represent(x[top], m_s), atol=1e-6)
    # ρ for the next step: TERACON's Eq. 15 with c = 2, from this step's masks.
    m_cur = m.mask("T3", s).detach()
    for j, past in enumerate(("T1", "T2")):
        m_t = m.teacher.mask(past, m.others(past, ["T1", "T2"]), s)
        assert m.rho[j] == pytest.approx(relation_rate(m_cur, m_t, 2.0))


def test_selection_takes_at_least_min_users():
    assert dt.select_count(100, 0.12, 20) == 20
    assert dt.select_count(100, 0.5, 20) == 50
    assert dt.select_count(7, 0.12, 20) == 7


def test_backward_transfer_trains_the_next_item_task_on_users_with_the_most_new_items(monkeypatch):
    h = Harness("ditto", dataset=TIME, **{"ditto.alpha": "0", "ditto.gamma": "0", "ditto.min_users": "3",
                                          "ditto.sampling": "fixed:0.1"})
    h.learn("T1")
    m, t2 = _start(h, "T2")
    spy = Spy(F.cross_entropy)
    monkeypatch.setattr(dt.F, "cross_entropy", spy)
    b = h.batch("T2")
    full = full_sequences(b)
    seqs = full[:, :-1]  # T1's view of the sequences
    counts = torch.tensor([len(set(r[r >= 37].tolist())) for r in full])  # new items anywhere in the sequence
    cand = torch.nonzero(counts > 0).flatten()
    n = max(math.floor(len(cand) * 0.1), 3)
    assert len(cand) > n
    want = cand[torch.sort(counts[cand], descending=True, stable=True).indices[:n]]
    calls = []
    real = m.net.represent
    monkeypatch.setattr(m.net, "represent", lambda x, mask, all_positions=False: calls.append((all_positions, x)) or
                        real(x, mask, all_positions))
    m.loss(t2, b)
    (_, x), = [c for c in calls if c[0]]  # the only read of every position: T1's next-item objective
    assert torch.equal(x, seqs[want, :-1])  # next-item training on the chosen users' T1 view
    (_, y, *_), = spy.calls
    assert torch.equal(y[y != -100], seqs[want, 1:][seqs[want, 1:] < 37])  # new items are no T1 targets
    assert (seqs[want, 1:] >= 37).any()
    assert m.stage_stats == {} and m._bkt_users[0] == n


def test_backward_transfer_is_silent_on_a_static_stream():
    h = Harness("ditto", **{"ditto.alpha": "0"})  # synthetic-mini: no item is ever new
    h.learn("T1")
    m, t2 = _start(h, "T2")
    b = h.batch("T2")
    s = anneal(b.index, b.n_batches, m.cfg.smax)
    assert m.transfer(b, m.mask("T2", s), s).item() == 0.0
    assert m._bkt_users[0] == 0


def test_contrastive_transfer_uses_the_least_similar_users_holding_newer_items(monkeypatch):
    h = Harness("ditto", dataset=TIME, **{"ditto.alpha": "0", "ditto.beta": "0", "ditto.min_users": "1",
                                          "ditto.sampling": "fixed:0.5"})
    h.learn("T1", "T2", "T3")
    m, t4 = _start(h, "T4")
    seen = []
    monkeypatch.setattr(m, "contrast", lambda x, mask: seen.append(x.clone()) or x.new_zeros((), dtype=torch.float32))
    b = h.batch("T4")
    full = full_sequences(b)
    s = anneal(b.index, b.n_batches, m.cfg.smax)
    m.loss(t4, b)
    assert len(seen) == 2  # T2 and T3 (recommendation tasks); none for the next-item task T1
    for x, past in zip(seen, ("T2", "T3")):
        m_t = m.teacher.mask(past, m.others(past, ["T1", "T2", "T3"]), s)
        sim = F.cosine_similarity(m.teacher.represent(full, m_t), m.item_means[past][None], dim=1)
        low = torch.argsort(sim)[: math.floor(len(full) * 0.5)]
        low = low[full[low].max(dim=1).values >= m.vocab_of[past]]
        assert torch.equal(x, full[low])


def test_augmentations_delete_or_substitute_the_stated_share_of_items():
    rng = np.random.default_rng(0)
    rows = np.array([[0, 0, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5]])
    out = dt.delete_items(rows, 0.2, rng)
    for r, o in zip(rows, out):
        items, kept = r[r != 0], o[o != 0]
        assert len(kept) == len(items) - int(0.2 * len(items))
        assert (o[: len(o) - len(kept)] == 0).all()  # left-padded again
        it = iter(items.tolist())
        assert all(k in it for k in kept.tolist())  # an order-preserving subsequence
    emb = torch.randn(13, 4, generator=torch.Generator().manual_seed(1))
    sub = dt.substitute_items(rows, 0.2, np.random.default_rng(0), emb)
    vec = F.normalize(emb, dim=1)
    items = np.unique(rows[rows != 0])
    for r, o in zip(rows, sub):
        changed = np.flatnonzero(r != o)
        assert len(changed) == int(0.2 * (r != 0).sum())
        for p in changed:  # each replacement is the most similar OTHER in-batch item
            cos = vec[torch.from_numpy(items)] @ vec[r[p]]
            cos[items == r[p]] = -2
            assert o[p] == items[int(cos.argmax())]


def test_nt_xent_is_the_positive_pairs_softmax_share():
    z = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    zn = F.normalize(z, dim=1)
    sim = zn @ zn.T
    want = 0.0
    for i in range(6):
        pos = (i + 3) % 6
        denom = sum(math.exp(sim[i, k]) for k in range(6) if k != i)
        want += -math.log(math.exp(sim[i, pos]) / denom)
    assert dt.nt_xent(z).item() == pytest.approx(want / 6, rel=1e-5)
    same = torch.cat([z[:3], z[:3]])
    assert dt.nt_xent(same) < dt.nt_xent(z)


def test_round_trip_and_end_to_end(run_mini):
    """Checkpoints restore scores and item means; the report's BKT users are > 0 on a time-aware stream, 0 on a static one."""
    h = Harness("ditto", dataset=TIME)
    h.learn("T1", "T2", "T3")
    fresh = h.reload()
    assert h.scores_equal(h.method, fresh)
    assert all(torch.equal(fresh.item_means[k], v) for k, v in h.method.item_means.items())
    timed = h.method.report()["stages"]
    assert set(timed) == {"T2", "T3"} and set(timed["T3"]["bkt_users_mean"]) == {"T1", "T2"}
    assert timed["T2"]["bkt_users_mean"]["T1"] > 0  # new items reached T1's next-item objective
    assert all(v > 0 for v in timed["T3"]["bkt_users_mean"].values())  # and T2's contrastive views too
    r = run_mini("ditto", order="reversed", noise=2)
    stages = r["method_report"]["stages"]
    assert set(stages) == {t["name"] for t in r["tasks"][1:]}
    assert all(v == 0 for st in stages.values() for v in st["bkt_users_mean"].values())  # no item is ever new
    assert all(len(st["bkt_users_mean"]) == i + 1 for i, st in enumerate(stages[t["name"]] for t in r["tasks"][1:]))


def test_later_task_loss_is_ce_plus_alpha_rho_weighted_fkt_plus_beta_bkt_plus_gamma_contrast(monkeypatch):
    """L = CE + α·Σ_j (ρ_j/Σρ)·MSE_j + β·(T1 next-item BKT) + γ·Σ(contrast), with hand-set unequal ρ."""
    h = Harness("ditto", dataset=TIME, **{"ditto.alpha": "0.3", "ditto.beta": "0.55", "ditto.gamma": "1.7",
                                          "ditto.min_users": "1"})
    m, t3 = _start_unfitted(h, "T3", shake=0.05)
    mse, nxt, con = Spy(F.mse_loss), Spy(m.next_item_loss), Spy(m.contrast)
    monkeypatch.setattr(dt.F, "mse_loss", mse)
    monkeypatch.setattr(m, "next_item_loss", nxt)
    monkeypatch.setattr(m, "contrast", con)
    b = h.batch("T3", index=2)
    rho = [0.3, 0.9]
    m.rho = list(rho)
    total = m.loss(t3, b)
    monkeypatch.undo()
    assert len(mse.outs) == 2 and len(con.outs) == 1  # one FKT term per past task; T2 is the only recommend one
    assert [c[0] for c in nxt.calls] == ["T1"]
    s = anneal(b.index, b.n_batches, m.cfg.smax)
    ce = task_loss(m.net.logits("T3", b.x, m.mask("T3", s)), b)
    weighted = (0.3 * mse.outs[0] + 0.9 * mse.outs[1]) / 1.2
    assert abs(weighted - (mse.outs[0] + mse.outs[1]) / 2) > 0.05  # the ρ weighting is visible
    assert abs(nxt.outs[0] - con.outs[0]) > 0.05  # so is a β/γ swap
    assert min(v.item() for v in [*mse.outs, *nxt.outs, *con.outs]) > 0.5
    want = ce + 0.3 * weighted + 0.55 * nxt.outs[0] + 1.7 * con.outs[0]
    assert total.item() == pytest.approx(want.item(), rel=1e-6)


def test_contrast_is_nt_xent_of_the_deleted_and_substituted_views_under_the_past_task_mask(monkeypatch):
    """γ's term is nt_xent(represent([delete_items(x); substitute_items(x)], student T2 mask)), RNG replayed."""
    h = Harness("ditto", dataset=TIME, **{"ditto.alpha": "0", "ditto.beta": "0", "ditto.min_users": "1",
                                          "ditto.sampling": "fixed:0.5"})
    m, t3 = _start_unfitted(h, "T3", shake=0.05)
    seen = []
    real = m.contrast

    def contrast(x, mask):
        state = copy.deepcopy(m.rng.bit_generator.state)
        out = real(x, mask)
        seen.append((x.clone(), state, copy.deepcopy(m.rng.bit_generator.state), out.detach()))
        return out

    monkeypatch.setattr(m, "contrast", contrast)
    b = h.batch("T3", index=2)
    m.loss(t3, b)
    (x, before, after, got), = seen
    assert len(x) > 2
    s = anneal(b.index, b.n_batches, m.cfg.smax)
    replay = np.random.default_rng()
    replay.bit_generator.state = before
    rows = x.numpy()
    deleted = dt.delete_items(rows, 0.2, replay)
    substituted = dt.substitute_items(rows, 0.2, replay, m.net.backbone.item_emb.weight.detach())
    assert replay.bit_generator.state == after  # contrast drew exactly these two augmentations
    assert (deleted != rows).any() and (substituted != rows).any() and (deleted != substituted).any()
    views = torch.from_numpy(np.concatenate([deleted, substituted]))
    want = dt.nt_xent(m.net.represent(views, m.net.mask("T2", ["T1", "T3"], s)))
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    current = dt.nt_xent(m.net.represent(views, m.mask("T3", s)))
    unaugmented = dt.nt_xent(m.net.represent(torch.cat([x, x]), m.net.mask("T2", ["T1", "T3"], s)))
    assert abs(current - want) > 1e-3 and abs(unaugmented - want) > 1e-3


def test_kr_max_users_caps_the_distilled_users_of_every_past_task(monkeypatch):
    """`kr_max_users=2`: each past task's FKT MSE reads the 2 most similar users; uncapped it reads all eligible."""
    h = Harness("ditto", **{"ditto.kr_max_users": "2", "ditto.sampling": "none"})  # static: every user eligible
    m, t3 = _start_unfitted(h, "T3", shake=0.05)
    b = h.batch("T3")
    spy = Spy(F.mse_loss)
    monkeypatch.setattr(dt.F, "mse_loss", spy)
    assert_cap_keeps_the_first_users(m, t3, b, spy, cap=2, exact_targets=True)  # the first of the similarity ranking


def test_kr_max_users_caps_the_next_item_transfer_users_too():
    """The cap covers every past-task term of a step, the next-item BKT (the costliest) included."""
    h = Harness("ditto", dataset=TIME, **{"ditto.kr_max_users": "2"})
    m, t = _start_unfitted(h, "T3")
    b = h.batch("T3")
    m.loss(t, b)
    assert m._bkt_users[0] == 2
    m._bkt_users[:] = 0
    m.cfg.kr_max_users = None
    m.loss(t, b)
    assert m._bkt_users[0] > 2
