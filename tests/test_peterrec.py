"""PeterRec mechanisms (docs/protocol.md §6.3): frozen shared model, per-task patches / LN2 / head."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from curb.backbone import Hooks
from harness import Harness


@pytest.fixture
def make(t1_cache):
    return lambda **kw: Harness("peterrec", t1_cache, **kw)


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_shared_model_is_bit_identical_and_only_task_parts_change(make):
    h = make()
    h.learn("T1")
    m = h.method
    pre = h.pretrained()  # the cached pre-trained model, loaded afresh
    assert _same(_state(m.base), _state(pre))
    h.learn("T2")
    t2_after = _state(m.adapters["T2"])
    h.learn("T3", "T4")
    assert _same(_state(m.base), _state(pre))  # backbone, LN1/LN2 of the base, T1 head: untouched
    assert _same(_state(m.adapters["T2"]), t2_after)  # later tasks never touch an earlier task's parts
    # What a task trains is exactly its patches, its LayerNorm-2 copies and its head.
    t4 = h.ev.info("T4")
    trained = {id(p) for p in m.trainable_parameters(t4)}
    own = m.adapters["T4"]
    assert trained == {id(p) for p in own.parameters()}
    assert len(own.patches) == 2 * len(m.base.backbone.blocks) and len(own.ln2) == len(m.base.backbone.blocks)
    # ...and training did change them (LN2 copies moved away from the pre-trained LN2).
    fresh_ln2 = m.base.backbone.blocks[0].ln2.weight
    assert not torch.equal(m.adapters["T2"].ln2[0].weight, fresh_ln2)


def test_serial_patch_sits_between_conv_and_ln2_and_starts_near_identity(make):
    h = make()
    h.learn("T1")
    m = h.method
    t2 = h.ev.info("T2")
    m.tasks.append(t2)
    m.begin_task(t2)
    a = m.adapters["T2"]
    w = a.patches[0].down.weight
    assert w.abs().max() <= 0.04 and abs(w.std().item() - 0.02) < 0.01 and torch.all(a.patches[0].down.bias == 0)
    x = torch.from_numpy(h.ev.val_data("T2").inputs[:8])
    with torch.no_grad():
        for p in a.patches:
            p.up.weight.zero_()  # W_up = 0: every patch is the identity
    # With identity patches and LN2 copies equal to the base LN2, the task sees the base representation.
    assert torch.allclose(m.base.backbone(x, a.hooks()), m.base.backbone(x), atol=1e-6)
    # A patch transforms the conv output z (serial) -- here conv 1 of block 0, checked by hand.
    with torch.no_grad():
        a.patches[1].up.weight.normal_()
    seen = {}

    def spy(i, z, inp):
        out = a.patches[i](z, inp)
        seen[i] = (z, out)
        return out

    m.base.backbone(x, Hooks(patch=spy, norms=[(None, ln) for ln in a.ln2]))
    z, out = seen[1]
    p = a.patches[1]
    assert torch.allclose(out, z + p.up(F.gelu(p.down(z))))


def test_parallel_variant_patches_from_the_conv_input(make):
    h = make(**{"peterrec.insertion": "parallel"})
    h.learn("T1")
    h.method.tasks.append(h.ev.info("T2"))
    h.method.begin_task(h.ev.info("T2"))
    p = h.method.adapters["T2"].patches[0]
    z, x = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    assert torch.allclose(p(z, x), z + p.up(F.leaky_relu(p.down(x))))
    assert torch.allclose(p(z + 1, x) - p(z, x), torch.ones_like(z))  # no transform of z itself


def test_bce_neg1_loss_is_one_positive_and_one_sampled_negative(make):
    h = make(**{"peterrec.loss": "bce_neg1"})
    h.learn("T1")
    m, t2 = h.method, h.ev.info("T2")
    m.tasks.append(t2)
    m.begin_task(t2)
    b = h.batch("T2")
    replay = np.random.default_rng()
    replay.bit_generator.state = m.rng.bit_generator.state
    loss = m.loss(t2, b)
    neg = (b.y + torch.from_numpy(replay.integers(1, t2.n_labels, size=len(b.y)))) % t2.n_labels
    assert not torch.any(neg == b.y)
    logits = m.forward_logits("T2", b.x, train=True)
    expect = -(F.logsigmoid(logits[b.rows, b.y]) + F.logsigmoid(-logits[b.rows, neg])).mean()
    assert torch.allclose(loss, expect)


def test_save_load_round_trip_gives_identical_scores(make):
    h = make()
    h.learn("T1", "T2", "T3")
    fresh = h.reload()
    a, b = h.scores(), h.scores(fresh)
    assert a.keys() == {"T1", "T2", "T3"} and all(torch.equal(a[k], b[k]) for k in a)


def test_runs_end_to_end_with_zero_bwt_in_any_order(run_mini):
    for kw in ({}, {"order": "reversed", "noise": 2}):
        r = run_mini("peterrec", **kw)
        m = len(r["tasks"])
        assert all((r["R"][j][i] is not None) == (i <= j) for j in range(m) for i in range(m))
        assert all(r["R"][j][i] == r["R"][i][i] for j in range(m) for i in range(j + 1))  # no forgetting


def test_t2_patches_train_and_block_0_is_conv_patch_ln_relu_residual_by_hand():
    """T2's patches train, the base does not; block 0 = E + ReLU(LN2_T2(P(conv2(ReLU(LN1(P(conv1 E))))))) by hand."""
    h = Harness("peterrec")
    h.learn("T1")
    m, real = h.method, h.fit
    base0, init = _state(m.base), {}

    def fit(method, task, train, val, **kw):
        init.update(_state(method.adapters[task.name]))
        return real(method, task, train, val, **kw)

    h.fit = fit
    h.learn("T2")
    a = m.adapters["T2"]
    assert _same(_state(m.base), base0)
    now = _state(a)
    for i in range(len(a.patches)):
        for k in (f"patches.{i}.up.weight", f"patches.{i}.down.weight"):
            assert not torch.equal(now[k], init[k]), f"{k} never trained"
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a clearly non-identity patch and LN2 copy, so every term shows
        for p in (a.patches[0].up.weight, a.patches[1].up.weight, a.ln2[0].weight, a.ln2[0].bias):
            p.copy_(torch.randn(p.shape, generator=g))
    bb = m.base.backbone
    one = copy.deepcopy(bb)
    one.blocks = one.blocks[:1]  # the backbone cut after block 0
    x = h.x("T2", 8)
    got = one(x, a.hooks())
    blk, d = bb.blocks[0], bb.cfg.dilations[0]

    def conv(inp, c, dil):  # causal dilated conv, written with F.conv1d on the kernel in Conv1d's layout
        w = c.conv1d_layout(c.weight)
        out = F.conv1d(F.pad(inp.transpose(1, 2), ((w.shape[-1] - 1) * dil, 0)), w, c.bias, dilation=dil)
        return out.transpose(1, 2)

    def patch(p, z):
        return z + F.linear(F.gelu(F.linear(z, p.down.weight, p.down.bias)), p.up.weight, p.up.bias)

    def ln(z, norm):
        return F.layer_norm(z, z.shape[-1:], norm.weight, norm.bias, bb.cfg.ln_eps)

    e = bb.item_emb.weight[x]
    h1 = F.relu(ln(patch(a.patches[0], conv(e, blk.conv1, d)), blk.ln1))  # LN1: the shared, frozen one
    want = e + F.relu(ln(patch(a.patches[1], conv(h1, blk.conv2, 2 * d)), a.ln2[0]))
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)
    assert (got - one(x)).abs().max() > 1e-2  # the unpatched base block differs
