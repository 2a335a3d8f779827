"""Stream transforms, noise task, split determinism and disjointness."""

import numpy as np
import pytest

from curb.streams import SplitConfig, StreamError, Targets, split_task


def test_reversed_keeps_t1_first_and_reverses_the_rest(tiny_stream):
    r = tiny_stream.reversed()
    assert r.task_names == ["T1", "T5", "T4", "T3", "T2"]
    assert r.reversed().task_names == tiny_stream.task_names
    assert r.tasks[1] is tiny_stream.task("T5")


def test_reorder_by_positions_and_names(tiny_stream):
    assert tiny_stream.reorder([1, 3, 2, 5, 4]).task_names == ["T1", "T3", "T2", "T5", "T4"]
    assert tiny_stream.reorder("T1,T4,T2,T3,T5".split(",")).task_names == ["T1", "T4", "T2", "T3", "T5"]
    with pytest.raises(StreamError, match="must stay first"):
        tiny_stream.reorder([2, 1, 3, 4, 5])
    with pytest.raises(StreamError, match="exactly once"):
        tiny_stream.reorder([1, 2, 2, 4, 5])
    with pytest.raises(StreamError, match="no task 'T9'"):
        tiny_stream.reorder(["T1", "T9"])


def test_noise_task_has_stated_size_classes_and_position(tiny_stream):
    s = tiny_stream.with_noise_task(2, user_frac=0.5, n_classes=50, seed=3)
    assert s.task_names == ["T1", "T2", "noise", "T3", "T4", "T5"]
    noise = s.task("noise")
    assert noise.kind == "classify" and noise.n_labels == 50
    assert noise.targets.n_users == round(0.5 * tiny_stream.n_users)
    assert len(np.unique(noise.targets.users)) == noise.targets.n_users
    assert noise.targets.labels.min() >= 0 and noise.targets.labels.max() < 50
    assert len(np.unique(noise.targets.labels)) > 25  # uniform over 50 classes, 200 users
    again = tiny_stream.with_noise_task(2, seed=3).task("noise").targets
    assert np.array_equal(again.labels, noise.targets.labels)
    other = tiny_stream.with_noise_task(2, seed=4).task("noise").targets
    assert not np.array_equal(other.users, noise.targets.users)
    with pytest.raises(StreamError):
        tiny_stream.with_noise_task(0)


@pytest.mark.parametrize("level", ["user", "pair"])
def test_split_is_deterministic_disjoint_and_complete(tiny_stream, level):
    task = tiny_stream.task("T2")
    cfg = SplitConfig(seed=7, level=level)
    a, b = split_task(task, cfg), split_task(task, cfg)
    for p in ("train", "val", "test"):
        assert np.array_equal(a[p].users, b[p].users) and np.array_equal(a[p].labels, b[p].labels)
    pairs = {p: set(zip(a[p].pair_users().tolist(), a[p].labels.tolist())) for p in a}
    all_pairs = set(zip(task.targets.pair_users().tolist(), task.targets.labels.tolist()))
    assert pairs["train"] | pairs["val"] | pairs["test"] == all_pairs
    assert sum(len(v) for v in pairs.values()) == len(all_pairs)  # disjoint
    if level == "user":
        users = [set(a[p].users.tolist()) for p in a]
        assert not (users[0] & users[1] or users[0] & users[2] or users[1] & users[2])
    n = task.targets.n_users if level == "user" else task.targets.n_pairs
    size = a["train"].n_users if level == "user" else a["train"].n_pairs
    assert size == round(0.8 * n)
    c = split_task(task, SplitConfig(seed=8, level=level))
    assert not np.array_equal(c["test"].labels, a["test"].labels)


def test_split_does_not_depend_on_task_position(tiny_stream):
    cfg = SplitConfig()
    fwd = split_task(tiny_stream.task("T3"), cfg)
    rev = split_task(tiny_stream.reversed().task("T3"), cfg)
    assert np.array_equal(fwd["test"].users, rev["test"].users)


def test_too_small_task_is_refused():
    from curb.streams import Task

    t = Task("Tx", "classify", 2, Targets(np.arange(5), np.arange(6), np.zeros(5, dtype=np.int64)))
    with pytest.raises(StreamError, match="too few users"):
        split_task(t, SplitConfig())


def test_targets_take_keeps_labels_aligned():
    tg = Targets.from_pairs(np.array([3, 1, 3, 2, 1, 3]), np.array([0, 1, 2, 3, 4, 5]))
    assert tg.users.tolist() == [1, 2, 3]
    sub = tg.take(np.array([2, 0]))
    assert sub.users.tolist() == [3, 1]
    assert sub.labels.tolist() == [0, 2, 5, 1, 4]
    assert sub.ptr.tolist() == [0, 3, 5]
