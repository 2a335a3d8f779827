"""TERACON mechanisms (docs/protocol.md §6.8), each checked directly on a tiny stream."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import curb.methods.teracon as tc
from curb.config import ConfigError
from curb.method import anneal, task_loss
from curb.runner import CellSpec, resolve_config
from curb.training import train_epoch
from harness import Harness, Spy, assert_cap_keeps_the_first_users


@pytest.fixture
def make(t1_cache):
    return lambda **kw: Harness("teracon", t1_cache, **kw)


def _manual_mask(net, task, others, s):
    """Eq. 12-13 written out row by row: sigmoid(s * (w . [tanh(s e_T), tanh(s e_o), tanh(-s e_o), ...] + b))."""
    rows = [torch.tanh(s * net.emb[task])]
    for o in others:
        rows += [torch.tanh(s * net.emb[o]), -torch.tanh(s * net.emb[o])]
    w, b = net.rel[task].weight, net.rel[task].bias
    g = sum(w[:, r, None] * rows[r] for r in range(len(rows))) + b[:, None]
    return torch.sigmoid(s * g)


def test_masks_are_relation_aware_and_depend_on_other_tasks(make):
    h = make()
    h.learn("T1", "T2")
    m, net, s = h.method, h.method.net, 7.0
    # T1 stage had no relation maps; T2 arrival gave every known task one of width 2N-1 = 3.
    assert {k: r.weight.shape for k, r in net.rel.items()} == {"T1": (m.k, 3), "T2": (m.k, 3)}
    for t, others in (("T2", ["T1"]), ("T1", ["T2"])):  # "other" includes LATER tasks (code default)
        assert torch.allclose(m.mask(t, s), _manual_mask(net, t, others, s), atol=1e-6)
    before = {t: m.mask(t, s).detach() for t in ("T1", "T2")}
    with torch.no_grad():
        net.emb["T1"].add_(torch.randn_like(net.emb["T1"]))
    assert not torch.allclose(m.mask("T2", s), before["T2"])  # past embedding moves the current mask
    with torch.no_grad():
        net.emb["T2"].add_(torch.randn_like(net.emb["T2"]))
    changed_t1 = m.mask("T1", s).detach()
    assert not torch.allclose(changed_t1, before["T1"])  # and a later task moves a past task's mask
    # A third task re-initialises ALL relation maps at width 5 (N = 3).
    old = {k: r.weight.detach().clone() for k, r in net.rel.items()}
    h.method.tasks.append(h.ev.info("T3"))
    h.method.begin_task(h.ev.info("T3"))
    assert all(r.weight.shape == (m.k, 5) and torch.all(r.bias == 0.1) for r in net.rel.values())
    assert set(net.rel) == {"T1", "T2", "T3"} and all(net.rel[k].weight.shape != old[k].shape for k in old)


def test_relation_set_previous_ignores_later_tasks_and_keeps_maps(make):
    h = make(**{"teracon.relation_set": "previous"})
    h.learn("T1", "T2")
    net, s = h.method.net, 5.0
    assert net.rel["T1"].weight.shape[1] == 1 and net.rel["T2"].weight.shape[1] == 3
    t1 = h.method.mask("T1", s).detach()
    with torch.no_grad():
        net.emb["T2"].add_(1.0)
    assert torch.equal(h.method.mask("T1", s), t1)
    kept = net.rel["T1"].weight.detach().clone()
    h.method.tasks.append(h.ev.info("T3"))
    h.method.begin_task(h.ev.info("T3"))
    assert torch.equal(net.rel["T1"].weight, kept)  # its input did not change: not re-initialised


def test_t1_stage_uses_plain_annealed_mask_and_optional_regulariser(make):
    h = make(**{"teracon.t1_mask_reg": 0.75})
    m = h.method
    m.tasks.append(h.ev.info("T1"))
    m.begin_task(h.ev.info("T1"))
    assert len(m.net.rel) == 0 and m.teacher is None
    b = h.batch("T1", index=3)
    s = anneal(b.index, b.n_batches, m.cfg.smax)
    mask = torch.sigmoid(s * m.net.emb["T1"])
    logits = m.net.logits("T1", b.x, mask, all_positions=True)
    expect = task_loss(logits, b) + 0.75 * mask.mean()
    assert torch.allclose(m.loss(h.ev.info("T1"), b), expect)
    with torch.no_grad():
        m.net.emb["T1"].fill_(10.0)
    m.after_step(h.ev.info("T1"))
    assert torch.all(m.net.emb["T1"] == 6.0)  # clamped to +-6 after each step


def test_pseudo_labels_come_from_the_frozen_pre_task_model(make, monkeypatch):
    h = make(**{"teracon.sampling": "fixed:0.5", "train.batch": "128"})
    h.learn("T1")
    pre = copy.deepcopy(h.method.net)
    t2 = h.ev.info("T2")
    h.method.tasks.append(t2)
    h.method.begin_task(t2)
    teacher = h.method.teacher
    h.fit(h.method, t2, h.ev.train_data("T2"), h.ev.val_data("T2"), max_epochs=2)
    # The teacher is bit-identical to the model before T2, after a whole fit; the student moved.
    for k, v in pre.state_dict().items():
        assert torch.equal(teacher.state_dict()[k], v)
    assert not torch.equal(h.method.net.backbone.blocks[0].conv1.weight, pre.backbone.blocks[0].conv1.weight)
    assert not any(p.requires_grad for p in teacher.parameters())
    # On a new batch the pseudo-labels equal the pre-task model's T1 logits (plain mask, annealed s,
    # input without the last item) on exactly the sampled users.
    spy = Spy(F.mse_loss)
    monkeypatch.setattr(tc.F, "mse_loss", spy)
    b = h.batch("T2", index=2)
    replay = np.random.default_rng()
    replay.bit_generator.state = h.method.rng.bit_generator.state
    h.method.loss(t2, b)
    s = anneal(b.index, b.n_batches, h.method.cfg.smax)
    n = math.floor(len(b.x) * 0.5)
    idx = torch.from_numpy(replay.permutation(len(b.x))[:n])
    (student, target), = spy.calls
    want = pre.logits("T1", b.x[idx, :-1], torch.sigmoid(s * pre.emb["T1"]))
    assert target.shape == (n, h.ev.info("T1").n_labels)
    assert torch.allclose(target, want, atol=1e-6)
    assert not torch.allclose(student, target, atol=1e-4)


def test_rho_is_eq15_and_sampling_draws_that_fraction(make, monkeypatch):
    # Eq. 15 itself, against a literal evaluation.
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(4, 16, generator=g), torch.rand(4, 16, generator=g)
    cos = [(a[k] @ b[k]) / (a[k].norm() * b[k].norm()) for k in range(4)]
    assert tc.relation_rate(a, b, 6.0) == pytest.approx(1 - float(sum(torch.sigmoid(6 * c) for c in cos)) / 4)

    h = make()
    h.learn("T1", "T2")
    t3 = h.ev.info("T3")
    m = h.method
    m.tasks.append(t3)
    m.begin_task(t3)
    spy = Spy(F.mse_loss)
    monkeypatch.setattr(tc.F, "mse_loss", spy)
    assert m.rho == [0.9, 0.9]  # rho_init at the start of a stage
    b0, b1 = h.batch("T3", 0), h.batch("T3", 1)
    m.loss(t3, b0)
    assert [len(x) for x, _ in spy.calls] == [math.floor(len(b0.x) * 0.9)] * 2
    # rho after the step = Eq. 15 on this step's masks: new-task mask vs the teacher's past masks.
    s = anneal(b0.index, b0.n_batches, m.cfg.smax)
    cur = m.mask("T3", s).detach()
    for j, past in enumerate(("T1", "T2")):
        tmask = m.teacher.mask(past, m.others(past, ["T1", "T2"]), s)
        assert m.rho[j] == pytest.approx(tc.relation_rate(cur, tmask, 6.0))
    assert all(1 - torch.sigmoid(torch.tensor(6.0)).item() - 1e-7 <= r < 0.5 for r in m.rho)
    # The next step samples max(1, floor(B * rho)) users per past task (rho ~ 0.0025 here: 1 user).
    rho = list(m.rho)
    spy.calls.clear()
    m.loss(t3, b1)
    assert [len(x) for x, _ in spy.calls] == [max(1, math.floor(len(b1.x) * r)) for r in rho]
    assert m._stats.steps == 2
    assert m._stats.users.sum() == sum(len(x) for x, _ in spy.calls) + 2 * math.floor(len(b0.x) * 0.9)
    # L = CE + alpha * sum_j (rho_j / sum rho) MSE_j, checked with unequal rates and a visible MSE.
    m.rho = [0.2, 0.6]
    with torch.no_grad():
        for t in ("T1", "T2"):
            m.net.heads[t].bias.add_(1.0)
    spy.calls.clear()
    total = m.loss(t3, b1)
    assert [len(x) for x, _ in spy.calls] == [max(1, math.floor(len(b1.x) * r)) for r in (0.2, 0.6)]
    s1 = anneal(b1.index, b1.n_batches, m.cfg.smax)
    ce = task_loss(m.net.logits("T3", b1.x, m.mask("T3", s1)), b1)
    mse = [spy.real(x, y) for x, y in spy.calls]
    assert all(v > 0.5 for v in mse)
    assert ((total - ce) / 0.7).item() == pytest.approx((0.25 * mse[0] + 0.75 * mse[1]).item(), rel=1e-4)


def test_kr_never_averages_over_zero_users(make, monkeypatch):
    h = make(**{"train.batch": "8"})  # ~2 users per batch: floor(B * 0.0025) would be 0
    h.learn("T1", "T2")
    spy = Spy(F.mse_loss)
    monkeypatch.setattr(tc.F, "mse_loss", spy)
    h.learn("T3")
    assert spy.calls and all(len(x) >= 1 for x, _ in spy.calls)
    assert all(torch.isfinite(spy.real(x, y)) for x, y in spy.calls)
    st = h.method.stage_stats["T3"]
    assert st["steps"] > 0 and all(v >= 1 for v in st["sampled_users_mean"].values())


def test_alpha_zero_loss_is_exactly_the_new_task_ce(make):
    h = make(**{"teracon.alpha": "0"})
    h.learn("T1")
    t2, b = h.ev.info("T2"), h.batch("T2")
    h.method.tasks.append(t2)
    h.method.begin_task(t2)
    s = anneal(b.index, b.n_batches, h.method.cfg.smax)
    ce = task_loss(h.method.net.logits("T2", b.x, h.method.mask("T2", s)), b)
    loss = h.method.loss(t2, b)
    assert torch.equal(loss, ce)
    h.method.net.zero_grad(set_to_none=True)
    loss.backward()
    assert h.method.net.heads["T1"].weight.grad is None  # nothing reaches the past task


def _t1_drift(alpha: float, make) -> float:
    """Mean squared change of T1's scores over 6 fixed epochs of T2 (no model selection)."""
    h = make(**{"teracon.alpha": str(alpha)})
    h.learn("T1")
    x = torch.from_numpy(h.ev.val_data("T1").inputs[:, :-1])
    before = h.method.score("T1", x)
    m, t2 = h.method, h.ev.info("T2")
    m.tasks.append(t2)
    m.begin_task(t2)
    opt = m.make_optimizer(t2)
    for _ in range(6):
        train_epoch(m, t2, h.ev.train_data("T2"), opt, h.fit.train_cfg.batch)
    return F.mse_loss(m.score("T1", x), before).item()


