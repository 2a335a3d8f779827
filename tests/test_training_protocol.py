"""The training protocol's mechanisms: batch composition, the selection criterion, validation
rounds for small tasks, per-kind learning rates, and epoch checkpoints inside every phase."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from curb.method import TaskData, TaskInfo, TrainConfig
from curb.runner import CellFiles, CellInterrupted, CellSpec, run_cell
from curb.training import FitLog, Selection, batches, pair_order, select
from harness import fits_without_clocks


def _data(counts: list[int], seq_len: int = 6, n_labels: int = 50, seed: int = 0) -> TaskData:
    rng = np.random.default_rng(seed)
    ptr = np.r_[0, np.cumsum(counts)].astype(np.int64)
    inputs = np.arange(len(counts) * seq_len).reshape(len(counts), seq_len) % 97 + 1  # row k is unique
    labels = rng.integers(0, n_labels, ptr[-1])
    return TaskData(TaskInfo("T2", "recommend", n_labels, "mrr@5"), inputs.astype(np.int64), ptr, labels)


@pytest.mark.parametrize("k", [None, 1, 3])
def test_batches_hold_exactly_the_requested_pairs_and_cover_every_pair_once(k):
    data = _data([5, 1, 12, 7, 0, 3, 9, 20, 2])
    seen, rows_per_step = [], []
    for b in batches(data, 8, np.random.default_rng(1), torch.device("cpu"), pairs_per_user=k):
        user_of_row = [int(np.flatnonzero((data.inputs == r.numpy()).all(1))[0]) for r in b.x]
        owners = np.array(user_of_row)[b.rows.numpy()]
        # every pair: its label and its user's sequence, matched back to a (user, pair) of the data
        for u, y in zip(owners, b.y.numpy()):
            seen.append((u, y))
        assert len(b.y) == 8 or b.index == b.n_batches - 1
        counts = np.bincount(b.rows.numpy())
        assert counts.max() <= (k or 10**9)  # a row never holds more than k pairs
        rows_per_step.append(len(b.x))
    want = sorted((u, int(y)) for u in range(data.n_users) for y in data.labels[data.ptr[u]:data.ptr[u + 1]])
    assert sorted((int(u), int(y)) for u, y in seen) == want
    if k == 1:
        assert all(r == 8 for r in rows_per_step[:-1])  # one pair per encoded row: the reference's batches


def test_pair_order_chunks_are_users_pairs_and_users_are_spread_over_steps():
    ptr = np.r_[0, np.cumsum([40] * 50)]
    order, chunk = pair_order(ptr, 1, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(2000)) and len(set(chunk.tolist())) == 2000
    owners = np.repeat(np.arange(50), 40)[order[:64]]
    assert len(set(owners.tolist())) > 30  # uniform pairs: a 64-pair step comes from many users
    order_all, chunk_all = pair_order(ptr, None, np.random.default_rng(0))
    owners_all = np.repeat(np.arange(50), 40)[order_all]
    assert all(len(set(owners_all[i:i + 40].tolist())) == 1 for i in range(0, 2000, 40))  # users whole


def test_round_steps_make_small_tasks_pass_several_times_per_round():
    calls = []

    class Dummy:
        def snapshot(self):
            return {}

        def restore(self, s):
            pass

    vals = iter([0.5, 0.4, 0.3])  # improving losses, then the budget ends
    log = select(Dummy(), None, FitLog("T4", "train"),
                 lambda: calls.append(1) or (1.0, 5), lambda: {"val": 0.1, "loss": next(vals)},
                 Selection(select="loss", max_rounds=3, patience=5, round_steps=12))
    assert [e.passes for e in log.epochs] == [3, 3, 3] and [e.steps for e in log.epochs] == [15, 15, 15]
    assert len(calls) == 9 and log.best_epoch == 2 and log.best_criterion == pytest.approx(-0.3)


def test_a_round_records_cpu_time_apart_from_the_time_it_waited():
    """A round that waits (as a cell does while other processes hold the cores) takes wall time
    but no CPU time; one that computes takes both. Logs written before cpu_seconds load as None."""
    class Dummy:
        def snapshot(self):
            return {}

        def restore(self, s):
            pass

    def wait():
        time.sleep(0.3)
        return 1.0, 1

    def compute():
        end = time.process_time() + 0.2
        while time.process_time() < end:
            pass
        return 1.0, 1

    rounds = iter([wait, compute])
    log = select(Dummy(), None, FitLog("T2", "train"), lambda: next(rounds)(), lambda: {"val": 0.1, "loss": 1.0},
                 Selection(select="loss", max_rounds=2, patience=5))
    waited, computed = log.epochs
    assert waited.seconds >= 0.3 and waited.cpu_seconds < 0.1
    # The two clocks are read at slightly different instants, so a busy round's wall time can come
    # out a few microseconds under its CPU time: the bound allows 10 ms for that.
    assert computed.cpu_seconds >= 0.2 and computed.seconds >= 0.19
    old = {**log.as_dict(), "epochs": [{k: v for k, v in e.__dict__.items() if k != "cpu_seconds"} for e in log.epochs]}
    assert [e.cpu_seconds for e in FitLog.from_dict(old).epochs] == [None, None]


def test_selection_by_loss_and_by_metric_pick_different_rounds():
    class Dummy:
        state = 0

        def snapshot(self):
            return {"at": self.state}

        def restore(self, s):
            self.state = ("restored", s["at"])

    def run(criterion):
        d, rounds = Dummy(), iter(range(10))
        seq = iter([(0.02, 7.0), (0.05, 6.9), (0.03, 6.5), (0.04, 6.6), (0.01, 6.7), (0.01, 6.8)])

        def one_pass():
            d.state = next(rounds)
            return 1.0, 3

        log = select(d, None, FitLog("T2", "train"), one_pass, lambda: dict(zip(("val", "loss"), next(seq))),
                     Selection(select=criterion, max_rounds=6, patience=3))
        return log, d.state

    by_loss, state = run("loss")
    assert by_loss.best_epoch == 2 and by_loss.best_val == 0.03 and state == ("restored", 2)
    by_metric, state = run("metric")
    assert by_metric.best_epoch == 1 and by_metric.best_val == 0.05 and by_metric.stopped_early
    assert state == ("restored", 1)


def test_classify_lr_applies_to_profile_tasks_only():
    from curb.method import Method, Setup

    m = Method(Setup(10, 5, None, TrainConfig(lr=1e-4, classify_lr=3e-3, t2_lr=2e-4), None, torch.device("cpu"), 0))
    tasks = [TaskInfo("T1", "next_item", 10, "mrr@5"), TaskInfo("T2", "recommend", 9, "mrr@5"),
             TaskInfo("T3", "recommend", 9, "mrr@5"), TaskInfo("T4", "classify", 3, "acc")]
    m.tasks = tasks
    assert [m.lr_for(t) for t in tasks] == [1e-3, 2e-4, 1e-4, 3e-3]


def test_validation_loss_is_the_mean_ce_over_pairs_and_t1_positions():
    """The selection criterion is the plain cross-entropy of the method's logits on validation."""
    from curb.evaluator import Evaluator, validation_loss
    from curb.data import get_dataset
    from curb.method import Setup, get_method
    from curb.backbone import PRESETS
    from dataclasses import replace

    stream = get_dataset("synthetic-mini").build(None)
    ev = Evaluator(stream)
    cls = get_method("hat")
    m = cls(Setup(stream.n_items, stream.sequences.shape[1], replace(PRESETS["small"].backbone, channels=8,
                  dilations=(1, 2)), TrainConfig(), cls.Config(), torch.device("cpu"), 0))
    for name in ("T1", "T2"):
        info = ev.info(name)
        m.tasks.append(info)
        m.begin_task(info)
        val = ev.val_data(name)
        with m.inference():
            x = torch.from_numpy(val.inputs)
            if info.kind == "next_item":
                logits = m.forward_logits(name, x[:, :-1], train=False, all_positions=True)
                y = x[:, 1:]
                ce = torch.nn.functional.cross_entropy(logits[y != 0], y[y != 0])
            else:
                logp = torch.log_softmax(m.forward_logits(name, x, train=False), -1)
                rows = np.repeat(np.arange(val.n_users), np.diff(val.ptr))
                ce = -logp[torch.from_numpy(rows), torch.from_numpy(val.labels)].mean()
        assert validation_loss(m, info, val, eval_batch=7) == pytest.approx(ce.item(), rel=1e-5)


