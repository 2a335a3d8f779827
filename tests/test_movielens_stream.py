"""The `ml` recipe on the real MovieLens files reproduces the stream sizes of docs/protocol.md §9.1."""

import numpy as np

from conftest import data_root, needs_data
from curb.data import get_dataset


def _stats(stream):
    return {t.name: (t.targets.n_users, t.targets.n_pairs, t.n_labels) for t in stream.tasks}


@needs_data("ml-1m")
def test_ml_1m_stream_matches_reference_sizes():
    s = get_dataset("ml-profile").build(data_root() / "ml-1m")
    assert s.meta["release"] == "ml-1m"
    st = _stats(s)
    assert (s.n_users, s.n_items) == (5970, 3457)  # T1 users kept / vocabulary incl. padding
    assert st["T2"] == (5965, 348143, 3489)
    assert st["T3"] == (5944, 224907, 3228)
    assert st["T4"][2] == 7 and st["T5"][2] == 2 and st["T6"][2] == 21
    assert s.sequences.shape[1] == 30
    # Every user keeps >= 3 real items, left-padded; padding never follows a real item.
    real = s.sequences != 0
    assert real.sum(1).min() >= 3
    assert np.all(np.diff(real.astype(int), axis=1) >= 0)


@needs_data("ml-100k")
def test_ml_100k_stream_matches_reference_sizes():
    s = get_dataset("ml").build(data_root() / "ml-100k")
    assert s.meta["release"] == "ml-100k"
    st = _stats(s)
    assert s.n_users == 929
    assert st["T2"] == (928, 34016, 1379)
    assert st["T3"] == (914, 20989, 1169)
    assert [t.name for t in s.tasks] == ["T1", "T2", "T3"]
