"""HAT: gradient masking by the cumulative mask, annealed near-binary gates, the regulariser."""

import pytest
import torch

from curb.backbone import Hooks
from curb.method import Batch, anneal

from harness import Harness


def _t1(**kw):
    h = Harness("hat", **kw)
    return h, h.learn("T1")


def test_cumulative_mask_is_the_max_of_task_gates_at_smax():
    h, m = _t1()
    g1 = m.gates("T1", m.cfg.smax).detach()
    assert torch.equal(m.net.cum, g1)
    h.learn("T2")
    assert torch.equal(m.net.cum, torch.maximum(g1, m.gates("T2", m.cfg.smax).detach()))


def test_units_with_cumulative_mask_one_receive_zero_update_on_a_later_task():
    h, m = _t1()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a known cumulative mask: about half the units exactly 1, the rest 0
        m.net.cum.copy_((torch.rand(m.net.cum.shape, generator=g) < 0.5).float())
    a = m.net.cum.clone()
    before = {k: v.clone() for k, v in m.net.backbone.state_dict().items()}
    h.learn("T2")
    after = m.net.backbone.state_dict()
    changed_somewhere = False
    for k in range(a.shape[0]):
        b, block = f"blocks.{k}.", m.net.backbone.blocks[k]
        convs = (block.conv1, block.conv2)  # kernels viewed as [out, in, shift] (they are stored [shift * in, out])
        as_conv1d = [c.conv1d_layout(before[f"{b}conv{r + 1}.weight"]) for r, c in enumerate(convs)]
        frozen_w = [a[k, 0][:, None, None].expand_as(as_conv1d[0]) == 1,
                    torch.minimum(a[k, 1][:, None], a[k, 0][None, :])[:, :, None].expand_as(as_conv1d[1]) == 1]
        for r, name in enumerate(("conv1", "conv2")):
            w0, w1 = as_conv1d[r], convs[r].conv1d_layout(after[f"{b}{name}.weight"])
            assert torch.equal(w0[frozen_w[r]], w1[frozen_w[r]]), f"{name} of block {k}: protected weights moved"
            changed_somewhere |= not torch.equal(w0[~frozen_w[r]], w1[~frozen_w[r]])
            if r == 1:  # conv2 rows of held units stay trainable from free input units: min, not max
                open_in = ((a[k, 1][:, None] == 1) & (a[k, 0][None, :] == 0))[:, :, None].expand_as(w0)
                assert open_in.any() and not torch.equal(w0[open_in], w1[open_in])
            unit = a[k, r] == 1
            for p in (f"{b}{name}.bias", f"{b}ln{r + 1}.weight", f"{b}ln{r + 1}.bias"):
                assert torch.equal(before[p][unit], after[p][unit]), f"{p}: protected units moved"
                changed_somewhere |= not torch.equal(before[p][~unit], after[p][~unit])
    assert changed_somewhere, "nothing trained at all: the test would prove nothing"


def test_gates_near_binary_at_smax_and_annealed_while_training():
    h, m = _t1(**{"train.t1_epochs": "4"})
    smax = m.cfg.smax
    g = m.gates("T1", smax)
    near = torch.minimum(g, 1 - g) < 1e-2
    assert near.float().mean() > 0.9
    assert (torch.minimum(m.gates("T1", 1.0), 1 - m.gates("T1", 1.0)) < 1e-2).float().mean() < 0.5
    x = h.x("T1", 16)

    def manual(s):
        return m.net.heads["T1"](m.net.backbone(x, Hooks(gates=list(m.gates("T1", s))))[:, -1])

    assert torch.equal(m.score("T1", x), manual(smax).detach())  # inference at s = smax
    batch = Batch(x, x, None, index=3, n_batches=10)
    with torch.no_grad():
        assert torch.equal(m.forward_logits("T1", x, train=True, batch=batch), manual(anneal(3, 10, smax)))