def test_retention_reduces_drift_of_past_task_outputs(make):
    free, kept = _t1_drift(0.0, make), _t1_drift(0.7, make)
    assert kept < 0.5 * free, (kept, free)  # measured: about 0.1x on this stream


def test_past_tasks_are_scored_with_their_own_relation_aware_mask(make):
    h = make()
    h.learn("T1", "T2", "T3")
    m = h.method
    x = torch.from_numpy(h.ev.val_data("T2").inputs)
    calls = []
    real = m.net.mask
    m.net.mask = lambda task, others, s: calls.append((task, tuple(others), s)) or real(task, others, s)
    out = m.score("T2", x)
    out2 = m.score("T2", x[:5])
    assert calls == [("T2", ("T1", "T3"), m.cfg.smax)]  # own mask, at smax, computed once
    assert torch.equal(out2, out[:5])
    own = m.net.logits("T2", x, real("T2", ["T1", "T3"], m.cfg.smax))
    other = m.net.logits("T2", x, real("T3", ["T1", "T2"], m.cfg.smax))
    assert torch.allclose(out, own) and not torch.allclose(out, other)
    m.after_step(h.ev.info("T3"))  # any step invalidates the precomputed masks
    m.score("T2", x)
    assert len(calls) == 2


def test_save_load_round_trip_gives_identical_scores(make):
    h = make()
    h.learn("T1", "T2", "T3")
    fresh = h.reload()
    a, b = h.scores(), h.scores(fresh)
    assert a.keys() == b.keys() == {"T1", "T2", "T3"}
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert fresh.report() == h.method.report()


