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
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from curb.data import register_dataset
from curb.streams import Targets, Task, TaskStream

N_USERS, N_ITEMS, SEQ_LEN, DIM = 3000, 400, 20, 8
SEED = 20230601


def _softmax_topk(logits: np.ndarray, k: np.ndarray, rng: np.random.Generator) -> Targets:
    """Sample k[u] distinct labels per user without replacement (Gumbel top-k)."""
    g = logits + rng.gumbel(size=logits.shape)
    order = np.argsort(-g, axis=1)
    kmax = int(k.max())
    top = order[:, :kmax]
    keep = np.arange(kmax)[None, :] < k[:, None]
    users = np.broadcast_to(np.arange(len(k))[:, None], top.shape)[keep]
    return Targets.from_pairs(users, top[keep])


def generate(n_users: int = N_USERS, n_items: int = N_ITEMS, seq_len: int = SEQ_LEN, seed: int = SEED) -> TaskStream:
    rng = np.random.default_rng(seed)
    scale = 1 / np.sqrt(DIM)
    taste = rng.normal(size=(n_users, DIM))
    items = rng.normal(size=(n_items, DIM))
    pop = -0.7 * np.log1p(rng.permutation(n_items))  # Zipf-like popularity, random item order
    turn = np.linalg.qr(rng.normal(size=(DIM, DIM)))[0]  # item -> "what comes next" direction

    # Sequences: Gumbel-max sampling, vectorised over users; one step per position. No item
    # follows itself; next-item perplexity is about 30 of 400 items.
    seq = np.zeros((n_users, seq_len), dtype=np.int64)
    prev = rng.integers(0, n_items, size=n_users)
    rows = np.arange(n_users)
    for t in range(seq_len):
        logits = pop + 1.5 * scale * taste @ items.T + 1.5 * scale * (items[prev] @ turn) @ items.T
        logits[rows, prev] = -np.inf
        prev = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)
        seq[:, t] = prev + 1  # ids 1..n_items, 0 is padding
    lengths = rng.integers(seq_len // 2, seq_len + 1, size=n_users)
    seq[np.arange(seq_len)[None, :] < (seq_len - lengths)[:, None]] = 0  # left-pad short users

    last = seq[:, -1]
    t1 = Task("T1", "next_item", n_items + 1, Targets(np.arange(n_users), np.arange(n_users + 1), last),
              description="next item of the behaviour sequence")

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
    recent = items[np.maximum(seq[:, -5:] - 1, 0)].mean(axis=1)
    u3 = np.sort(rng.choice(n_users, int(0.25 * n_users), replace=False))
    tg3 = _softmax_topk(3.0 * scale * recent[u3] @ w3.T * np.sqrt(5), rng.integers(1, 5, size=len(u3)), rng)
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
    tasks = (
        t1,
        Task("T2", "recommend", n2, tg2, description="domain-B items chosen by taste"),
        Task("T3", "recommend", n3, tg3, description="domain-C items chosen by recent items"),
        Task("T4", "classify", 4, Targets(u4, np.arange(len(u4) + 1), seg), description="taste segment"),
        Task("T5", "classify", 2, Targets(u5, np.arange(len(u5) + 1), attr),
             description="attribute independent of behaviour (unrelated)"),
    )
    return TaskStream("synthetic", seq, n_items + 1, tasks, meta={"generator_seed": seed})


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
