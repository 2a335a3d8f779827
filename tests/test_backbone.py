"""Backbone: shapes, causality (with and without hooks), hook semantics, receptive field."""

import pytest
import torch
import torch.nn.functional as F

from curb.backbone import NO_HOOKS, PRESETS, BackboneConfig, CausalConv, Cone, Hooks, NextItNet, PlainModel

CFG = BackboneConfig(channels=16, dilations=(1, 2))


def _model(cfg=CFG):
    torch.manual_seed(0)
    return NextItNet(50, cfg).double()


def test_output_shape_and_receptive_field():
    m = _model()
    x = torch.randint(0, 50, (3, 11))
    assert m(x).shape == (3, 11, 16)
    assert BackboneConfig().receptive_field() == 121  # docs/protocol.md §3.4 for the paper preset


def test_causal_changing_a_later_item_never_changes_earlier_positions():
    m = _model()
    gates = [(torch.rand(16, dtype=torch.float64), torch.rand(16, dtype=torch.float64)) for _ in CFG.dilations]
    hooks = Hooks(gates=gates, conv_weight=lambda i, w: w * 0.5)
    x = torch.randint(1, 50, (4, 12))
    for h in (Hooks(), hooks):
        base = m(x, h)
        for t in (0, 5, 11):
            y = x.clone()
            y[:, t] = (y[:, t] % 49) + 1  # a different real item
            out = m(y, h)
            assert torch.equal(out[:, :t], base[:, :t]), f"position < {t} changed"
            assert not torch.allclose(out[:, t], base[:, t])


def test_conv_matches_reference_dilated_conv1d():
    """The matmul-over-shifts conv equals a left-padded dilated Conv1d."""
    m = _model()
    conv = m.blocks[1].conv2  # dilation 4
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    ours = conv(x, conv.weight, conv.bias)
    pad = (conv.kernel - 1) * conv.dilation
    w = conv.conv1d_layout(conv.weight)  # stored as the matmul's [k * in, out]; Conv1d wants [out, in, k]
    ref = F.conv1d(F.pad(x.transpose(1, 2), (pad, 0)), w, conv.bias, dilation=conv.dilation).transpose(1, 2)
    assert torch.allclose(ours, ref)


def test_conv_init_draws_exactly_what_a_conv1d_would():
    """Same seed, same values as nn.Conv1d's default init, only laid out for the matmul."""
    torch.manual_seed(3)
    conv = CausalConv(8, 3, 2)
    torch.manual_seed(3)
    ref = torch.nn.Conv1d(8, 8, 3)
    assert conv.weight.shape == (24, 8) and conv.weight.is_contiguous()
    assert torch.equal(conv.conv1d_layout(conv.weight), ref.weight) and torch.equal(conv.bias, ref.bias)


def test_hooks_change_exactly_what_they_should():
    m = _model()
    x = torch.randint(1, 50, (2, 7))
    base = m(x)
    zero_gates = [(torch.zeros(16, dtype=torch.float64), torch.zeros(16, dtype=torch.float64)) for _ in CFG.dilations]
    # Closed gates: every residual branch contributes 0, output is the item embedding.
    assert torch.allclose(m(x, Hooks(gates=zero_gates)), m.item_emb(x))
    ones = [(torch.ones(16, dtype=torch.float64), None) for _ in CFG.dilations]
    assert torch.allclose(m(x, Hooks(gates=ones)), base)
    # A patch that returns the conv output unchanged is the identity.
    assert torch.allclose(m(x, Hooks(patch=lambda i, z, inp: z)), base)
    # Per-batch-row gates: row r of the batch gets its own gate.
    g = torch.stack([torch.ones(16), torch.zeros(16)]).double()
    out = m(x, Hooks(gates=[(g, g) for _ in CFG.dilations]))
    assert torch.allclose(out[0], base[0]) and torch.allclose(out[1], m.item_emb(x)[1])


def test_plain_model_head_init_and_positions():
    torch.manual_seed(0)
    pm = PlainModel(50, CFG)
    head = pm.add_head("T2", 30)
    assert torch.all(head.bias == 0.1) and abs(head.weight.std().item() - 0.01) < 0.003
    x = torch.randint(1, 50, (2, 7))
    assert pm.logits("T2", x).shape == (2, 30)
    assert pm.logits("T2", x, all_positions=True).shape == (2, 7, 30)
    assert torch.allclose(pm.logits("T2", x), pm.logits("T2", x, all_positions=True)[:, -1])


@pytest.mark.parametrize("preset", ["small", "paper"])
def test_cone_computes_only_what_the_last_positions_read_and_gives_the_same_values(preset):
    cfg = PRESETS[preset].backbone
    torch.manual_seed(0)
    net = NextItNet(300, cfg)
    x = torch.randint(1, 300, (6, 30))
    x[:2, :12] = 0  # left padding
    f, n_conv = cfg.channels, 2 * len(cfg.dilations)
    patch = torch.nn.Linear(f, f)
    hooks = Hooks(gates=[(torch.rand(6, f), torch.rand(f))] * len(cfg.dilations),  # per-row and shared gates
                  conv_weight=lambda i, w: w * 0.9,
                  patch=lambda i, z, inp: z + 0.1 * patch(inp),  # reads the conv's input at z's positions
                  norms=[(None, torch.nn.LayerNorm(f))] * len(cfg.dilations))
    for h in (NO_HOOKS, hooks):
        full = net(x, h)
        for out in (1, 2, 3):
            assert torch.allclose(net(x, h, out=out), full[:, -out:], atol=1e-5)
        assert torch.allclose(net.read(x, h), full[:, -1], atol=1e-5)
        net.eval()  # evaluation computes every position: bit-equal to the whole pass, any chunk size
        assert torch.equal(net.read(x, h), full[:, -1])
        net.train()
    # gradients of a last-position loss agree with the whole computation's
    grads = []
    for out in (None, 1):
        net.zero_grad()
        net(x, hooks, out=out)[:, -1].pow(2).sum().backward()
        grads.append([p.grad for p in net.parameters()])  # None: replaced by a hook (LN2)
    for a, b in zip(*grads):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-4, rtol=1e-4))
    # it really skips rows: positions computed per conv, from the first block to the last
    cone = Cone.of(30, 1, cfg, x.device)
    rows = [30 if blk is None else blk.convs[r].shape[1] for blk in cone.blocks for r in (0, 1)]
    assert rows[-4:] == [15, 7, 3, 1] and sum(rows) < 30 * n_conv  # dilations ..., 1, 2, 4, 8 at the top
    assert all(r == 30 for r in rows[:-4])