@pytest.mark.parametrize("bad", ["fixed:0", "fixed:1.5", "fixed:x", "sometimes"])
def test_invalid_sampling_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="sampling"):
        resolve_config(CellSpec("teracon", "synthetic-mini", overrides=(("teracon.sampling", bad),)))


def test_runs_end_to_end_in_any_order_with_noise_and_reports_rates(run_mini):
    for kw in ({}, {"order": "reversed", "noise": 2}, {"teracon.sampling": "none"}):
        r = run_mini("teracon", **kw)
        m = len(r["tasks"])
        assert all((r["R"][j][i] is not None) == (i <= j) for j in range(m) for i in range(m))
        stages = r["method_report"]["stages"]
        last = stages[r["tasks"][-1]["name"]]
        assert set(last["rho_mean"]) == {t["name"] for t in r["tasks"][:-1]}
        assert set(stages) == {t["name"] for t in r["tasks"][1:]} and all(s["steps"] > 0 for s in stages.values())
        # Per-epoch training seconds of every stage are in the shared fit logs.
        assert [f["task"] for f in r["fits"] if f["phase"] == "train"] == [t["name"] for t in r["tasks"]]
        assert all(e["seconds"] > 0 for f in r["fits"] for e in f["epochs"])
    assert set(last["sampled_fraction_mean"].values()) == {1.0}  # sampling=none: every user
    sim = r["method_report"]["mask_similarity"]
    assert sim["tasks"] == [t["name"] for t in r["tasks"]]
    assert all(abs(sim["cosine"][i][i] - 1.0) < 1e-5 for i in range(m))


