"""Backbone: shapes, causality (with and without hooks), hook semantics, receptive field."""

import torch
import torch.nn.functional as F

from curb.backbone import BackboneConfig, Hooks, NextItNet, PlainModel

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
    ref = F.conv1d(F.pad(x.transpose(1, 2), (pad, 0)), conv.weight, conv.bias, dilation=conv.dilation).transpose(1, 2)
    assert torch.allclose(ours, ref)


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
