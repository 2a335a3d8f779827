"""CONURE: owned weights bit-identical forever, BWT exactly 0, disjoint top-|W| masks that follow
the prune schedule, and a clear error once no free weight is left."""

import math

import pytest
import torch

from curb.backbone import Hooks
from curb.methods.conure import NoFreeWeightsError

from harness import Harness


def _weights(m):
    return [c.weight.detach().clone() for c in m.net.backbone.convs()]


def test_owned_weights_bit_identical_and_frozen_parts_untouched():
    h = Harness("conure")
    m = h.learn("T1")
    frozen = {k: v.clone() for k, v in m.net.backbone.state_dict().items() if "conv" not in k or "bias" in k}
    assert all(torch.equal(c.bias, torch.zeros_like(c.bias)) for c in m.net.backbone.convs())
    for j, name in enumerate(h.names[1:], start=2):
        w0, own0 = _weights(m), [o.clone() for o in m.net.owners()]
        h.learn(name)
        for w_before, w_after, o_before, o_after in zip(w0, _weights(m), own0, m.net.owners()):
            old = o_before > 0
            assert torch.equal(w_before[old], w_after[old]), f"{name}: a weight of an earlier task moved"
            assert torch.equal(o_after[old], o_before[old]), f"{name}: an earlier task lost ownership"
            assert (o_after[~old] <= j).all() and (o_after == j).any()
        assert any(not torch.equal(a[o == j], b[o == j]) for a, b, o in zip(w0, _weights(m), m.net.owners())), \
            f"{name}: its own weights never trained"
    now = m.net.backbone.state_dict()
    assert all(torch.equal(now[k], v) for k, v in frozen.items()), "embeddings / LayerNorms / biases moved after T1"


def test_masks_disjoint_top_magnitude_and_follow_the_schedule():
    h = Harness("conure", **{"conure.p": "0.7,0.5,0.6"})
    m = h.learn("T1", "T2")
    task = h.ev.info("T3")
    m.tasks.append(task)
    m.begin_task(task)
    m.phase = "train"
    w, before = _weights(m), [o.clone() for o in m.net.owners()]
    m.prune(task)
    assert m.cutoff(1) == pytest.approx(0.3) and m.cutoff(2) == pytest.approx(0.7 * 0.5)
    assert m.cutoff(3) == pytest.approx(0.7 * 0.5 * 0.4) and m.cutoff(4) == pytest.approx(0.7 * 0.5 * 0.6 * 0.4)
    for wi, o0, o in zip(w, before, m.net.owners()):
        for j in (1, 2, 3):  # realised share per tensor = the scheduled share, rounded to whole entries
            assert int((o == j).sum()) == round(m.cutoff(j) * o.numel())
        new = o == 3
        assert (o0[new] == 0).all()  # only free entries were taken (masks stay disjoint)
        assert wi[new].abs().min() >= wi[o == 0].abs().max()  # the largest free magnitudes
    rep = m.report()
    assert rep["kept"]["T3"] == pytest.approx(m.cutoff(3), abs=1e-3)
    assert rep["free_after"]["T3"] == pytest.approx(1 - m.cutoff(1) - m.cutoff(2) - m.cutoff(3), abs=1e-3)


def _t3_phases(h: Harness):
    """CONURE after T1 and T2, in each phase of T3 (train, then retrain after pruning): (method, a T3 batch)."""
    m = h.learn("T1", "T2")
    task = h.ev.info("T3")
    m.tasks.append(task)
    m.begin_task(task)
    x = h.x("T3", 16)
    for phase in ("train", "retrain"):
        if phase == "retrain":
            m.prune(task)
        m.phase = phase
        m._set_trainable(task)
        yield m, x


def test_effective_kernels_and_gradients_per_phase():
    h = Harness("conure")
    for m, x in _t3_phases(h):
        phase = m.phase
        m.net.zero_grad(set_to_none=True)
        m.forward_logits("T3", x, train=True).logsumexp(-1).sum().backward()
        for i, (conv, o) in enumerate(zip(m.net.backbone.convs(), m.net.owners())):
            w = conv.weight
            learn = (o == 0) if phase == "train" else (o == 3)
            use = torch.ones_like(o, dtype=torch.bool) if phase == "train" else (o > 0) & (o <= 3)
            assert torch.equal(m.kernel(i, w, "T3"), w * use)
            assert (w.grad[~learn] == 0).all() and w.grad[learn].abs().sum() > 0
            for j, old in enumerate(h.names[:2], start=1):  # old tasks: exactly their owned entries
                assert torch.equal(m.kernel(i, w, old), w * ((o > 0) & (o <= j)))
        assert m.net.backbone.item_emb.weight.grad is None


def _select_kernel(m, i, w, task_index):
    """The kernel as selects (the formula before the float masks): the same values and gradients."""
    owner = m.net.owners()[i]
    if m.phase == "train":
        return torch.where(owner == 0, w, w.detach())
    return torch.where(owner == task_index, w, w.detach() * ((owner > 0) & (owner <= task_index)))


