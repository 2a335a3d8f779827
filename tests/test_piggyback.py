"""Piggyback: frozen backbone, W ⊙ 1[S > τ], straight-through gradients, packed-bit storage."""

import copy
import math

import pytest
import torch

from curb.backbone import Hooks
from curb.methods.piggyback import pack_bits, unpack_bits

from harness import Harness

# A large score lr so that masks really flip within the 2 mini epochs (the default lr would
# leave every mask at 1, and "W ⊙ mask = W" would prove nothing).
FAST = {"piggyback.mask_lr": "0.05"}


def test_pack_unpack_roundtrip_odd_sizes():
    g = torch.Generator().manual_seed(0)
    for shape in [(1,), (7,), (3, 5, 3), (16, 16, 3)]:
        m = torch.rand(shape, generator=g) > 0.5
        packed = pack_bits(m)
        assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(m.numel() / 8)
        assert torch.equal(unpack_bits(packed, m.shape), m)


def test_backbone_never_changes_and_effective_weights_are_masked_kernels():
    h = Harness("piggyback", **FAST)
    m = h.learn(*h.names[:3])
    pre = h.pretrained().state_dict()
    now = m.model.state_dict()
    assert all(torch.equal(now[k], pre[k]) for k in pre), "backbone or T1 head changed"
    convs = m.model.backbone.convs()
    for t in h.names[1:3]:
        masks = m.masks[t].masks(m.cfg.tau)
        ones = sum(float(x.sum()) for x in masks) / m.masks[t].n_weights()
        assert 0.0 < ones < 1.0, f"{t}: the masks must have learned something for this test to mean anything"
        hooks = m.hooks(t)
        for i, conv in enumerate(convs):
            assert torch.equal(hooks.conv_weight(i, conv.weight), conv.weight * masks[i])
            assert set(masks[i].unique().tolist()) <= {0.0, 1.0}
    # T1 is the pre-trained model, unmasked: its scores are the pre-trained model's.
    x = h.x("T1")
    assert torch.equal(m.score("T1", x), h.pretrained().logits("T1", x))


def test_training_masks_are_thresholded_scores_and_binarised_at_end_of_task():
    h = Harness("piggyback", **FAST)
    m = h.learn("T1")
    task = h.ev.info("T2")
    m.tasks.append(task)
    m.begin_task(task)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for s in m.masks["T2"].scores:  # scores spread around the threshold
            s.copy_(m.cfg.tau + 0.01 * torch.randn(s.shape, generator=g))
    expect = [s > m.cfg.tau for s in m.masks["T2"].scores]
    hooks = m.hooks("T2")
    for i, conv in enumerate(m.model.backbone.convs()):
        assert torch.equal(hooks.conv_weight(i, conv.weight), conv.weight * expect[i].float())
    m.end_task(task)
    assert m.masks["T2"].binarised and len(list(m.masks["T2"].parameters())) == 0
    assert all(torch.equal(a, b) for a, b in zip(m.masks["T2"].masks(m.cfg.tau), expect))


def test_gradients_reach_scores_straight_through_the_threshold():
    h = Harness("piggyback")
    m = h.learn("T1")
    task = h.ev.info("T2")
    m.tasks.append(task)
    m.begin_task(task)
    x = h.x("T2", 32)
    m.forward_logits("T2", x, train=True).logsumexp(-1).sum().backward()
    # Reference: the gradient w.r.t. the effective kernel W ⊙ m, times W (dL/dS = dL/dmask).
    convs = m.model.backbone.convs()
    eff = [(c.weight * 1.0).detach().requires_grad_() for c in convs]  # every mask is 1 at init
    h_ = m.model.backbone(x, Hooks(conv_weight=lambda i, w: eff[i]))
    m.model.heads["T2"](h_[:, -1]).logsumexp(-1).sum().backward()
    for s, e, c in zip(m.masks["T2"].scores, eff, convs):
        assert s.grad is not None and s.grad.abs().sum() > 0
        assert torch.allclose(s.grad, e.grad * c.weight, atol=1e-7, rtol=1e-5)
    assert all(p.grad is None for p in m.model.backbone.parameters()), "the frozen backbone got gradients"