def test_regulariser_falls_when_gates_close_and_ignores_units_old_tasks_hold():
    h, m = _t1()
    h.learn("T2")  # gives cum > 0 somewhere
    with torch.no_grad():
        m.net.cum.zero_()
        m.net.cum[0] = 1.0  # block 0 belongs to old tasks
    e = torch.full_like(m.net.cum, 1.0)
    reg = lambda e: float(m.regulariser(torch.sigmoid(m.cfg.smax * e)))  # noqa: E731
    base = reg(e)
    closed = e.clone()
    closed[1, 0, :4] = -1.0  # close 4 free units
    assert reg(closed) < base
    held = e.clone()
    held[0] = -1.0  # close units old tasks already hold: no change
    assert reg(held) == base
    with torch.no_grad():
        m.net.cum.zero_()
    g = torch.sigmoid(m.cfg.smax * closed)
    assert float(m.regulariser(g)) == pytest.approx(float(g.mean()))  # first task: mean of all gates


def _t2_step_gradients(h, m, zero_emb: bool = False):
    """Start T2 (optionally with its gate embedding at 0), backpropagate one batch (index 2 of 8)
    and run `before_step`; returns T2's embedding and its gradient before `before_step`."""
    task = h.ev.info("T2")
    m.tasks.append(task)
    m.begin_task(task)
    if zero_emb:
        with torch.no_grad():
            m.net.emb["T2"].zero_()
    x = h.x("T2", 16)
    batch = Batch(x, torch.zeros(16, dtype=torch.long), torch.arange(16), index=2, n_batches=8)
    m.loss(task, batch).backward()
    e = m.net.emb["T2"]
    raw = e.grad.clone()
    m.before_step(task)
    return e, raw


@pytest.mark.parametrize("comp", [True, False])
def test_gradient_compensation_and_clamp(comp):
    h, m = _t1(**{"hat.grad_comp": str(comp), "hat.clamp": "0.5"})
    e, raw = _t2_step_gradients(h, m)
    s, smax = anneal(2, 8, m.cfg.smax), m.cfg.smax
    # The paper's factor, derived here from autograd rather than its closed form: the embedding's
    # gradient is rescaled as if its gate were sigma(e) stretched to smax, i.e. by
    # smax * sigma'(e) / (d/de sigma(s * e)); at e = 0 that is exactly smax / s.
    # (float64, and only where s * e is moderate: sigma's slope far out underflows in any float)
    probe = e.detach().double().clone().requires_grad_(True)
    (g_unit,) = torch.autograd.grad(torch.sigmoid(probe).sum(), probe)
    (g_s,) = torch.autograd.grad(torch.sigmoid(s * probe).sum(), probe)
    ok = (s * probe.detach()).abs() < 20
    assert ok.float().mean() > 0.5
    scale = (smax * g_unit / g_s).float()
    want = raw * scale if comp else raw
    assert torch.allclose(e.grad[ok], want[ok], rtol=1e-4, atol=1e-9)
    if comp:
        assert not torch.allclose(e.grad, raw)  # the factor is far from 1 at this early step
    m.after_step(h.ev.info("T2"))
    assert float(e.detach().abs().max()) <= 0.5


def test_gradient_compensation_at_zero_is_smax_over_s():
    """Where the embedding is 0 the compensation is exactly smax / s (both sigmoid slopes meet)."""
    h, m = _t1(**{"hat.grad_comp": "true"})
    e, raw = _t2_step_gradients(h, m, zero_emb=True)
    ratio = anneal(2, 8, m.cfg.smax)
    nonzero = raw != 0
    assert nonzero.any()
    assert torch.allclose(e.grad[nonzero], raw[nonzero] * (m.cfg.smax / ratio))


def test_checkpoint_round_trip():
    h, m = _t1()
    h.learn("T2", "T3")
    fresh = h.reload()
    assert set(fresh.net.emb) == {"T1", "T2", "T3"}
    assert all(torch.equal(fresh.net.emb[t], m.net.emb[t]) for t in m.net.emb)
    assert torch.equal(fresh.net.cum, m.net.cum)
    assert h.scores_equal(m, fresh)
    torch.manual_seed(7)
    h.learn("T4", method=fresh)  # and it keeps learning from the checkpoint exactly as the original
    torch.manual_seed(7)
    h.learn("T4")
    assert torch.equal(fresh.net.cum, m.net.cum)
    assert h.scores_equal(m, fresh)