def _stop_at_first_phase_checkpoint(out, spec, after_task_checkpoint: bool):
    cells = out / ".cells"

    def stop() -> bool:
        phase = any(cells.glob(f"{spec.hash}.phase-*.ckpt"))
        task = CellFiles.of(out, spec.hash).checkpoint.exists()
        return phase and (task if after_task_checkpoint else not task)

    return stop


@pytest.mark.parametrize("method,mid_t2", [("sinmo", False), ("hat", False), ("teracon", False),
                                           ("conure", False), ("teracon", True)])
def test_a_stop_inside_a_phase_resumes_after_its_last_round_with_identical_numbers(tmp_path, method, mid_t2):
    """Epoch checkpoints in every phase: a stop mid-T1 (or mid-T2, where TERACON's running
    sampling rates must survive) loses at most one round and changes no number."""
    spec = CellSpec(method, "synthetic-mini", overrides=(("train.epochs", "3"), ("train.patience", "9"),
                                                         ("train.t1_epochs", "3")))
    whole = run_cell(spec, tmp_path / "a", echo=lambda *_: None)
    out = tmp_path / "b"
    with pytest.raises(CellInterrupted):
        run_cell(spec, out, echo=lambda *_: None, should_stop=_stop_at_first_phase_checkpoint(out, spec, mid_t2))
    said = []
    resumed = run_cell(spec, out, echo=said.append)
    task = "T2" if mid_t2 else "T1"
    assert any(f"resuming {task} " in s and "after round 1" in s for s in said), said
    assert resumed["R"] == whole["R"] and resumed["per_user"] == whole["per_user"]
    assert fits_without_clocks(resumed["fits"]) == fits_without_clocks(whole["fits"])
    rounds = [e for f in resumed["fits"] for e in f["epochs"]]
    assert rounds and all(e["cpu_seconds"] > 0 for e in rounds)  # every round records its CPU time, resumed ones too
    assert resumed["method_report"] == whole["method_report"]
    assert not list((out / ".cells").glob("*.ckpt"))