def test_embedding_masks_option():
    h = Harness("piggyback", **{**FAST, "piggyback.mask_embeddings": "true"})
    m = h.learn("T1", "T2")
    masks = m.masks["T2"].masks(m.cfg.tau)
    emb = m.model.backbone.item_emb.weight
    assert len(masks) == len(m.model.backbone.convs()) + 1 and masks[-1].shape == emb.shape
    assert 0 < float(masks[-1].float().mean()) < 1
    x = h.x("T2", 8)
    assert torch.equal(m.hooks("T2").embed(x, emb), (emb * masks[-1])[x])
    ref = copy.deepcopy(m.model)  # the backbone really uses the hook: same as a masked embedding copy
    with torch.no_grad():
        ref.backbone.item_emb.weight.mul_(masks[-1])
    assert torch.equal(m.score("T2", x), ref.logits("T2", x, Hooks(conv_weight=m.hooks("T2").conv_weight)))
    assert torch.equal(emb, h.pretrained().backbone.item_emb.weight)


def test_storage_report_is_one_bit_per_masked_weight_plus_head():
    h = Harness("piggyback")
    m = h.learn(*h.names)
    rep = m.report()
    for t in h.names[1:]:
        bits = sum(math.ceil(c.weight.numel() / 8) for c in m.model.backbone.convs())
        head = 4 * sum(p.numel() for p in m.model.heads[t].parameters())
        assert rep["mask_bytes"][t] == bits and rep["storage_bytes"][t] == bits + head


def test_checkpoint_round_trip_mid_task_and_after():
    h = Harness("piggyback", **FAST)
    m = h.learn(*h.names[:3])
    task = h.ev.info(h.names[3])
    m.tasks.append(task)
    m.begin_task(task)  # a task in training: real-valued scores in the checkpoint
    with torch.no_grad():
        for s in m.masks[task.name].scores:
            s.uniform_(0, 0.01)
    fresh = h.reload()
    for t in h.names[1:4]:
        a, b = m.masks[t], fresh.masks[t]
        assert a.binarised == b.binarised
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not fresh.masks[task.name].binarised
    assert h.scores_equal(m, fresh)


@pytest.mark.parametrize("order,noise", [("reversed", None), ("default", 2)])
def test_any_order_and_noise_task_with_zero_forgetting(run_mini, order, noise):
    r = run_mini("piggyback", order=order, noise=noise)
    R = r["R"]
    assert all(R[j][i] is not None for j in range(len(R)) for i in range(j + 1))
    assert all(R[-1][i] == R[i][i] for i in range(len(R)))  # per-task masks: nothing old changes
    assert set(r["method_report"]["storage_bytes"]) == {t["name"] for t in r["tasks"][1:]}


@pytest.mark.parametrize("mask_lr", ["0.02", "none"])
def test_mask_lr_is_the_scores_lr_and_the_head_keeps_the_task_lr(mask_lr):
    """mask_lr: the optimiser holds the scores at mask_lr (none: task lr) and the head at the task lr, and steps them so."""
    h = Harness("piggyback", **{"piggyback.mask_lr": mask_lr})
    m = h.learn("T1")
    task = h.ev.info("T2")
    assert task.kind == "recommend" and h.cfg.train.t2_lr is None
    task_lr = h.cfg.train.lr  # a recommend task's lr (docs/protocol.md §4.3)
    score_lr = task_lr if mask_lr == "none" else float(mask_lr)
    assert score_lr == task_lr or abs(score_lr - task_lr) > 1e-3
    m.tasks.append(task)
    m.begin_task(task)
    opt = m.make_optimizer(task)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    scores, head = list(m.masks["T2"].scores), list(m.model.heads["T2"].parameters())
    assert len(scores) == len(m.model.backbone.convs()) and len(head) == 2
    assert lr_of == {**{id(s): score_lr for s in scores}, **{id(p): task_lr for p in head}}
    before = [p.detach().clone() for p in scores + head]
    opt.zero_grad()
    m.loss(task, h.batch("T2")).backward()
    opt.step()
    steps = [(p.detach() - b).abs() for p, b in zip(scores + head, before)]
    # Adam's first step is lr * g / (|g| + eps): lr wherever the gradient is well above eps
    for step, p, want in zip(steps, scores + head, [score_lr] * len(scores) + [task_lr] * 2):
        assert step.max().item() == pytest.approx(want, rel=1e-3), p.shape