def test_min_sampling_is_the_floor_of_eq15():
    """rho_min = 1 - sigmoid(c): the rate Eq. 15 gives when current and past masks coincide."""
    cfg = resolve_config(CellSpec("teracon", "synthetic-mini", overrides=(("teracon.sampling", "min"),))).method
    ones = torch.ones(4, 8)
    assert cfg.fixed_rate() == pytest.approx(tc.relation_rate(ones, ones, cfg.c), abs=1e-7)  # float32
    assert cfg.fixed_rate() == pytest.approx(0.0024726, abs=1e-6)


@pytest.mark.parametrize("choice", ["own", "current"])
def test_kr_student_mask_knob(make, monkeypatch, choice):
    """Student's past-task output uses m^{Tj} (code, default) or m^{Ti} (slides' formula)."""
    h = make(**{"teracon.kr_student_mask": choice, "teracon.sampling": "none"})
    h.learn("T1", "T2")
    t3, b = h.ev.info("T3"), h.batch("T3")
    m = h.method
    m.tasks.append(t3)
    m.begin_task(t3)
    spy = Spy(F.mse_loss)
    monkeypatch.setattr(tc.F, "mse_loss", spy)
    replay = np.random.default_rng()
    replay.bit_generator.state = m.rng.bit_generator.state
    m.loss(t3, b)
    s = anneal(b.index, b.n_batches, m.cfg.smax)
    replay.permutation(len(b.x))  # T1's draw
    idx = torch.from_numpy(replay.permutation(len(b.x)))
    student, _ = spy.calls[1]  # T2's
    mask = m.mask("T2" if choice == "own" else "T3", s)
    assert torch.allclose(student, m.net.logits("T2", b.x[idx], mask), atol=1e-6)


def _separate_passes_loss(m, task, b, s: float, counts: list[int], idx: list[torch.Tensor]) -> torch.Tensor:
    """The retention loss written as separate passes (the formula before the passes were fused):
    CE on the batch, then per past task a teacher pass and a student pass on its sampled users'
    own inputs (the sequence without its last item for the next-item task)."""
    full = b.x if b.rows is not None else torch.cat([b.x, b.y[:, -1:]], dim=1)
    m_cur = m.mask(task.name, s)
    loss = task_loss(m.net.logits(task.name, b.x, m_cur, all_positions=b.rows is None), b)
    past, known = m.tasks[:-1], m.known()
    rates = [float(n) for n in counts]  # any positive weights: the fused loss below is given the same
    kr = 0.0
    for pt, rate, ix in zip(past, rates, idx):
        xj = full[ix, :-1] if pt.kind == "next_item" else full[ix]
        with torch.no_grad():
            target = m.teacher.logits(pt.name, xj, m.teacher.mask(pt.name, m.others(pt.name, known[:-1]), s))
        student = m.net.logits(pt.name, xj, m.net.mask(pt.name, m.others(pt.name, known), s))
        kr = kr + (rate / sum(rates)) * F.mse_loss(student, target)
    return loss + m.cfg.alpha * kr


