"""The sampled T1 softmax (`train.t1_negatives`, docs/protocol.md §4.1) and the evaluation memory
cap (docs/performance.md, "Evaluation memory")."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import curb.evaluator as evaluator
import curb.method as method_module
from curb.backbone import Hooks, make_head
from curb.config import ConfigError
from curb.evaluator import MAX_CELLS, evaluate_users, validation_loss
from curb.method import (Batch, Method, TaskData, TaskInfo, TrainConfig, get_method, sampled_softmax_ce,
                         task_loss)
from curb.runner import CellSpec, build_stream, resolve_config, run_cell, t1_cache_name
from curb.training import batches

from harness import Harness


def _case(n_rows: int = 300, f: int = 8, shape: tuple[int, int] = (4, 7), seed: int = 0) -> tuple[Tensor, nn.Linear, Tensor]:
    torch.manual_seed(seed)
    head = make_head(f, n_rows)
    with torch.no_grad():
        head.weight.normal_(0, 0.5)  # spread logits, so a wrong candidate set shows in the loss
    h = torch.randn(*shape, f, requires_grad=True)
    y = torch.randint(0, n_rows, shape)
    y[0, :3] = 0  # padding targets, as early positions of short sequences have
    return h, head, y


# ---------------------------------------------------------------------------------- the loss itself
@pytest.mark.parametrize("ignore", [False, True])
def test_negatives_covering_the_vocabulary_give_the_full_softmax_loss_and_gradients(ignore):
    h, head, y = _case()
    if ignore:
        y = y.masked_fill(y == 0, -100)
    full = F.cross_entropy(head(h).reshape(-1, 300), y.reshape(-1), ignore_index=-100)
    g_full = torch.autograd.grad(full, [h, head.weight, head.bias])
    sampled = sampled_softmax_ce(h, head, y, 300, np.random.default_rng(0))
    g_sampled = torch.autograd.grad(sampled, [h, head.weight, head.bias])
    torch.testing.assert_close(sampled, full, rtol=1e-6, atol=1e-6)
    for a, b in zip(g_sampled, g_full):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_the_logq_correction_makes_the_sampled_partition_sum_unbiased():
    """E[sum of exp(corrected logits)] over the negative draw = the full sum: checked by averaging."""
    h, head, y = _case(n_rows=200, shape=(1, 5))
    rng = np.random.default_rng(1)
    with torch.no_grad():
        full = torch.logsumexp(head(h).reshape(-1, 200), dim=1) - head(h).reshape(-1, 200).gather(1, y.reshape(-1, 1))[:, 0]
        got = np.mean([sampled_softmax_ce(h, head, y, 40, rng).item() for _ in range(2000)])
    # log of an unbiased sum is biased low (Jensen), by little at 20 % of the rows
    assert abs(got - full.mean().item()) < 0.05
    uncorrected = []
    with torch.no_grad():
        for _ in range(200):
            neg = torch.from_numpy(rng.choice(200, 40, replace=False))
            cand, inv = torch.unique(torch.cat([y.reshape(-1), neg]), return_inverse=True)
            logits = F.linear(h.reshape(-1, 8), head.weight[cand], head.bias[cand])
            uncorrected.append(F.cross_entropy(logits, inv[:5]).item())
    assert np.mean(uncorrected) < got - 0.5  # without the correction the loss is far below the full one


def test_negatives_come_from_the_given_seeded_generator():
    h, head, y = _case(n_rows=5000)
    a = sampled_softmax_ce(h, head, y, 1000, np.random.default_rng(7))
    b = sampled_softmax_ce(h, head, y, 1000, np.random.default_rng(7))
    c = sampled_softmax_ce(h, head, y, 1000, np.random.default_rng(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    rng = np.random.default_rng(7)
    sampled_softmax_ce(h, head, y, 1000, rng)
    ref = np.random.default_rng(7)
    ref.choice(5000, size=1000, replace=False, shuffle=False)
    assert rng.bit_generator.state == ref.bit_generator.state  # exactly one draw of the negatives


def test_only_the_candidate_rows_of_the_head_get_a_gradient():
    h, head, y = _case(n_rows=5000)
    sampled_softmax_ce(h, head, y, 200, np.random.default_rng(3)).backward()
    neg = np.random.default_rng(3).choice(5000, size=200, replace=False, shuffle=False)
    cand = set(neg.tolist()) | set(y.reshape(-1).tolist())
    touched = set(torch.nonzero(head.weight.grad.abs().sum(1)).flatten().tolist())
    assert touched <= cand and len(touched) > 0.9 * len(cand)
    others = torch.ones(5000, dtype=torch.bool)
    others[list(cand)] = False
    assert head.weight.grad[others].abs().max() == 0 and head.bias.grad[others].abs().max() == 0


# ---------------------------------------------------------------------------------- the option
def test_the_option_parses_as_a_share_or_a_count_and_rejects_the_rest():
    def value(text: str):
        return resolve_config(CellSpec("sinmo", "synthetic-mini", overrides=(("train.t1_negatives", text),))).train.t1_negatives

    assert value("0.2") == 0.2 and isinstance(value("0.2"), float)
    assert value("500") == 500 and isinstance(value("500"), int)
    assert value("1.0") == 1.0 and value("none") is None
    for bad in ("0", "0.0", "1.5", "-3", "x", "nan"):
        with pytest.raises(ConfigError, match="t1_negatives"):
            value(bad)
    assert TrainConfig().t1_negatives is None and TrainConfig().t1_negative_count(100) is None
    assert TrainConfig(t1_negatives=0.2).t1_negative_count(3457) == 691
    assert TrainConfig(t1_negatives=1.0).t1_negative_count(3457) == 3457
    assert TrainConfig(t1_negatives=8192).t1_negative_count(3457) == 3457  # a count is capped at the vocabulary


def test_the_t1_cache_key_tells_full_from_sampled_and_keeps_the_full_key():
    spec = CellSpec("sinmo", "synthetic-mini")
    stream, cfg, cpu = build_stream(spec, None), resolve_config(spec), torch.device("cpu")
    names = {v: t1_cache_name(stream, dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, t1_negatives=v)),
                              0, cpu) for v in (None, 0.2, 0.1, 500)}
    assert len(set(names.values())) == 4
    assert names[None] == t1_cache_name(stream, cfg, 0, cpu)


def test_the_t1_cache_key_tells_precisions_and_compilation_apart():
    """A bf16 or compiled run trains another T1 model: it must never pick up the fp32 one (or the
    reverse); fp32 eager keys are those written before the knobs existed."""
    spec = CellSpec("sinmo", "synthetic-mini")
    stream, cfg, cpu = build_stream(spec, None), resolve_config(spec), torch.device("cpu")
    name = lambda **kw: t1_cache_name(stream, dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **kw)), 0, cpu)
    plain = name(precision="fp32", compile=False)
    assert plain == t1_cache_name(stream, cfg, 0, cpu)
    assert len({plain, name(precision="bf16"), name(compile=True), name(precision="bf16", compile=True)}) == 4


T1_TRAINERS = ["sinmo", "finetune", "ewc", "lwf", "replay", "peterrec", "hat", "conure", "teracon", "ditto"]


def _t1_stage(name: str, **overrides: str) -> tuple[Method, TaskInfo, Batch]:
    """`name` about to train T1 itself (no shared pre-trained model offered), and a T1 batch."""
    h = Harness(name, **overrides)
    torch.manual_seed(0)
    m = get_method(name)(dataclasses.replace(h.setup, pretrained_t1=None))
    info = h.ev.info(h.names[0])
    m.tasks.append(info)
    m.begin_task(info)
    if name == "conure":
        m.phase = "train"
    return m, info, next(batches(h.ev.train_data(info.name), 16, np.random.default_rng(5), m.device))


def _t1_logits_from_the_modules(m: Method, name: str, task: str, x: Tensor, s: float) -> Tensor:
    """T1 logits [B, n-1, |V|] from the method's own backbone and T1 head called directly (no
    `forward_logits`/`represent`); gated methods get σ(s·e^T1) as written in docs/methods.md."""
    if name == "sinmo":
        model = m.models[task]
    elif name == "peterrec":
        model = m.base
    elif name in ("finetune", "ewc", "lwf", "replay"):
        model = m.model
    else:
        model = m.net
    if name == "hat":  # e^T1 [blocks, 2, f]: row (k, r) gates sublayer r of block k
        g = torch.sigmoid(s * m.net.emb[task])
        hooks = Hooks(gates=[(g[k, 0], g[k, 1]) for k in range(g.shape[0])])
    elif name in ("teracon", "ditto"):  # T1 stage: plain mask σ(s·e^T1) [K, f], row 2k+r gates sublayer r of block k
        g = torch.sigmoid(s * m.net.emb[task])
        hooks = Hooks(gates=[(g[2 * k], g[2 * k + 1]) for k in range(g.shape[0] // 2)])
    else:  # plain models; CONURE's T1 train phase uses the whole kernel
        hooks = Hooks()
    return model.heads[task](model.backbone(x, hooks))


@pytest.mark.parametrize("name", T1_TRAINERS)
def test_default_t1_loss_is_the_full_softmax_of_the_methods_logits(name):
    """Default config: T1 loss = full-softmax CE over every position (padding counted) of backbone+T1 head (+λ·mean gate for HAT)."""
    m, info, first = _t1_stage(name)
    batch = dataclasses.replace(first, index=3, n_batches=8)  # mid-epoch: the annealed s is not 1/smax
    assert (batch.y == 0).any()  # padding targets present: the default counts them
    state = m.rng.bit_generator.state
    got = m.loss(info, batch)
    assert m.rng.bit_generator.state == state  # no negative is drawn
    smax = getattr(m.cfg, "smax", None)
    s = 1 / smax + (smax - 1 / smax) * 3 / 8 if smax else None  # s_b = 1/smax + (smax - 1/smax)·b/N_b (§4.6)
    with torch.no_grad():
        logits = _t1_logits_from_the_modules(m, name, info.name, batch.x, s)
        assert logits.shape == (*batch.y.shape, info.n_labels)
        want = F.cross_entropy(logits.reshape(-1, info.n_labels), batch.y.reshape(-1))
        if name == "hat":  # Reg = Σ a(1 − A) / Σ (1 − A) with A = 0 at T1: the mean gate (docs/methods.md)
            want = want + m.cfg.lam * torch.sigmoid(s * m.net.emb[info.name]).mean()
    torch.testing.assert_close(got.detach(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", T1_TRAINERS)
def test_every_method_trains_t1_with_the_sampled_softmax_from_one_place(name):
    m, info, batch = _t1_stage(name, **{"train.t1_negatives": "0.1"})
    state = m.rng.bit_generator.state
    loss = m.loss(info, batch)
    full = task_loss(m.forward_logits(info.name, batch.x, train=True, all_positions=True, batch=batch), batch)
    assert torch.isfinite(loss) and not torch.equal(loss, full)
    assert m.rng.bit_generator.state != state  # negatives drawn with the method's seeded generator
    loss.backward()
    grad = m.head(info.name).weight.grad
    rows = set(torch.nonzero(grad.abs().sum(1)).flatten().tolist())
    n_rows = m.head(info.name).out_features
    assert rows >= set(batch.y.unique().tolist()) and len(rows) <= len(batch.y.unique()) + round(0.1 * n_rows)


def test_a_method_without_a_head_is_refused_with_the_option_named():
    class Opaque(Method):
        def forward_logits(self, task, x, *, train, all_positions=False, batch=None):
            return torch.zeros(*x.shape, 5, requires_grad=True)

    m, info, batch = _t1_stage("sinmo", **{"train.t1_negatives": "0.5"})
    opaque = Opaque(m.setup)
    opaque.represent = lambda *a, **k: torch.zeros(*batch.x.shape, 4)
    with pytest.raises(NotImplementedError, match="train.t1_negatives"):
        opaque.loss(info, batch)


def test_a_sampled_cell_records_the_option_and_trains_its_own_shared_t1_model(tmp_path):
    sets = {"train.t1_epochs": "2", "train.epochs": "1"}
    full = run_cell(CellSpec("fineall", "synthetic-mini", overrides=tuple(sorted(sets.items()))), tmp_path,
                    echo=lambda *_: None)
    spec = CellSpec("fineall", "synthetic-mini", overrides=tuple(sorted({**sets, "train.t1_negatives": "0.2"}.items())))
    sampled = run_cell(spec, tmp_path, echo=lambda *_: None)
    assert full["config"]["train"]["t1_negatives"] is None and sampled["config"]["train"]["t1_negatives"] == 0.2
    assert full["spec_hash"] != sampled["spec_hash"]
    assert len(list((tmp_path / ".cache" / "t1").glob("t1-*.pt"))) == 2  # the sampled T1 model is not the full one's
    again = run_cell(spec, tmp_path / "again", echo=lambda *_: None)
    assert again["R"] == sampled["R"]  # deterministic: the negatives come from the seeded generator


LATER_NEXT_ITEM_TERMS = {  # method -> (dataset, overrides): later tasks with a term that trains T1's objective
    "replay": ("synthetic-mini", {"replay.users": "20", "replay.batch_users": "5"}),  # β: T1 buffer's labels
    "ditto": ("synthetic-time-mini", {}),  # BKT to the next-item task (users holding new items)
}


@pytest.mark.parametrize("name", sorted(LATER_NEXT_ITEM_TERMS))
def test_later_next_item_terms_run_sampled_too(monkeypatch, name):
    """A T2 step's T1 next-item term calls sampled_softmax_ce once, on T1's head, round(share·|T1 labels|) negatives."""
    dataset, sets = LATER_NEXT_ITEM_TERMS[name]
    h = Harness(name, dataset=dataset, **{"train.t1_negatives": "0.3", **sets})
    m, no_fit = h.method, lambda *a, **kw: None
    t1, t2 = h.ev.info("T1"), h.ev.info("T2")
    m.learn_task(t1, h.ev.train_data("T1"), h.ev.val_data("T1"), no_fit)  # T1's state, untrained (mechanism only)
    m.extend_items(h.stream.vocab_at(1))
    m.tasks.append(t2)
    m.begin_task(t2)
    b = h.batch("T2")
    calls, real = [], method_module.sampled_softmax_ce

    def spy(hidden, head, y, n_negatives, rng, *a, **kw):
        calls.append((head, y.clone(), n_negatives, rng))
        return real(hidden, head, y, n_negatives, rng, *a, **kw)

    monkeypatch.setattr(method_module, "sampled_softmax_ce", spy)
    loss = m.loss(t2, b)
    assert torch.isfinite(loss)
    assert len(calls) == 1  # T2's own CE (and Replay's logit term) stay full: one sampled call
    ((head, y, n_neg, rng),) = calls
    assert head is m.head("T1") and head.out_features == t1.n_labels
    assert n_neg == round(0.3 * t1.n_labels) < t1.n_labels and rng is m.rng
    targets = y[y != -100]
    assert y.dim() == 2 and len(targets) > 0 and int(targets.max()) < t1.n_labels
    if name == "replay":  # targets: whole sequences of T1 buffer users, shifted by one
        stored = {tuple(r) for r in m.buffers["T1"].data.inputs[:, 1:].tolist()}
        assert y.shape[0] == 5 and all(tuple(r) in stored for r in y.tolist())


# ---------------------------------------------------------------------------------- evaluation memory
class _Fake(Method):
    """Scores a huge label set from tiny random 'representations' and records every matrix the
    evaluator makes it build."""

    def __init__(self, n_labels: int):
        self.name, self.n_labels, self.device, self.shapes = "fake", n_labels, torch.device("cpu"), []
        self.w = torch.randn(4, n_labels)

    def inference(self):
        return torch.no_grad()

    def modules(self):
        return {}

    def forward_logits(self, task, x, *, train, all_positions=False, batch=None):
        h = torch.nn.functional.one_hot(x % 4, 4).float()  # [B, n, 4]
        out = (h if all_positions else h[:, -1]) @ self.w
        self.shapes.append(tuple(out.shape))
        return out

    def score(self, task, x):
        return self.forward_logits(task, x, train=False)


def test_ranking_646k_items_never_builds_a_matrix_above_the_cap(monkeypatch):
    n_labels, rng = 646_001, np.random.default_rng(0)
    compared = []
    real = evaluator.tie_counts
    monkeypatch.setattr(evaluator, "tie_counts", lambda s, rows, y: (compared.append(len(y)), real(s, rows, y))[1])
    # next-item: one target per user
    data = TaskData(TaskInfo("T1", "next_item", n_labels, "mrr@5"), rng.integers(1, n_labels, (120, 6)),
                    np.arange(121), rng.integers(1, n_labels, 120))
    m = _Fake(n_labels)
    evaluate_users(m, data.task, data)
    assert sum(s[0] for s in m.shapes) == 120 and all(s[0] * s[1] <= MAX_CELLS for s in m.shapes)
    assert max(compared) * n_labels <= MAX_CELLS
    # a recommendation task where one user holds far more targets than the mean
    counts = np.r_[np.ones(99, dtype=np.int64), 400]
    ptr = np.r_[0, np.cumsum(counts)]
    data = TaskData(TaskInfo("T2", "recommend", n_labels, "mrr@5"), rng.integers(1, n_labels, (100, 6)), ptr,
                    rng.integers(0, n_labels, ptr[-1]))
    m, compared[:] = _Fake(n_labels), []
    means, per_user = evaluate_users(m, data.task, data)
    assert all(s[0] * s[1] <= MAX_CELLS for s in m.shapes) and max(compared) * n_labels <= MAX_CELLS
    assert sum(compared) == ptr[-1]
    # the same numbers as one unchunked comparison
    monkeypatch.setattr(evaluator, "MAX_CELLS", 1 << 40)
    m2 = _Fake(n_labels)
    m2.w = m.w
    means_big, per_user_big = evaluate_users(m2, data.task, data)
    assert means == means_big and np.array_equal(per_user, per_user_big)


def test_next_item_validation_loss_is_chunked_to_the_cap():
    rng = np.random.default_rng(1)
    n_labels = 50_000  # 99 positions x 50 K = 5 M entries per user: 6 users per chunk
    data = TaskData(TaskInfo("T1", "next_item", n_labels, "mrr@5"), rng.integers(0, n_labels, (20, 100)),
                    np.arange(21), rng.integers(1, n_labels, 20))
    m = _Fake(n_labels)
    loss = validation_loss(m, data.task, data)
    assert all(s[0] * s[1] * s[2] <= MAX_CELLS for s in m.shapes) and sum(s[0] for s in m.shapes) == 20
    logits = m.forward_logits("T1", torch.from_numpy(data.inputs[:, :-1]), train=False, all_positions=True)
    want = F.cross_entropy(logits.reshape(-1, n_labels), torch.from_numpy(data.inputs[:, 1:]).reshape(-1), ignore_index=0)
    assert loss == pytest.approx(want.item(), rel=1e-5)