@pytest.mark.parametrize("order,noise", [("reversed", None), ("default", 2)])
def test_any_order_and_noise_task(run_mini, order, noise):
    r = run_mini("hat", order=order, noise=noise)
    names = [t["name"] for t in r["tasks"]]
    if order == "reversed":
        assert names == ["T1", "T5", "T4", "T3", "T2"]
    else:  # the noise task sits at index `noise`, the rest in the default order
        assert names == ["T1", "T2", "noise", "T3", "T4", "T5"]
    R = r["R"]
    assert all(R[j][i] is not None for j in range(len(R)) for i in range(j + 1))
    used = r["method_report"]["units_used"]
    assert set(used) == set(names)
    # The cumulative mask only grows: the share of units in use never falls along the stream.
    assert all(used[a] <= used[b] + 1e-12 for a, b in zip(names, names[1:]))


def test_report_mask_similarity_matches_the_gates():
    h, m = _t1()
    for t in ("T2", "T3"):
        h.learn(t)
    sim = m.report()["mask_similarity"]
    g = {t: m.gates(t, m.cfg.smax).flatten() for t in ("T1", "T2", "T3")}
    assert sim["tasks"] == ["T1", "T2", "T3"]
    want = torch.nn.functional.cosine_similarity(g["T1"], g["T3"], dim=0)
    assert sim["cosine"][0][2] == pytest.approx(float(want), abs=1e-5)


@pytest.mark.parametrize("stage", ["hat", "teracon"])
def test_t1_stage_teracon_drops_regulariser_and_compensation_in_t1_only(stage):
    """`hat.t1_stage=teracon` trains T1 exactly like TERACON's T1 stage (plain CE, no embedding
    compensation); later tasks keep HAT's regulariser either way."""
    h = Harness("hat", **{"hat.t1_stage": stage})
    m = h.method
    t1 = h.ev.info("T1")
    m.tasks.append(t1)
    m.begin_task(t1)
    x = h.x("T1", 8)
    batch = Batch(x[:, :-1], x[:, 1:], None, index=1, n_batches=4)
    loss = m.loss(t1, batch)
    g = m.gates("T1", anneal(1, 4, m.cfg.smax))
    ce = torch.nn.functional.cross_entropy(m.head("T1")(m._represent(x[:, :-1], g, True)).reshape(-1, t1.n_labels),
                                           x[:, 1:].reshape(-1))
    want = ce if stage == "teracon" else ce + m.cfg.lam * m.regulariser(g)
    assert float(loss) == pytest.approx(float(want), rel=1e-6)
    loss.backward()
    raw = m.net.emb["T1"].grad.clone()
    m.before_step(t1)
    assert torch.equal(m.net.emb["T1"].grad, raw) == (stage == "teracon")
    m.end_task(t1)
    t2 = h.ev.info("T2")
    m.tasks.append(t2)
    m.begin_task(t2)
    b2 = Batch(h.x("T2", 8), torch.zeros(8, dtype=torch.long), torch.arange(8), index=0, n_batches=2)
    g2 = m.gates("T2", anneal(0, 2, m.cfg.smax))
    ce2 = torch.nn.functional.cross_entropy(m.head("T2")(m._represent(b2.x, g2, False)), b2.y)
    assert float(m.loss(t2, b2)) == pytest.approx(float(ce2 + m.cfg.lam * m.regulariser(g2)), rel=1e-6)


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_item_emb_after_t1_keeps_the_item_table_bit_identical_through_t2(freeze):
    """freeze_item_emb_after_t1: true keeps the T1 item table bit-identical and untrainable in T2; false lets it move."""
    h = Harness("hat", **{"hat.freeze_item_emb_after_t1": str(freeze).lower(), "train.t1_epochs": 1, "train.epochs": 1})
    m = h.method
    init = m.net.backbone.item_emb.weight.detach().clone()
    h.learn("T1")
    after_t1 = m.net.backbone.item_emb.weight.detach().clone()
    assert not torch.equal(after_t1, init), "T1 must train the item table whatever the knob (it freezes *after* T1)"
    h.learn("T2")
    emb = m.net.backbone.item_emb.weight
    trainable = {id(p) for p in m.trainable_parameters(h.ev.info("T2"))}
    assert (id(emb) in trainable) == (not freeze)
    assert torch.equal(emb.detach(), after_t1) == freeze
    # the rest of the backbone trains in T2 either way (the knob freezes the item table only)
    assert id(m.net.backbone.blocks[0].conv1.weight) in trainable