def test_fused_retention_pass_equals_separate_passes(make):
    """One backbone pass with per-row masks gives the loss and every gradient of the separate
    teacher/student passes to float round-off (T3: two past tasks, the next-item one included)."""
    h = make(**{"teracon.sampling": "fixed:0.5", "train.batch": "128"})
    h.learn("T1", "T2")
    m, t3 = h.method, h.ev.info("T3")
    m.tasks.append(t3)
    m.begin_task(t3)
    with torch.no_grad():  # a teacher that differs from the student, so the MSE terms are not zero
        for p in m.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    b = h.batch("T3", index=1)
    s = anneal(b.index, b.n_batches, m.cfg.smax)
    replay = np.random.default_rng()
    replay.bit_generator.state = m.rng.bit_generator.state
    m.net.zero_grad(set_to_none=True)  # the last T2 step left its gradients
    fused = m.loss(t3, b)
    fused.backward()
    grads = {k: p.grad.clone() for k, p in m.net.named_parameters() if p.grad is not None}
    m.net.zero_grad(set_to_none=True)
    n = m.retained_users(len(b.x), 0.5)
    assert 1 < n < len(b.x)
    idx = [torch.from_numpy(replay.permutation(len(b.x))[:n]) for _ in range(2)]
    sep = _separate_passes_loss(m, t3, b, s, [n, n], idx)
    sep.backward()
    assert torch.allclose(fused, sep, rtol=1e-6, atol=1e-7)
    assert grads.keys() == {k for k, p in m.net.named_parameters() if p.grad is not None}
    assert "heads.T1.weight" in grads and "emb.T2" in grads  # retention reached both past tasks
    for k, p in m.net.named_parameters():
        if p.grad is not None:
            assert torch.allclose(grads[k], p.grad, rtol=1e-5, atol=1e-7), k


def test_bf16_teacher_holds_its_matrices_in_bf16_and_labels_exactly_as_an_fp32_teacher(make):
    """Under bf16 autocast the teacher's conv kernels and heads are stored in bf16 once per stage;
    autocast would cast an fp32 teacher's to the same values every step, so the loss is bit-equal."""
    h = make(**{"train.precision": "bf16", "teracon.sampling": "fixed:0.5", "train.batch": "128"})
    h.learn("T1")
    m, t2 = h.method, h.ev.info("T2")
    m.tasks.append(t2)
    fp32_teacher = m.net.frozen()  # what begin_task copies, without the cast
    m.begin_task(t2)
    conv = m.teacher.backbone.convs()[0]
    assert conv.weight.dtype == conv.bias.dtype == m.teacher.heads["T1"].weight.dtype == torch.bfloat16
    assert m.teacher.backbone.item_emb.weight.dtype == torch.float32  # the residual stream stays fp32
    assert m.net.backbone.convs()[0].weight.dtype == torch.float32  # the student is untouched
    b = h.batch("T2", index=1)
    state = copy.deepcopy(m.rng.bit_generator.state)
    with m.autocast():
        cast_once = m.loss(t2, b)
    m.teacher = fp32_teacher  # autocast casts its weights on every pass
    m.rng.bit_generator.state = state
    with m.autocast():
        cast_each_step = m.loss(t2, b)
    assert torch.equal(cast_once, cast_each_step)


@pytest.mark.parametrize("name", ["teracon", "ditto"])
def test_mean_readout_is_refused_where_the_fused_step_reads_positions_itself(name, tmp_path):
    from curb.runner import CellSpec, run_cell

    with pytest.raises(ConfigError, match="backbone.readout=mean is not supported"):
        run_cell(CellSpec(name, "synthetic-mini", overrides=(("backbone.readout", "mean"),)), tmp_path)


def test_kr_max_users_caps_the_retained_rows_of_every_past_task(make, monkeypatch):
    """`kr_max_users=2`: each past task's retention MSE reads 2 users, the first 2 of the uncapped draw."""
    h = make(**{"teracon.kr_max_users": "2", "teracon.sampling": "none"})
    m = h.method
    for name in ("T1", "T2"):  # begun and ended unfitted: only the stage's mechanics are under test
        m.tasks.append(h.ev.info(name))
        m.begin_task(h.ev.info(name))
        m.end_task(h.ev.info(name))
    t3, b = h.ev.info("T3"), h.batch("T3")
    m.tasks.append(t3)
    m.begin_task(t3)
    spy = Spy(F.mse_loss)
    monkeypatch.setattr(tc.F, "mse_loss", spy)
    assert_cap_keeps_the_first_users(m, t3, b, spy, cap=2, exact_targets=False)
