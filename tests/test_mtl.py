"""MTL (docs/protocol.md §6.4): all tasks after T1 learned jointly; reported only at the end."""

from __future__ import annotations

import copy
import math
from collections import Counter

import pytest
import torch

from curb.report import final_table
from curb.training import batches
from harness import Harness, fits_without_clocks

LATER = ["T2", "T3", "T4", "T5"]


@pytest.fixture
def make(t1_cache):
    def build(**kw):
        h = Harness("mtl", t1_cache, **kw)
        h.learn_joint = lambda: h.method.learn_joint([h.ev.info(n) for n in LATER],
                                                     [h.ev.train_data(n) for n in LATER],
                                                     [h.ev.val_data(n) for n in LATER], h.fit)
        return h

    return build


def test_every_head_and_the_backbone_get_gradient_in_one_step(make):
    h = make(**{"mtl.mtl_task_weights": "1,2,0.5,1"})
    m = h.method
    m.tasks = [h.ev.info(n) for n in LATER]
    for t in m.tasks:
        m.model.add_head(t.name, t.n_labels)
    step = [h.batch(n) for n in LATER]
    loss = m.joint_loss(step)
    loss.backward()
    for n in LATER:
        g = m.model.heads[n].weight.grad
        assert g is not None and g.abs().sum() > 0, n
    assert m.model.backbone.blocks[0].conv1.weight.grad.abs().sum() > 0
    # The loss is the weighted sum of the per-task CEs.
    from curb.method import task_loss

    parts = [task_loss(m.forward_logits(n, b.x, train=True), b) for n, b in zip(LATER, step)]
    assert loss.item() == pytest.approx(sum(w * p.item() for w, p in zip((1, 2, 0.5, 1), parts)), rel=1e-6)


def test_epoch_is_one_pass_over_the_largest_task_and_log_has_history(make):
    h = make(**{"train.epochs": "2"})
    h.learn_joint()
    size = h.fit.train_cfg.batch
    n_steps = max(next(batches(h.ev.train_data(n), size, h.method.rng, h.method.device)).n_batches for n in LATER)
    log = h.fit.logs[-1]
    assert log["phase"] == "joint" and log["task"] == "+".join(LATER)
    assert [e["steps"] for e in log["epochs"]] == [n_steps] * 2
    assert len(log["val_per_task"]) == 2 and set(log["val_per_task"][0]) == set(LATER)
    best = log["epochs"][log["best_epoch"]]["val"]
    assert best == pytest.approx(sum(log["val_per_task"][log["best_epoch"]].values()) / 4)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("init", ["scratch", "t1"])
def test_init_scratch_or_from_t1(make, init):
    h = make(**{"mtl.mtl_init": init})
    pre = h.pretrained().backbone.state_dict()
    seen = {}

    def first_epoch(trains, opt, loss_fn):  # look at the model the joint training starts from
        seen.update(copy.deepcopy(h.method.model.backbone.state_dict()))
        raise _Stop

    h.method.train_epoch = first_epoch
    with pytest.raises(_Stop):
        h.learn_joint()
    learned = [k for k in pre if "conv" in k or "item_emb" in k]
    assert all(torch.equal(seen[k], pre[k]) == (init == "t1") for k in learned)


def test_wrong_number_of_task_weights_is_rejected(make):
    h = make(**{"mtl.mtl_task_weights": "1,2"})
    with pytest.raises(ValueError, match="mtl_task_weights has 2 values for 4 tasks"):
        h.learn_joint()


def test_save_load_round_trip_gives_identical_scores(make):
    h = make(**{"train.epochs": "1"})
    h.learn_joint()
    fresh = h.reload()
    a, b = h.scores(), h.scores(fresh)
    assert a.keys() == set(LATER) and all(torch.equal(a[k], b[k]) for k in a)


