"""`ttl-shaped`: a synthetic stream with the published shape of Tencent TTL, for scale tests.

TTL itself is not public in a form curb may ship; its size is what makes it hard (1.47 M users,
100-item sequences, a 646 K-item vocabulary, six tasks). This generator reproduces that shape,
not its data: the user counts, vocabulary and label-set sizes of the paper's table
(docs/datasets.md), with a simple taste structure so that later tasks are learnable from the
sequences:

- every user belongs to one of `GROUPS` taste groups; item i belongs to group i mod `GROUPS`;
- each of the 100 positions is, with probability 1/2, an item of the user's group (Zipf within
  the group), else an item of the whole vocabulary (Zipf over popularity rank);
- T2 (clicks, 17 K labels) and T3 (thumb-ups, 7 K labels): 1 + Geometric(1/2) targets per user,
  from the group's share of the labels with probability 0.6, else Zipf over all labels;
- T4 age (8), T5 gender (2), T6 life status (6): a class determined by the group, replaced by a
  uniform one with probability 1/2 (T5: 0.3).

Users are generated in whole blocks of `BLOCK` with one random generator per block (seeded by
the stream seed and the block index) and the last block is cut to size, so the stream at any
fraction of users is a prefix of the full one and no block needs the others: memory grows with
the users asked for (plus one block).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from curb.data import register_dataset
from curb.streams import Targets, Task, TaskStream

SEED = 20230806
SEQ_LEN = 100
N_USERS = 1_470_000
N_ITEMS = 646_000  # item ids 1..N_ITEMS, 0 is padding
GROUPS = 2_000
BLOCK = 10_000
# name, kind, labels, share of all users that have the task (the paper's user counts / 1.47 M)
TASKS = (("T2", "recommend", 17_000, 1.39 / 1.47), ("T3", "recommend", 7_000, 0.25 / 1.47),
         ("T4", "classify", 8, 1.0), ("T5", "classify", 2, 1.46 / 1.47), ("T6", "classify", 6, 1.0 / 1.47))
NOISE = {"T4": 0.5, "T5": 0.3, "T6": 0.5}


def _zipf_cdf(n: int, s: float = 0.8, q: float = 10.0) -> np.ndarray:
    w = 1.0 / (np.arange(n) + q) ** s
    return np.cumsum(w / w.sum())


def _draw(rng: np.random.Generator, cdf: np.ndarray, size: int | tuple[int, ...]) -> np.ndarray:
    """Ranks 0..len(cdf)-1 drawn with the probabilities `cdf` accumulates (inverse CDF)."""
    return np.minimum(np.searchsorted(cdf, rng.random(size)), len(cdf) - 1)


def _block(seed: int, b: int, n: int, cdfs: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, tuple]]:
    """Sequences [n, SEQ_LEN] and, per task, (rows with the task, per-row target counts, labels)."""
    rng = np.random.default_rng([seed, b])
    group = rng.integers(0, GROUPS, n)
    local = _draw(rng, cdfs["group"], (n, SEQ_LEN)) * GROUPS + group[:, None]  # within the user's group
    everywhere = _draw(rng, cdfs["items"], (n, SEQ_LEN))
    seqs = np.where(rng.random((n, SEQ_LEN)) < 0.5, local, everywhere).astype(np.int64) + 1
    out = {}
    for name, kind, n_labels, share in TASKS:
        rows = np.flatnonzero(rng.random(n) < share)
        if kind == "recommend":
            counts = rng.geometric(0.5, len(rows))  # 1 + Geometric(1/2) failures: mean 2
            owner = np.repeat(group[rows], counts)
            span = max(n_labels // GROUPS, 1)
            own = (owner * span + rng.integers(0, span, len(owner))) % n_labels
            labels = np.where(rng.random(len(owner)) < 0.6, own, _draw(rng, cdfs[name], len(owner)))
        else:
            counts = np.ones(len(rows), dtype=np.int64)
            labels = np.where(rng.random(len(rows)) < NOISE[name], rng.integers(0, n_labels, len(rows)),
                              (group[rows] * 7 + 3) % n_labels)
        out[name] = (rows, counts, labels.astype(np.int64))
    return seqs, out


def generate(fraction: float = 1.0, seed: int = SEED) -> TaskStream:
    """The TTL-shaped stream with `fraction` of the 1.47 M users (the first ones of the full stream)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n_users = max(int(round(N_USERS * fraction)), 1)
    cdfs = {"items": _zipf_cdf(N_ITEMS), "group": _zipf_cdf(N_ITEMS // GROUPS),
            **{name: _zipf_cdf(n) for name, kind, n, _ in TASKS if kind == "recommend"}}
    seqs = np.empty((n_users, SEQ_LEN), dtype=np.int64)
    parts: dict[str, list] = {name: [] for name, *_ in TASKS}
    for b, lo in enumerate(range(0, n_users, BLOCK)):
        n = min(BLOCK, n_users - lo)
        block_seqs, got = _block(seed, b, BLOCK, cdfs)  # always a whole block, then its first n users
        seqs[lo:lo + n] = block_seqs[:n]
        for name, (rows, counts, labels) in got.items():
            keep = rows < n
            parts[name].append((rows[keep] + lo, counts[keep], labels[np.repeat(keep, counts)]))
    tasks = [Task("T1", "next_item", N_ITEMS + 1, Targets(np.arange(n_users), np.arange(n_users + 1), seqs[:, -1]),
                  description="watching: next item of a 100-item sequence")]
    for name, kind, n_labels, _ in TASKS:
        rows = np.concatenate([p[0] for p in parts[name]])
        counts = np.concatenate([p[1] for p in parts[name]])
        ptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(counts, out=ptr[1:])
        tasks.append(Task(name, kind, n_labels, Targets(rows, ptr, np.concatenate([p[2] for p in parts[name]])),
                          description=f"TTL-shaped {kind} task ({n_labels} labels)"))
    return TaskStream("ttl-shaped", seqs, N_ITEMS + 1, tuple(tasks),
                      meta={"generator_seed": seed, "fraction": fraction, "users": n_users})


def _register(suffix: str, fraction: float) -> None:
    @register_dataset(f"ttl-shaped{suffix}", f"synthetic stream shaped like Tencent TTL, {fraction:.0%} of its "
                      "1.47 M users (646 K items, 100-item sequences, 6 tasks; scale tests, docs/performance.md)",
                      defaults={"preset": "small"})
    def build(data_dir: Path | None = None) -> TaskStream:
        return generate(fraction)


for _suffix, _fraction in (("", 1.0), ("-5pct", 0.05), ("-2pct", 0.02), ("-1pct", 0.01)):
    _register(_suffix, _fraction)