@pytest.mark.parametrize("preset", ["small", "paper"])
def test_row_groups_reading_different_positions_equal_their_own_passes(preset):
    """`segments`: each group computed through its own cone (all groups in one tensor while every
    group needs every position) gives its own pass's values and gradients, per-row gates, weight
    and patch hooks included."""
    cfg = PRESETS[preset].backbone
    torch.manual_seed(0)
    net = NextItNet(300, cfg)
    x = torch.randint(1, 300, (7, 30))
    x[:2, :12] = 0
    gate = torch.rand(7, cfg.channels, requires_grad=True)
    patch = torch.nn.Linear(cfg.channels, cfg.channels)
    hooks = lambda g: Hooks(gates=[(g, None)] * len(cfg.dilations), conv_weight=lambda i, w: w * 0.9,
                            patch=lambda i, z, inp: z + 0.1 * patch(inp))
    parts = [(3, 1), (2, 2), (2, None)]
    got = net.segments(x, parts, hooks(gate))
    assert [tuple(h.shape[:2]) for h in got] == [(3, 1), (2, 2), (2, 30)]
    sum(h.square().sum() for h in got).backward()
    grads = [p.grad.clone() for p in net.parameters()] + [gate.grad.clone()]
    net.zero_grad()
    gate.grad = None
    own = [net(x[a:a + r], hooks(gate[a:a + r]), out=o) for (r, o), a in zip(parts, (0, 3, 5))]
    for h, ref in zip(got, own):
        assert torch.allclose(h, ref, atol=1e-5)
    sum(h.square().sum() for h in own).backward()
    for g, p in zip(grads, [*net.parameters(), gate]):  # float round-off relative to the tensor's scale
        assert (g - p.grad).abs().max() <= 1e-5 * p.grad.abs().max() + 1e-7
    with pytest.raises(ValueError, match="do not add up"):
        net.segments(x, [(3, 1), (3, 2)])


def test_mean_readout_averages_the_positions_that_hold_an_item():
    """`readout="mean"` (a diagnostic, protocol §4.8.3): the head reads the mean hidden state over the
    real positions of a left-padded sequence; `last` stays the paper's last position."""
    import dataclasses

    last, mean = _model(), _model(dataclasses.replace(CFG, readout="mean"))
    assert torch.equal(last.item_emb.weight, mean.item_emb.weight)  # same weights, only the read differs
    x = torch.randint(1, 50, (3, 9))
    x[0, :4] = 0  # padding at the front, as the streams pad
    x[1, :8] = 0  # one real item
    for train in (True, False):
        last.train(train), mean.train(train)
        h = last(x)
        assert torch.allclose(last.read(x), h[:, -1])
        want = torch.stack([h[0, 4:].mean(0), h[1, 8:].mean(0), h[2].mean(0)])
        assert torch.allclose(mean.read(x), want)
        assert torch.equal(mean.read(x, all_positions=True), h)  # next-item tasks still read every position
    with pytest.raises(ValueError, match="readout must be last|mean"):
        BackboneConfig(readout="first")


def test_the_readout_does_not_key_the_shared_t1_model():
    """T1 reads every position, so both read-outs start from the same cached T1 model."""
    from curb.runner import CellSpec, build_stream, resolve_config, t1_cache_name

    stream = build_stream(CellSpec("sinmo", "synthetic-mini"), None)
    names = {t1_cache_name(stream, resolve_config(CellSpec("sinmo", "synthetic-mini", overrides=ov)), 0,
                           torch.device("cpu"))
             for ov in ((), (("backbone.readout", "mean"),))}
    assert len(names) == 1
    wider = resolve_config(CellSpec("sinmo", "synthetic-mini", overrides=(("backbone.channels", "8"),)))
    assert t1_cache_name(stream, wider, 0, torch.device("cpu")) not in names  # the key does see the backbone


def test_a_next_item_task_is_scored_at_its_last_position_under_the_mean_readout(tmp_path):
    """The read-out option is for later tasks' heads: T1's test score must not move with it."""
    from curb.runner import CellSpec, run_cell

    last = run_cell(CellSpec("fineall", "synthetic-mini"), tmp_path)
    mean = run_cell(CellSpec("fineall", "synthetic-mini", overrides=(("backbone.readout", "mean"),)), tmp_path)
    t1, later = last["tasks"][0]["name"], [t["name"] for t in last["tasks"][1:]]
    assert mean["final"][t1] == last["final"][t1]  # the same cached T1 model, read the same way
    assert any(mean["final"][t] != last["final"][t] for t in later)  # later heads read something else
