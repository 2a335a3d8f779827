"""`synthetic`: the embedded default stream, generated in-process (no files, no download).

Users have latent tastes; items have latent vectors and Zipf-like popularity; each next item
depends on the user's taste AND on the previous item (sequential dependence). Downstream tasks
are built from the same latent factors, so their relation to T1 is known by construction:

  T1 next-item on the sequences (pre-training)
  T2 recommend: items of a second domain chosen by taste (related to T1 through tastes), 35% of users
  T3 recommend: items of a third domain chosen by the user's RECENT items (sequentially related), 25%
  T4 classify: taste segment, 4 classes (related), 20%
  T5 classify: a hidden attribute independent of behaviour, 2 imbalanced classes, 40% (unrelated:
     the best achievable accuracy is the majority rate)

Deterministic: the generator is seeded by a constant, so every run sees the same stream.

`synthetic-time` (and its mini version) draws the same kind of world with time: five periods,
one per task, 60% of the items known at T1 and the rest released over T2..T5 (`generate_time_aware`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from curb.data import register_dataset
from curb.streams import Targets, Task, TaskStream

N_USERS, N_ITEMS, SEQ_LEN, DIM = 3000, 400, 20, 8
SEED = 20230601
TIME_SEED = 20250401  # the time-aware variant's own stream


def _softmax_topk(logits: np.ndarray, k: np.ndarray, rng: np.random.Generator) -> Targets:
    """Sample k[u] distinct labels per user without replacement (Gumbel top-k)."""
    g = logits + rng.gumbel(size=logits.shape)
    order = np.argsort(-g, axis=1)
    kmax = int(k.max())
    top = order[:, :kmax]
    keep = np.arange(kmax)[None, :] < k[:, None]
    users = np.broadcast_to(np.arange(len(k))[:, None], top.shape)[keep]
    return Targets.from_pairs(users, top[keep])


class _World:
    """The latent factors every synthetic stream is drawn from (drawn in this order)."""

    def __init__(self, rng: np.random.Generator, n_users: int, n_items: int):
        self.scale = 1 / np.sqrt(DIM)
        self.taste = rng.normal(size=(n_users, DIM))
        self.items = rng.normal(size=(n_items, DIM))
        self.pop = -0.7 * np.log1p(rng.permutation(n_items))  # Zipf-like popularity, random item order
        self.turn = np.linalg.qr(rng.normal(size=(DIM, DIM)))[0]  # item -> "what comes next" direction

    def walk(self, rng: np.random.Generator, prev: np.ndarray, steps: int,
             bias: np.ndarray | None = None) -> np.ndarray:
        """`steps` next items per user (0-based ids) by Gumbel-max sampling from taste, popularity and
        the previous item, vectorised over users; no item follows itself. `bias[t]` (optional,
        [steps, n_items]) is added to step t's logits (time-aware: -inf for unreleased items)."""
        out = np.zeros((len(prev), steps), dtype=np.int64)
        rows = np.arange(len(prev))
        for t in range(steps):
            logits = (self.pop + 1.5 * self.scale * self.taste @ self.items.T
                      + 1.5 * self.scale * (self.items[prev] @ self.turn) @ self.items.T)
            if bias is not None:
                logits = logits + bias[t]
            logits[rows, prev] = -np.inf
            prev = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)
            out[:, t] = prev
        return out

    def downstream(self, rng: np.random.Generator, recent: Callable[[np.ndarray], np.ndarray]
                   ) -> tuple[tuple[str, str, int, Targets, str], ...]:
        """T2..T5 as (name, kind, labels, targets over user indices, description); `recent(users)` is
        the mean latent vector of each user's last 5 real items (T3's signal)."""
        n_users, scale, taste = len(self.taste), self.scale, self.taste
        # Downstream tasks cover fewer users than T1 (as on real platforms), so a representation
        # pre-trained on everyone's sequences has something to transfer.
        # T2: domain-B items by taste, 35% of users, 2..6 targets each.
        n2 = 150
        w2 = rng.normal(size=(n2, DIM))
        u2 = np.sort(rng.choice(n_users, int(0.35 * n_users), replace=False))
        tg2 = _softmax_topk(-0.5 * np.log1p(np.arange(n2))[None, :] + 2.5 * scale * taste[u2] @ w2.T,
                            rng.integers(2, 7, size=len(u2)), rng)
        tg2 = Targets(u2[tg2.users], tg2.ptr, tg2.labels)

        # T3: domain-C items by the mean vector of the user's last 5 real items, 25% of users.
        n3 = 100
        w3 = rng.normal(size=(n3, DIM))
        u3 = np.sort(rng.choice(n_users, int(0.25 * n_users), replace=False))
        tg3 = _softmax_topk(3.0 * scale * recent(u3) @ w3.T * np.sqrt(5), rng.integers(1, 5, size=len(u3)), rng)
        tg3 = Targets(u3[tg3.users], tg3.ptr, tg3.labels)

        # T4: taste segment (nearest of 4 prototypes, 10% label noise), 20% of users.
        proto = rng.normal(size=(4, DIM))
        u4 = np.sort(rng.choice(n_users, int(0.2 * n_users), replace=False))
        seg = np.argmax(taste[u4] @ proto.T, axis=1)
        flip = rng.random(len(u4)) < 0.1
        seg[flip] = rng.integers(0, 4, size=flip.sum())
        # T5: hidden attribute independent of behaviour, 60/40, 40% of users.
        u5 = np.sort(rng.choice(n_users, int(0.4 * n_users), replace=False))
        attr = (rng.random(len(u5)) < 0.4).astype(np.int64)
        return (
            ("T2", "recommend", n2, tg2, "domain-B items chosen by taste"),
            ("T3", "recommend", n3, tg3, "domain-C items chosen by recent items"),
            ("T4", "classify", 4, Targets(u4, np.arange(len(u4) + 1), seg), "taste segment"),
            ("T5", "classify", 2, Targets(u5, np.arange(len(u5) + 1), attr),
             "attribute independent of behaviour (unrelated)"),
        )

    def recent(self, seqs: np.ndarray) -> np.ndarray:
        """Mean latent vector of each row's last 5 positions (ids 1-based; padding reads item 0)."""
        return self.items[np.maximum(seqs[:, -5:] - 1, 0)].mean(axis=1)