def test_masked_kernels_equal_the_select_formula_bit_for_bit():
    for m, x in _t3_phases(Harness("conure")):
        grads = []
        for kernel in (m.kernel, lambda i, w, t: _select_kernel(m, i, w, 3)):
            m.net.zero_grad(set_to_none=True)
            out = m.net.heads["T3"](m.net.backbone(x, Hooks(conv_weight=lambda i, w: kernel(i, w, "T3")))[:, -1])
            out.logsumexp(-1).sum().backward()
            grads.append(([c.weight.grad.clone() for c in m.net.backbone.convs()], out.detach()))
        (g_new, out_new), (g_old, out_old) = grads
        assert torch.equal(out_new, out_old)
        assert all(torch.equal(a, b) for a, b in zip(g_new, g_old))


def test_no_free_weights_gives_a_clear_error():
    h = Harness("conure", **{"conure.p": "0.0"})  # T1 keeps every entry
    m = h.learn("T1")
    assert m.report()["free_after"]["T1"] == 0.0
    with pytest.raises(NoFreeWeightsError, match=r"no free conv weights left for task 'T2'.*conure\.p"):
        h.learn("T2")


def test_checkpoint_round_trip_mid_task_and_after():
    h = Harness("conure")
    m = h.learn("T1", "T2")
    fresh = h.reload()
    assert all(torch.equal(a, b) for a, b in zip(m.net.owners(), fresh.net.owners()))
    assert all(torch.equal(a, b) for a, b in zip(_weights(m), _weights(fresh)))
    assert fresh.kept == m.kept and h.scores_equal(m, fresh)
    for method in (m, fresh):  # continues identically from the checkpoint (same torch seed for the head)
        torch.manual_seed(5)
        h.learn("T3", method=method)
    assert all(torch.equal(a, b) for a, b in zip(m.net.owners(), fresh.net.owners()))
    task = h.ev.info("T4")
    m.tasks.append(task)
    m.begin_task(task)
    m.phase = "retrain"
    mid = h.reload()
    assert mid.phase == "retrain" and [t.name for t in mid.tasks] == h.names[:4]
    assert mid.net.backbone.convs()[0].weight.requires_grad and not mid.net.backbone.item_emb.weight.requires_grad


@pytest.mark.parametrize("order,noise", [("default", None), ("reversed", None), ("default", 2)])
def test_bwt_exactly_zero_in_any_order(run_mini, order, noise):
    r = run_mini("conure", order=order, noise=noise)
    R = r["R"]
    assert all(R[j][i] is not None for j in range(len(R)) for i in range(j + 1))
    for i in range(len(R)):
        assert all(R[j][i] == R[i][i] for j in range(i, len(R))), f"task {i} changed after it was learned"
        assert all(r["metrics"][j][i] == r["metrics"][i][i] for j in range(i, len(R)))
    assert r["method_report"]["free_after"][r["tasks"][-1]["name"]] == pytest.approx(0.7 ** len(R), abs=0.01)


def _biases(m):
    return [c.bias.detach().clone() for c in m.net.backbone.convs()]


@pytest.mark.parametrize("train_bias", [True, False])
def test_train_bias_trains_conv_biases_in_t1s_train_phase_only(train_bias):
    """train_bias=true: conv biases train in T1's train phase only, then stay bit-identical; false: always exactly 0."""
    h = Harness("conure", **{"conure.train_bias": str(train_bias).lower(), "train.t1_epochs": 1, "train.epochs": 1})
    m, real = h.method, h.fit
    init = _biases(m)
    phases = []  # (task, phase, biases before, biases after, biases handed to the optimiser)

    def fit(method, task, train, val, phase="train", **kw):
        before = _biases(method)
        trainable = {id(p) for p in method.trainable_parameters(task)}
        in_opt = [id(c.bias) in trainable for c in method.net.backbone.convs()]
        out = real(method, task, train, val, phase=phase, **kw)
        phases.append((task.name, phase, before, _biases(method), in_opt))
        return out

    h.fit = fit
    h.learn("T1", "T2")
    assert [(t, p) for t, p, *_ in phases] == [(t, p) for t in ("T1", "T2") for p in ("train", "retrain")]
    bound = 1 / math.sqrt(m.setup.backbone.channels * m.setup.backbone.kernel)  # nn.Conv1d's bias init
    for t, p, before, after, in_opt in phases:
        first = (t, p) == ("T1", "train")
        assert in_opt == [train_bias and first] * len(in_opt), (t, p)
        moved = [not torch.equal(a, b) for a, b in zip(before, after)]
        if train_bias and first:
            assert all(moved), "T1's train phase must train every conv bias"
        else:
            assert not any(moved), f"{t} {p}: a conv bias moved"
    final = _biases(m)
    if train_bias:
        assert all(b.abs().max() <= bound and b.abs().sum() > 0 for b in init)
        assert all(torch.equal(a, b) for a, b in zip(final, phases[0][3]))  # = right after T1's train phase
    else:
        assert all(torch.equal(b, torch.zeros_like(b)) for b in init + final)
