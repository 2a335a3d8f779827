"""Time-aware streams: items enter the vocabulary at the task of their period, every growing method
appends rows and keeps old rows bit for bit, and a method that cannot grow is refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from curb.backbone import BackboneConfig, ItemRows, NextItNet, item_init_bound
from curb.config import ConfigError
from curb.data import DataFormatError, get_dataset
from curb.method import Method, Setup, TrainConfig, available_methods
from curb.runner import CellInterrupted, CellSpec, run_cell
from curb.streams import StreamError, Targets, Task, TaskStream
from conftest import data_root, needs_data
from harness import Harness

QUIET = {"echo": lambda *_: None}
GROWING = sorted(n for n, c in available_methods().items() if c.grows_items and c.__module__.startswith("curb.methods."))


@pytest.fixture(scope="module")
def stream() -> TaskStream:
    return get_dataset("synthetic-time-mini").build(None)


def test_each_task_brings_the_items_of_its_period(stream):
    vocab = [t.vocab for t in stream.tasks]
    assert vocab == [37, 43, 49, 55, 61] and stream.n_items == 61 and stream.tasks[0].n_labels == 37
    assert [stream.vocab_at(j) for j in range(5)] == vocab
    for k, t in enumerate(stream.tasks):
        rows = stream.sequences[t.targets.users]
        assert rows.max() < t.vocab  # nothing from a later period
        if k:  # and the period's new items do occur in its users' sequences
            new = (rows >= vocab[k - 1]) & (rows < t.vocab)
            assert new.any(axis=1).mean() > 0.2, t.name
    rev = stream.reversed()  # the last period's task now comes second and brings every item
    assert [rev.vocab_at(j) for j in range(5)] == [37, 61, 61, 61, 61]
    noisy = stream.with_noise_task(2, seed=1)  # noise users hold only items known at that point
    noise = noisy.task("noise")
    assert noise.vocab == 43 and stream.sequences[noise.targets.users].max() < 43
    assert noisy.vocab_at(2) == 43


def test_a_stream_must_name_every_period_vocabulary_and_respect_it():
    old = [[1, 2], [2, 3], [3, 1], [1, 3], [2, 1], [1, 3]]  # T1's period: items 1..3
    seqs = np.array(old + [[r[0], 4] for r in old], dtype=np.int64)  # item 4 appears in T2's period
    t1 = Task("T1", "next_item", 4, Targets(np.arange(6), np.arange(7), seqs[:6, -1]), vocab=4)
    t2 = Task("T2", "classify", 2, Targets(np.arange(6, 12), np.arange(7), np.zeros(6, dtype=np.int64)), vocab=5)
    TaskStream("ok", seqs, 5, (t1, t2))
    with pytest.raises(StreamError, match="appears only after its period"):
        TaskStream("late", seqs, 5, (dataclasses.replace(t1, targets=Targets(np.arange(6, 12), np.arange(7),
                                                                              seqs[6:, -1] % 4)), t2))
    with pytest.raises(StreamError, match="do not"):
        TaskStream("half", seqs, 5, (t1, dataclasses.replace(t2, vocab=None)))
    with pytest.raises(StreamError, match="largest task vocab"):
        TaskStream("short", seqs, 6, (t1, t2))


def test_the_runner_grows_the_method_at_the_declared_tasks(stream, tmp_path):
    seen = []

    def record(method: Method, name: str, s: TaskStream) -> None:
        seen.append((name, method.n_items, method.model.backbone.item_emb.weight.shape[0]))

    run_cell(CellSpec("finetune", "synthetic-time-mini"), tmp_path, on_task_end=record, **QUIET)
    assert seen == [(t.name, t.vocab, t.vocab) for t in stream.tasks]


@pytest.mark.parametrize("name", GROWING)
def test_growth_appends_rows_and_keeps_old_rows_bit_for_bit(name):
    h = Harness(name, dataset="synthetic-time-mini")
    m = h.learn("T1")

    def tables() -> list[torch.Tensor]:
        return [x.item_emb.weight.detach().clone() for mod in m.modules().values() for x in mod.modules()
                if isinstance(x, NextItNet)]

    before = tables()
    m.extend_items(h.stream.vocab_at(1))
    after = tables()
    assert m.n_items == 43 and len(after) == len(before)
    b = item_init_bound(43)
    for old, new in zip(before, after):
        assert new.shape == (43, old.shape[1]) and torch.equal(new[:37], old)
        assert new[37:].abs().max() <= b and new[37:].std() > 0
    h.learn("T2")  # the grown model learns the next task end to end
    assert all(t.shape[0] == 43 for t in tables())
    fresh = h.reload()  # a checkpoint of a grown method loads into a fresh (T1-sized) instance
    assert fresh.n_items == 43 and h.scores_equal(h.method, fresh)


def test_ewc_new_item_rows_are_not_penalised():
    h = Harness("ewc", dataset="synthetic-time-mini")
    m = h.learn("T1")
    m.extend_items(43)
    assert m.fisher["item_emb.weight"].shape[0] == 43 and torch.all(m.fisher["item_emb.weight"][37:] == 0)
    assert m.penalty().item() == 0.0
    with torch.no_grad():
        m.model.backbone.item_emb.weight[37:] += 1.0
    assert m.penalty().item() == 0.0


@pytest.mark.parametrize("name", sorted(n for n, c in available_methods().items() if not c.grows_items
                                        and c.__module__.startswith("curb.methods.")))
def test_a_method_that_cannot_grow_is_refused_up_front(name, tmp_path):
    with pytest.raises(ConfigError, match=f"method '{name}' cannot run on the time-aware stream"):
        run_cell(CellSpec(name, "synthetic-time-mini"), tmp_path, **QUIET)
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("t1-*.pt"))  # refused before any work


def test_the_base_hook_refuses_to_grow():
    setup = Setup(5, 4, BackboneConfig(channels=4, dilations=(1,)), TrainConfig(), Method.Config(),
                  torch.device("cpu"), 0)
    m = Method(setup)
    m.extend_items(5)  # nothing to add: fine
    with pytest.raises(NotImplementedError, match="cannot add items"):
        m.extend_items(6)


def test_a_time_aware_cell_resumes_to_identical_numbers(tmp_path):
    spec = CellSpec("ewc", "synthetic-time-mini")
    ref = run_cell(spec, tmp_path / "ref", **QUIET)
    ck = tmp_path / "cut" / ".cells" / f"{spec.hash}.ckpt"
    with pytest.raises(CellInterrupted):
        run_cell(spec, tmp_path / "cut", should_stop=lambda: ck.exists(), **QUIET)  # stops after T1
    r = run_cell(spec, tmp_path / "cut", **QUIET)
    assert r["resumed_at"] == ["T2"] and r["R"] == ref["R"]


def test_text_rows_of_new_items_are_written_when_they_enter():
    g = torch.Generator().manual_seed(0)
    rows = ItemRows(torch.arange(1, 10), torch.randn(9, 3, generator=g), n_items=10)
    cfg = BackboneConfig(channels=4, dilations=(1,), item_init="text").with_item_rows(rows)
    net = NextItNet(6, cfg)  # the first period knows items 1..5
    assert torch.equal(net.item_emb.weight[1:6, :3], rows.values[:5])
    net.grow_items(4)
    assert torch.equal(net.item_emb.weight[6:10, :3], rows.values[5:])
    assert torch.equal(net.item_emb.weight[1:6, :3], rows.values[:5])


# ---------------------------------------------------------------------------------- recipes
def _custom(tmp_path, t2_new: str = "100\n101\n", t2_line: str = "1,100,2,,7", t3_new: str = "200\n"):
    (tmp_path / "t1.csv").write_text("".join(f"{a},{b},{c}\n" for a, b, c in [(1, 2, 3), (2, 3, 1), (3, 1, 2)] * 7))
    # Distinct lines (a repeated line would be a phantom user): longer histories of known items.
    (tmp_path / "t2.csv").write_text("".join(f"{'1,' * (k // 3)}{t2_line}{k % 3}\n" for k in range(20)))
    (tmp_path / "t3.csv").write_text("".join(f"{'2,' * (k // 2)}2,101,200,,{k % 2}\n" for k in range(20)))
    (tmp_path / "t2_new.txt").write_text(t2_new)
    (tmp_path / "t3_new.txt").write_text(t3_new)
    (tmp_path / "stream.json").write_text(
        '{"tasks": [{"name": "T1", "kind": "next_item", "file": "t1.csv"},'
        ' {"name": "T2", "kind": "recommend", "file": "t2.csv", "new_items": "t2_new.txt"},'
        ' {"name": "T3", "kind": "classify", "file": "t3.csv", "new_items": "t3_new.txt"}]}')
    return get_dataset("custom").build(tmp_path)


def test_a_custom_stream_lists_the_new_items_of_each_task(tmp_path):
    s = _custom(tmp_path)
    assert [t.vocab for t in s.tasks] == [4, 6, 7] and s.n_items == 7
    assert s.item_ids.tolist() == [0, 1, 2, 3, 100, 101, 200]  # ids in order of first appearance
    assert s.meta["new_items"] == {"T1": 3, "T2": 2, "T3": 1}
    row = s.sequences[s.task("T3").targets.users[0]]
    assert row[row != 0].tolist() == [2, 5, 6]


@pytest.mark.parametrize("t2_new,t2_line,t3_new,match", [
    ("100\n", "1,101,2,,", "101\n200\n", "listed as new only at the later task T3"),
    ("100\n101\n2\n", "1,100,2,,", "200\n", "already occurs in the first file"),
    ("100\n101\n", "1,100,2,,", "101\n200\n", "already occurs in an earlier task"),
    ("100\nx\n", "1,100,2,,", "200\n", "must be a positive integer"),
])
def test_custom_new_items_errors_name_the_file_and_problem(tmp_path, t2_new, t2_line, t3_new, match):
    with pytest.raises(DataFormatError, match=match):
        _custom(tmp_path, t2_new, t2_line, t3_new)


@needs_data("ml-100k")
def test_ml_time_cuts_ml_100k_into_three_periods():
    import pandas as pd

    s = get_dataset("ml-time").build(data_root() / "ml-100k")
    sizes = {t.name: (t.targets.n_users, t.targets.n_pairs, t.n_labels, t.vocab) for t in s.tasks}
    assert sizes == {"T1": (352, 352, 1323, 1323), "T2": (363, 11338, 1111, 1525), "T3": (383, 7085, 936, 1640)}
    assert s.meta["new_items"] == {"T1": 1322, "T2": 202, "T3": 115}
    # An item enters at the task of the period of its first below-4-star rating.
    df = pd.read_csv(data_root() / "ml-100k" / "ml-100k.inter", sep="\t")
    df.columns = ["user", "item", "rating", "ts"]
    bounds = np.quantile(df["ts"].to_numpy(), [1 / 3, 2 / 3])
    low = df[df["rating"] < 4]
    first = low.groupby("item")["ts"].min().apply(lambda t: int(np.searchsorted(bounds, t, side="right")))
    period_of_id = first[s.item_ids[1:]].to_numpy()
    assert (np.diff(period_of_id) >= 0).all()
    assert np.bincount(period_of_id).tolist() == [1322, 202, 115]


@needs_data("ml-1m")
def test_ml_time_refuses_ratings_without_timestamps():
    from curb.data import DataNotFoundError

    with pytest.raises(DataNotFoundError, match="without timestamps"):
        get_dataset("ml-time").build(data_root() / "ml-1m")


@pytest.mark.parametrize("name", ["peterrec", "piggyback", "conure"])
def test_frozen_backbone_methods_give_new_rows_to_the_task_that_brings_them(name):
    h = Harness(name, dataset="synthetic-time-mini")
    m = h.learn("T1")

    def table() -> torch.Tensor:
        (net,) = {id(x): x for mod in m.modules().values() for x in mod.modules() if isinstance(x, NextItNet)}.values()
        return net.item_emb.weight.detach().clone()

    t1_rows = table()
    h.learn("T2")
    after2 = table()
    assert torch.equal(after2[:37], t1_rows)  # T1's rows: untouched by T2
    assert not torch.equal(after2[37:43], _grown_rows(h, name))  # T2's own rows: trained by T2
    before3 = h.scores()
    h.learn("T3")
    after3 = table()
    assert torch.equal(after3[:43], after2)  # T2's rows are frozen once T2 is done
    now = h.scores()
    assert all(torch.equal(now[k], before3[k]) for k in before3)  # older tasks never change (BWT = 0)
    assert h.scores_equal(h.method, h.reload())


def _grown_rows(h: Harness, name: str) -> torch.Tensor:
    """The rows T2 would start from: the same method grown but not trained (same seeds)."""
    other = Harness(name, dataset="synthetic-time-mini")
    m = other.learn("T1")
    m.extend_items(43)
    (net,) = {id(x): x for mod in m.modules().values() for x in mod.modules() if isinstance(x, NextItNet)}.values()
    return net.item_emb.weight.detach()[37:43].clone()


def test_the_cold_start_study_refuses_a_time_aware_stream(tmp_path):
    from curb.coldstart import run_cold_start

    with pytest.raises(ConfigError, match="needs a static stream"):
        run_cold_start("synthetic-time-mini", out=tmp_path, echo=lambda *_: None)