def _pad_short(rng: np.random.Generator, seq: np.ndarray, seq_len: int) -> None:
    """Left-pad each user's first `seq_len` positions to a length drawn in [seq_len/2, seq_len]."""
    lengths = rng.integers(seq_len // 2, seq_len + 1, size=len(seq))
    seq[:, :seq_len][np.arange(seq_len)[None, :] < (seq_len - lengths)[:, None]] = 0


def generate(n_users: int = N_USERS, n_items: int = N_ITEMS, seq_len: int = SEQ_LEN, seed: int = SEED) -> TaskStream:
    rng = np.random.default_rng(seed)
    world = _World(rng, n_users, n_items)
    # Sequences: next-item perplexity is about 30 of 400 items.
    seq = world.walk(rng, rng.integers(0, n_items, size=n_users), seq_len) + 1  # ids 1..n_items, 0 is padding
    _pad_short(rng, seq, seq_len)
    t1 = Task("T1", "next_item", n_items + 1, Targets(np.arange(n_users), np.arange(n_users + 1), seq[:, -1]),
              description="next item of the behaviour sequence")
    recent = world.recent(seq)
    later = world.downstream(rng, lambda users: recent[users])
    tasks = (t1, *(Task(name, kind, n, tg, description=d) for name, kind, n, tg, d in later))
    return TaskStream("synthetic", seq, n_items + 1, tasks, meta={"generator_seed": seed})


def generate_time_aware(n_users: int = N_USERS, n_items: int = N_ITEMS, seq_len: int = SEQ_LEN,
                        seed: int = TIME_SEED, first_share: float = 0.6, novelty: float = 1.0) -> TaskStream:
    """The synthetic stream with time (docs/datasets.md, "Time-aware streams"): five periods, one
    per task. `first_share` of the items exist in period 1; the rest are released in equal blocks
    in periods 2..5 (item ids are numbered in release order). Each user's behaviour continues
    through the periods, `seq_len // 4` new items per later period, drawn from released items
    only, with a `novelty` bonus for items released in that very period. Task p covers its users'
    sequences at the end of period p (the last `seq_len` items), one row per (user, period)."""
    rng = np.random.default_rng(seed)
    world = _World(rng, n_users, n_items)
    periods = 5
    n0 = int(round(first_share * n_items))
    block = -(-(n_items - n0) // (periods - 1))
    release = np.where(np.arange(n_items) < n0, 0, 1 + (np.arange(n_items) - n0) // block)
    step = max(1, seq_len // 4)
    bias = []
    for p in range(periods):
        b = np.where(release <= p, 0.0, -np.inf) + np.where(release == p, novelty, 0.0) * (p > 0)
        bias += [b] * (seq_len if p == 0 else step)
    chain = world.walk(rng, rng.integers(0, n0, size=n_users), seq_len + (periods - 1) * step, np.array(bias)) + 1
    _pad_short(rng, chain, seq_len)

    def rows_at(p: int, users: np.ndarray) -> np.ndarray:
        return chain[users, p * step: p * step + seq_len]

    vocab = [1 + int((release <= p).sum()) for p in range(periods)]
    period_of = {"T1": 0, "T2": 1, "T3": 2, "T4": 3, "T5": 4}
    later = world.downstream(rng, lambda users: world.recent(rows_at(period_of["T3"], users)))
    everyone = np.arange(n_users)
    seqs, tasks = [rows_at(0, everyone)], [Task("T1", "next_item", vocab[0], Targets(
        everyone, np.arange(n_users + 1), rows_at(0, everyone)[:, -1]), description="next item of the behaviour "
        "sequence (period 1)", vocab=vocab[0])]
    offset = n_users
    for name, kind, n, tg, d in later:
        p = period_of[name]
        users = tg.users
        seqs.append(rows_at(p, users))
        tasks.append(Task(name, kind, n, Targets(offset + np.arange(len(users)), tg.ptr, tg.labels),
                          description=f"{d} (period {p + 1})", vocab=vocab[p]))
        offset += len(users)
    meta = {"generator_seed": seed, "time_aware": True,
            "new_items": {t.name: t.vocab - (tasks[k - 1].vocab if k else 1) for k, t in enumerate(tasks)}}
    return TaskStream("synthetic-time", np.concatenate(seqs), n_items + 1, tuple(tasks), meta=meta)


@register_dataset(
    "synthetic",
    "embedded default: 3,000 users, 400 items, 5 tasks with known relations; no files needed",
    defaults={"preset": "small", "train.lr": "1e-3", "train.batch": "256", "train.t1_epochs": "10",
              "train.epochs": "20", "train.patience": "3"},
)
def build(data_dir: Path | None = None) -> TaskStream:
    return generate()


@register_dataset(
    "synthetic-mini",
    "a 400-user, 60-item version of `synthetic` for smoke tests and examples (seconds per method)",
    defaults={"preset": "small", "backbone.channels": "16", "train.lr": "1e-3", "train.batch": "64",
              "train.t1_batch": "32", "train.t1_epochs": "2", "train.epochs": "2", "train.patience": "2"},
)
def build_mini(data_dir: Path | None = None) -> TaskStream:
    return generate(n_users=400, n_items=60, seq_len=12)


@register_dataset(
    "synthetic-time",
    "time-aware `synthetic`: 5 periods, 60% of the items at T1, the rest released at T2..T5 (docs/datasets.md)",
    defaults={"preset": "small", "train.lr": "1e-3", "train.batch": "256", "train.t1_epochs": "10",
              "train.epochs": "20", "train.patience": "3"},
)
def build_time(data_dir: Path | None = None) -> TaskStream:
    return generate_time_aware()


@register_dataset(
    "synthetic-time-mini",
    "a 400-user, 60-item version of `synthetic-time` for smoke tests (seconds per method)",
    defaults={"preset": "small", "backbone.channels": "16", "train.lr": "1e-3", "train.batch": "64",
              "train.t1_batch": "32", "train.t1_epochs": "2", "train.epochs": "2", "train.patience": "2"},
)
def build_time_mini(data_dir: Path | None = None) -> TaskStream:
    return generate_time_aware(n_users=400, n_items=60, seq_len=12)
