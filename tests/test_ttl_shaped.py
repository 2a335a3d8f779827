"""The TTL-shaped synthetic stream: the published task shape, deterministic, a prefix at every size."""

from __future__ import annotations

import numpy as np
import pytest

from curb.datasets.ttl_shaped import N_ITEMS, N_USERS, SEQ_LEN, TASKS, generate


def test_a_0_01_percent_stream_has_the_published_shape_and_is_deterministic():
    s = generate(1e-4)
    assert s.n_users == round(N_USERS * 1e-4) == 147
    assert s.sequences.shape == (147, SEQ_LEN) and s.n_items == N_ITEMS + 1
    assert s.sequences.min() >= 1 and s.sequences.max() <= N_ITEMS  # fixed-length, no padding, as TTL
    assert s.task_names == ["T1", "T2", "T3", "T4", "T5", "T6"]
    for (name, kind, n_labels, share), t in zip(TASKS, s.tasks[1:]):
        assert (t.name, t.kind, t.n_labels) == (name, kind, n_labels)
        users = len(t.targets.users)
        assert abs(users - share * 147) <= 4 * np.sqrt(147 * share * (1 - share)) + 1  # binomial share
        assert t.targets.labels.min() >= 0 and t.targets.labels.max() < n_labels
        if kind == "classify":
            assert np.all(np.diff(t.targets.ptr) == 1)
    again = generate(1e-4)
    assert again.fingerprint() == s.fingerprint()
    assert np.array_equal(again.sequences, s.sequences)
    assert generate(1e-4, seed=1).fingerprint() != s.fingerprint()


def test_a_larger_fraction_extends_the_smaller_one():
    small, large = generate(1e-4), generate(3e-4)
    assert np.array_equal(large.sequences[:small.n_users], small.sequences)
    for a, b in zip(small.tasks[1:], large.tasks[1:]):
        keep = b.targets.users < small.n_users
        assert np.array_equal(b.targets.users[keep], a.targets.users)


def test_fraction_is_checked():
    with pytest.raises(ValueError, match="fraction"):
        generate(0.0)