def test_runner_reports_only_the_final_row_without_t1_fwt_or_bwt(run_mini):
    r = run_mini("mtl")
    m = len(r["tasks"])
    assert all(r["R"][j][i] is None for j in range(m - 1) for i in range(m))
    assert r["R"][m - 1][0] is None and all(v is not None for v in r["R"][m - 1][1:])
    assert r["transfer"] is None and r["final"]["T1"] is None
    assert any(f["phase"] == "joint" for f in r["fits"])
    row = next(line for line in final_table([r]).splitlines() if line.startswith("| mtl"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "-" and cells[-2:] == ["-", "-"]  # T1, BWT, FWT
    noisy = run_mini("mtl", order="reversed", noise=2)
    assert all(v is not None for v in noisy["R"][-1][1:])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_joint_steps_follow_train_precision(make, precision):
    h = make(**{"train.precision": precision})
    m = h.method
    m.tasks = [h.ev.info(n) for n in LATER]
    for t in m.tasks:
        m.model.add_head(t.name, t.n_labels)
    seen = []

    def loss_fn(step):
        seen.append(torch.is_autocast_enabled("cpu"))
        return m.joint_loss(step)

    m.train_epoch([h.ev.train_data(n) for n in LATER], torch.optim.Adam(m.model.parameters()), loss_fn)
    assert seen and all(s == (precision == "bf16") for s in seen)


def test_an_interrupted_joint_phase_resumes_after_its_last_epoch_with_identical_numbers(tmp_path):
    """MTL's single phase is checkpointed after every round: a stop mid-phase loses at most one round."""
    from curb.runner import CellInterrupted, CellSpec, run_cell

    spec = CellSpec("mtl", "synthetic-mini", overrides=(("train.patience", "50"), ("train.epochs", "4")))
    whole = run_cell(spec, tmp_path / "a", echo=lambda *_: None)
    polls = iter(range(100))
    with pytest.raises(CellInterrupted):
        run_cell(spec, tmp_path / "b", echo=lambda *_: None, should_stop=lambda: next(polls) >= 1)
    cells = tmp_path / "b" / ".cells"
    assert len(list(cells.glob(f"{spec.hash}.phase-*.ckpt"))) == 1  # stopped after round 2 of 4
    said = []
    resumed = run_cell(spec, tmp_path / "b", echo=said.append)
    assert any("resuming T2+T3+T4+T5 joint after round 2" in s for s in said), said
    assert [s.split(":")[0].strip() for s in said if "joint round" in s] == ["[mtl] T2+T3+T4+T5 joint round 3",
                                                                            "[mtl] T2+T3+T4+T5 joint round 4"]
    assert resumed["R"] == whole["R"]
    assert whole["resumed_at"] == [] and resumed["resumed_at"] == ["T2+T3+T4+T5"]  # recorded like a per-task resume
    assert fits_without_clocks(resumed["fits"]) == fits_without_clocks(whole["fits"])
    assert len(resumed["fits"][-1]["epochs"]) == 4
    assert resumed["fits"][-1]["val_per_task"] == whole["fits"][-1]["val_per_task"]
    assert not list(cells.glob(f"{spec.hash}*.ckpt"))


def test_smaller_tasks_restart_and_reshuffle_within_an_epoch_covering_every_pair_each_pass():
    """In one epoch a smaller task restarts reshuffled after each pass, and every full pass uses each pair exactly once."""
    h = Harness("mtl")
    m = h.method
    m.tasks = [h.ev.info(n) for n in LATER]
    for t in m.tasks:
        m.model.add_head(t.name, t.n_labels)
    trains = [h.ev.train_data(n) for n in LATER]
    size = h.cfg.train.batch
    n_b = {d.task.name: math.ceil(d.n_pairs / size) for d in trains}  # batches per pass (docs/protocol.md §4.2)
    seen = {n: [] for n in LATER}  # per task, the (sequence, target) pairs of every step, in order

    def record(step):
        for n, b in zip(LATER, step):
            seen[n].append([(b.x[r].numpy().tobytes(), int(y)) for r, y in zip(b.rows.tolist(), b.y)])
        return m.joint_loss(step)

    m.train_epoch(trains, torch.optim.Adam(m.model.parameters()), record)
    n_steps = max(n_b.values())
    small = [n for n in LATER if 2 * n_b[n] <= n_steps]
    assert small, n_b  # the test needs a task that makes at least two passes in one epoch
    for d in trains:
        n = d.task.name
        pairs = Counter((d.inputs[u].tobytes(), int(y)) for u in range(d.n_users)
                        for y in d.labels[d.ptr[u]:d.ptr[u + 1]])
        steps = seen[n]
        assert len(steps) == n_steps and all(len(s) <= size for s in steps)
        passes = [sum(steps[i:i + n_b[n]], []) for i in range(0, n_steps - n_b[n] + 1, n_b[n])]  # full passes only
        assert len(passes) == n_steps // n_b[n]
        assert all(Counter(p) == pairs for p in passes), f"{n}: a pass misses or repeats a pair"
        if n in small:
            assert len(passes) >= 2 and passes[1] != passes[0], f"{n}: restarted without reshuffling"
