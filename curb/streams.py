"""Task streams: the tasks a continual learner sees, over ONE shared set of user sequences.

A `TaskStream` holds every user's behaviour sequence once (left-padded item ids, 0 = padding)
and an ordered list of `Task`s. A task only names which users it covers and their labels; the
inputs of every task are the users' shared sequences (docs/protocol.md §1.1). Transforms return new
streams and never mutate: `reversed()`, `reorder()`, `without()`, `with_noise_task()`.

Time-aware streams (docs/datasets.md, "Time-aware streams"): every task names the item
vocabulary of its period (`Task.vocab`), item ids are numbered by the period they first appear
in, and a row holds one user's sequence as of one period (a user active in several periods has
one row per period). `vocab_at(j)` is what a learner knows at the task in position j; the runner
grows every method's item embeddings to it before that task (`Method.grow_items`).

Splits are built here too (`split_task`) but are owned by the evaluator: methods never receive
a `Task`'s test part.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import zlib
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np

from .errors import CurbError

Kind = Literal["next_item", "recommend", "classify"]
KINDS: tuple[str, ...] = ("next_item", "recommend", "classify")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


class StreamError(CurbError, ValueError):
    """A stream, task or transform request is invalid; the message says what and where."""


@dataclass(frozen=True)
class Targets:
    """Labels per user in CSR form: user `users[k]` has labels `labels[ptr[k]:ptr[k+1]]`.

    `users` are row indices into the stream's `sequences`, unique and sorted.
    """

    users: np.ndarray
    ptr: np.ndarray
    labels: np.ndarray

    @staticmethod
    def from_pairs(users: np.ndarray, labels: np.ndarray) -> "Targets":
        """Group (user, label) pairs by user (stable within a user)."""
        users = np.asarray(users, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        order = np.argsort(users, kind="stable")
        users, labels = users[order], labels[order]
        uniq, counts = np.unique(users, return_counts=True)
        ptr = np.zeros(len(uniq) + 1, dtype=np.int64)
        np.cumsum(counts, out=ptr[1:])
        return Targets(uniq, ptr, labels)

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_pairs(self) -> int:
        return len(self.labels)

    def counts(self) -> np.ndarray:
        return np.diff(self.ptr)

    def pair_users(self) -> np.ndarray:
        """The user of every (user, label) pair, aligned with `labels`."""
        return np.repeat(self.users, self.counts())

    def take(self, rows: np.ndarray) -> "Targets":
        """Keep the users at positions `rows` (in the given order), with all their labels."""
        rows = np.asarray(rows, dtype=np.int64)
        counts = self.counts()[rows]
        ptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(counts, out=ptr[1:])
        starts = self.ptr[rows]
        idx = np.repeat(starts - ptr[:-1], counts) + np.arange(ptr[-1])
        return Targets(self.users[rows], ptr, self.labels[idx])


def _check_targets(name: str, tg: Targets) -> None:
    """CSR invariants: 1-D integer arrays, users unique, sorted and >= 0, ptr from 0 to n_pairs."""
    for field_name in ("users", "ptr", "labels"):
        a = getattr(tg, field_name)
        if not isinstance(a, np.ndarray) or a.ndim != 1 or a.dtype.kind not in "iu":
            raise StreamError(f"task {name!r}: targets.{field_name} must be a 1-D integer array")
    u, p = tg.users, tg.ptr
    if len(p) != len(u) + 1 or p[0] != 0 or p[-1] != len(tg.labels) or np.any(np.diff(p) < 0):
        raise StreamError(f"task {name!r}: targets.ptr must rise from 0 to the number of labels, one step per user")
    if len(u) and (u[0] < 0 or np.any(np.diff(u) <= 0)):
        raise StreamError(f"task {name!r}: targets.users must be unique, sorted and >= 0")


@dataclass(frozen=True)
class Task:
    """One task of the stream.

    kind `next_item`: T1, self-supervised; targets are each user's last item (the evaluation
    target), training uses every position of the sequence (docs/protocol.md §4.1).
    kind `recommend`: rank all `n_labels` targets, metric MRR@5.
    kind `classify`: predict one class, metric accuracy.
    """

    name: str
    kind: Kind
    n_labels: int
    targets: Targets
    label_names: tuple[str, ...] | None = None
    description: str = ""
    # Time-aware streams only: the item vocabulary (padding included) as of this task's period.
    # Its users' sequences use ids below it; ids from here up to the stream's n_items appear later.
    vocab: int | None = None

    @property
    def metric(self) -> str:
        return "acc" if self.kind == "classify" else "mrr@5"

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise StreamError(f"task name {self.name!r} must match {_NAME.pattern}")
        if self.kind not in KINDS:
            raise StreamError(f"task {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if not isinstance(self.n_labels, (int, np.integer)) or self.n_labels < 1:
            raise StreamError(f"task {self.name!r}: n_labels must be a positive integer, got {self.n_labels!r}")
        _check_targets(self.name, self.targets)
        if self.targets.n_pairs == 0:
            raise StreamError(f"task {self.name!r} has no (user, target) pairs")
        lab = self.targets.labels
        if lab.min() < 0 or lab.max() >= self.n_labels:
            raise StreamError(
                f"task {self.name!r}: labels must lie in [0, {self.n_labels}), found "
                f"[{lab.min()}, {lab.max()}]"
            )
        if self.kind == "classify" and np.any(self.targets.counts() != 1):
            raise StreamError(f"task {self.name!r}: a classify task needs exactly one label per user")
        if self.vocab is not None and (not isinstance(self.vocab, (int, np.integer)) or self.vocab < 2):
            raise StreamError(f"task {self.name!r}: vocab (items of its period, padding included) must be an "
                              f"integer >= 2, got {self.vocab!r}")


@dataclass(frozen=True)
class TaskStream:
    """Ordered tasks over shared sequences. `tasks[0]` is always the next-item pre-training task."""

    name: str
    sequences: np.ndarray  # [n_users, seq_len] int64, left-padded with 0
    n_items: int  # vocabulary size, padding id 0 included
    tasks: tuple[Task, ...]
    meta: dict = field(default_factory=dict, compare=False)
    # The source id of each item id (raw movie id, custom token; [0] = 0 for padding), kept by recipes
    # whose items have texts, so the texts can be aligned with the item table (curb/text.py).
    item_ids: np.ndarray | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        seqs = self.sequences
        if not isinstance(seqs, np.ndarray) or seqs.ndim != 2 or seqs.shape[0] < 1 or seqs.shape[1] < 2:
            raise StreamError(f"stream {self.name!r}: sequences must be an array [users >= 1, length >= 2]")
        if seqs.dtype.kind not in "iu":
            raise StreamError(f"stream {self.name!r}: sequences must hold integer item ids, got {seqs.dtype}")
        if not isinstance(self.n_items, (int, np.integer)) or self.n_items < 2:
            raise StreamError(f"stream {self.name!r}: n_items (vocabulary with padding) must be >= 2, got {self.n_items!r}")
        if seqs.min() < 0 or seqs.max() >= self.n_items:
            raise StreamError(f"stream {self.name!r}: item ids must lie in [0, {self.n_items})")
        if not self.tasks or self.tasks[0].kind != "next_item":
            raise StreamError(f"stream {self.name!r}: the first task must be the next_item task")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise StreamError(f"stream {self.name!r}: duplicate task names {names}")
        for t in self.tasks:
            if t.targets.users.max() >= len(seqs):
                raise StreamError(f"task {t.name!r} names a user outside the stream")
        if self.time_aware:
            self._check_time_aware()
        ids = self.item_ids
        if ids is not None and (not isinstance(ids, np.ndarray) or ids.shape != (self.n_items,)
                                or ids.dtype.kind not in "iu"):
            raise StreamError(f"stream {self.name!r}: item_ids must be an integer array of n_items ({self.n_items}) "
                              "source ids")

    def _check_time_aware(self) -> None:
        """Every task names its period's vocabulary, the last period holds every item, and a task's
        users' sequences use only items of its period."""
        missing = [t.name for t in self.tasks if t.vocab is None]
        if missing:
            raise StreamError(f"stream {self.name!r} is time-aware (some tasks name their period's vocab) but tasks "
                              f"{missing} do not")
        if max(t.vocab for t in self.tasks) != self.n_items:
            raise StreamError(f"stream {self.name!r}: the largest task vocab ({max(t.vocab for t in self.tasks)}) "
                              f"must be the stream's n_items ({self.n_items})")
        for t in self.tasks:
            top = int(self.sequences[t.targets.users].max())
            if top >= t.vocab:
                raise StreamError(f"task {t.name!r}: its users' sequences hold item id {top}, which appears only after "
                                  f"its period (its vocab is {t.vocab})")

    @property
    def time_aware(self) -> bool:
        """Items enter the vocabulary over time: task j brings the ids below `vocab_at(j)`."""
        return any(t.vocab is not None for t in self.tasks)

    def vocab_at(self, position: int) -> int:
        """The item vocabulary (padding included) a learner knows while learning the task at
        `position` (0-based): the largest period vocabulary so far on a time-aware stream, so a
        task brings its period's new items wherever it stands; n_items on a static stream."""
        if not self.time_aware:
            return self.n_items
        return max(t.vocab for t in self.tasks[: position + 1])

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def n_users(self) -> int:
        return len(self.sequences)

    def task(self, name: str) -> Task:
        for t in self.tasks:
            if t.name == name:
                return t
        raise StreamError(f"no task {name!r} in stream {self.name!r}; tasks: {self.task_names}")

    def fingerprint(self, skip: Sequence[str] = ()) -> str:
        """Content hash of sequences and every task not in `skip` (order-independent), for
        result provenance; `skip=("noise",)` identifies the data a noisy stream was built on."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.sequences).tobytes())
        for t in sorted(self.tasks, key=lambda t: t.name):
            if t.name in skip:
                continue
            h.update(f"{t.name}|{t.kind}|{t.n_labels}".encode())
            if t.vocab is not None:
                h.update(f"|vocab {t.vocab}".encode())
            for a in (t.targets.users, t.targets.ptr, t.targets.labels):
                h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]

    # ------------------------------------------------------------------ transforms
    def reorder(self, order: Sequence[str | int]) -> "TaskStream":
        """Return the stream with tasks in `order` (names, or 1-based positions in this stream).

        The next-item task must stay first: every method pre-trains on it.
        """
        names = self.task_names
        picked: list[Task] = []
        for key in order:
            if isinstance(key, (int, np.integer)) or (isinstance(key, str) and key.isdigit()):
                pos = int(key)
                if not 1 <= pos <= len(names):
                    raise StreamError(f"order position {pos} out of range 1..{len(names)}")
                picked.append(self.tasks[pos - 1])
            else:
                picked.append(self.task(str(key)))
        if sorted(t.name for t in picked) != sorted(names):
            raise StreamError(
                f"order {list(order)} must name every task exactly once; tasks: {names}"
            )
        if picked[0].kind != "next_item":
            raise StreamError(f"order {list(order)}: the next-item task {names[0]!r} must stay first")
        return dataclasses.replace(self, tasks=tuple(picked))

    def reversed(self) -> "TaskStream":
        """T1 first, then the remaining tasks in reverse (the paper's reversed-order experiment)."""
        return dataclasses.replace(self, tasks=(self.tasks[0], *self.tasks[:0:-1]))

    def without(self, name: str) -> "TaskStream":
        """The stream with task `name` removed, the others in their order.

        Holds a downstream task out of the continual stream (the cold-start study trains its own
        model on it), so no method ever sees its labels. The next-item task cannot be dropped:
        every method pre-trains on it.
        """
        task = self.task(name)
        if task is self.tasks[0]:
            raise StreamError(f"cannot drop {name!r} from stream {self.name!r}: the next-item task must stay first")
        return dataclasses.replace(self, tasks=tuple(t for t in self.tasks if t.name != name))

    def with_noise_task(
        self, position: int, user_frac: float = 0.5, n_classes: int = 50, seed: int = 0
    ) -> "TaskStream":
        """Insert an uninformative classification task at 0-based index `position` (>= 1).

        `user_frac` of all users (U^{T1}) are drawn at random and each gets a label uniform in
        {0..n_classes-1}, independent of its behaviour (docs/protocol.md §1.7). On a time-aware stream
        the users are drawn among those whose sequences hold only items known at that position.
        """
        if not 1 <= position <= len(self.tasks):
            raise StreamError(f"noise position must lie in 1..{len(self.tasks)}, got {position}")
        if not 0.0 < user_frac <= 1.0:
            raise StreamError(f"noise user_frac must lie in (0, 1], got {user_frac}")
        if n_classes < 2:
            raise StreamError(f"noise n_classes must be >= 2, got {n_classes}")
        rng = np.random.default_rng([seed, 0x401CE])
        if self.time_aware:  # users whose sequences the learner can read at that point of the stream
            vocab = self.vocab_at(position - 1)
            pool = np.flatnonzero(self.sequences.max(axis=1) < vocab)
            n = max(1, int(round(user_frac * len(pool))))
            users = np.sort(rng.choice(pool, size=n, replace=False))
        else:
            vocab = None
            n = max(1, int(round(user_frac * self.n_users)))
            users = np.sort(rng.choice(self.n_users, size=n, replace=False))
        labels = rng.integers(0, n_classes, size=n)
        noise = Task(
            name="noise",
            kind="classify",
            n_labels=n_classes,
            targets=Targets(users, np.arange(n + 1, dtype=np.int64), labels.astype(np.int64)),
            description=f"uninformative: {user_frac:.0%} of users, uniform labels in {n_classes} classes",
            vocab=vocab,
        )
        if "noise" in self.task_names:
            raise StreamError("the stream already has a noise task")
        tasks = list(self.tasks)
        tasks.insert(position, noise)
        return dataclasses.replace(self, tasks=tuple(tasks))


# ---------------------------------------------------------------------------------- splits
SplitLevel = Literal["user", "pair"]
PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitConfig:
    """80/5/15 by default; `level="user"` keeps all pairs of a user in one part (curb default),
    `level="pair"` shuffles (user, target) pairs as the reference code does (leaks inputs)."""

    seed: int = 0
    level: SplitLevel = "user"
    fractions: tuple[float, float, float] = (0.8, 0.05, 0.15)

    def __post_init__(self) -> None:
        if self.level not in ("user", "pair"):
            raise StreamError(f"split level must be 'user' or 'pair', got {self.level!r}")
        if self.seed < 0:
            raise StreamError(f"split seed must be >= 0, got {self.seed}")
        if len(self.fractions) != 3 or not all(f > 0 for f in self.fractions) or not abs(sum(self.fractions) - 1) <= 1e-9:
            raise StreamError(f"split fractions must be three positive numbers summing to 1, got {self.fractions}")


def _cuts(n: int, fractions: Sequence[float]) -> tuple[int, int]:
    a = int(round(n * fractions[0]))
    b = a + int(round(n * fractions[1]))
    return a, b


def split_task(task: Task, cfg: SplitConfig) -> dict[str, Targets]:
    """Deterministic train/val/test parts of one task.

    The permutation is seeded by (cfg.seed, task name), so a task's split does not depend on
    its position in the stream: original, reversed and noisy runs are evaluated on identical
    test users.
    """
    tg = task.targets
    rng = np.random.default_rng([cfg.seed, zlib.crc32(task.name.encode())])
    n = tg.n_users if cfg.level == "user" else tg.n_pairs
    a, b = _cuts(n, cfg.fractions)
    if a < 1 or b - a < 1 or n - b < 1:
        raise StreamError(
            f"task {task.name!r} has too few {'users' if cfg.level == 'user' else 'pairs'} ({n}) "
            f"for a {cfg.fractions} split: every part needs at least one"
        )
    perm = rng.permutation(n)
    chunks = (perm[:a], perm[a:b], perm[b:])
    if cfg.level == "user":
        parts = {p: tg.take(np.sort(c)) for p, c in zip(PARTS, chunks)}
        seen = np.concatenate([parts[p].users for p in PARTS])
        if len(np.unique(seen)) != len(seen):
            raise AssertionError(f"task {task.name!r}: user split parts overlap")
    else:
        pu = tg.pair_users()
        parts = {p: Targets.from_pairs(pu[np.sort(c)], tg.labels[np.sort(c)]) for p, c in zip(PARTS, chunks)}
        if sum(parts[p].n_pairs for p in PARTS) != tg.n_pairs:
            raise AssertionError(f"task {task.name!r}: pair split lost pairs")
    return parts
