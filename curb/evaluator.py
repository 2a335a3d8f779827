"""The evaluator owns the splits and computes every reported number.

Methods receive `TaskData` for train and validation only (model inputs and labels, no user
ids); test labels stay inside the `Evaluator`. Scoring is batched over users and compared with
all labels at once (full ranking, tie-aware), in chunks so a large vocabulary fits in memory:
no score, comparison or logit matrix has more than `MAX_CELLS` entries, except one user's
next-item validation logits when that user's positions x labels alone exceed it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .method import Method, TaskData, TaskInfo
from .metrics import CLASSIFY_METRICS, RANKING_METRICS, accuracy_values, ranking_values, tie_aware_rank, tie_counts
from .streams import PARTS, SplitConfig, Task, TaskStream, Targets, split_task

# Upper bound on the entries of any users x labels (or pairs x labels) matrix evaluation builds
# at once: 2**25 = 33.5 M, i.e. 128 MiB per float32 matrix (docs/performance.md, "Evaluation memory").
MAX_CELLS = 1 << 25


def chunk_users(cells_per_user: float, eval_batch: int) -> int:
    """Users per chunk: at most `eval_batch`, and at most `MAX_CELLS` matrix entries for the
    chunk (at least one user, whose own entries may then exceed the cap)."""
    return int(max(1, min(eval_batch, MAX_CELLS // max(cells_per_user, 1))))


def task_info(task: Task) -> TaskInfo:
    return TaskInfo(task.name, task.kind, task.n_labels, task.metric, task.label_names)


def model_inputs(kind: str, seqs: np.ndarray) -> np.ndarray:
    """The next-item task predicts the last item from the rest; other tasks read it all."""
    return seqs[:, :-1] if kind == "next_item" else seqs


def evaluate_data(method: Method, task: TaskInfo, data: TaskData, eval_batch: int = 512,
                  with_loss: bool = False) -> dict[str, float]:
    """Mean metrics of `method` on one part of a task. Used for validation and for test.

    `with_loss` adds "loss", the mean cross-entropy of the method's logits (the selection
    criterion, docs/protocol.md §4.4): over every (user, target) pair, or for the next-item task
    over every non-padding position of the sequences (about 30 targets per user instead of one,
    so a 5 % validation part still ranks epochs reliably)."""
    means = evaluate_users(method, task, data, eval_batch)[0]
    if with_loss:
        means["loss"] = validation_loss(method, task, data, eval_batch)
    return means


def validation_loss(method: Method, task: TaskInfo, data: TaskData, eval_batch: int = 512) -> float:
    """Mean cross-entropy of `method.forward_logits` on `data` (see `evaluate_data`)."""
    total, n = 0.0, 0
    counts = np.diff(data.ptr)
    positions = data.inputs.shape[1] - 1 if task.kind == "next_item" else 1  # logit rows per user
    step = chunk_users(positions * task.n_labels, eval_batch)
    with method.inference():
        for lo in range(0, data.n_users, step):
            hi = min(lo + step, data.n_users)
            seq = torch.from_numpy(data.inputs[lo:hi]).to(method.device)
            if task.kind == "next_item":
                logits = method.forward_logits(task.name, seq[:, :-1], train=False, all_positions=True).float()
                ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), seq[:, 1:].reshape(-1),
                                     ignore_index=0, reduction="sum")
                n += int((seq[:, 1:] != 0).sum())
            else:
                logp = F.log_softmax(method.forward_logits(task.name, seq, train=False).float(), dim=-1)
                rows = torch.from_numpy(np.repeat(np.arange(hi - lo), counts[lo:hi])).to(logp.device)
                y = torch.from_numpy(data.labels[data.ptr[lo] : data.ptr[hi]]).to(logp.device)
                ce = -logp[rows, y].sum()
                n += len(y)
            total += ce.item()
    return total / max(n, 1)


def sliced_tie_counts(scores: Tensor, rows: Tensor, y: Tensor, pair_slice: int) -> tuple[Tensor, Tensor]:
    """`tie_counts` over at most `pair_slice` pairs at a time: a user with many targets never
    makes a pairs x labels matrix above the cap."""
    parts = [tie_counts(scores, rows[s : s + pair_slice], y[s : s + pair_slice])
             for s in range(0, max(len(y), 1), pair_slice)]
    return torch.cat([g for g, _ in parts]), torch.cat([e for _, e in parts])


def evaluate_users(method: Method, task: TaskInfo, data: TaskData, eval_batch: int = 512
                   ) -> tuple[dict[str, float], np.ndarray]:
    """Mean metrics over all pairs, and per user the SUM of the task's own metric over that
    user's pairs (float64, in `data` order): the paired statistics resample users, and a
    pair-weighted mean is a ratio of these sums to the users' pair counts."""
    ptr, labels = data.ptr, data.labels
    counts = np.diff(ptr)
    names = CLASSIFY_METRICS if task.kind == "classify" else RANKING_METRICS
    sums = dict.fromkeys(names, 0.0)
    per_user = np.zeros(data.n_users, dtype=np.float64)
    x_all = model_inputs(task.kind, data.inputs)
    step = chunk_users(task.n_labels * max(counts.mean(), 1), eval_batch)  # scores: users x labels
    pair_slice = chunk_users(task.n_labels, MAX_CELLS)  # scores[rows]: pairs x labels, for any user's targets
    for lo in range(0, data.n_users, step):
        hi = min(lo + step, data.n_users)
        x = torch.from_numpy(x_all[lo:hi]).to(method.device)
        scores = method.score(task.name, x).float()
        if scores.shape != (hi - lo, task.n_labels):
            raise RuntimeError(
                f"{method.name}.score({task.name!r}) returned shape {tuple(scores.shape)}, "
                f"expected {(hi - lo, task.n_labels)}"
            )
        c = counts[lo:hi]
        rows = torch.from_numpy(np.repeat(np.arange(hi - lo), c)).to(scores.device)
        y = torch.from_numpy(labels[ptr[lo] : ptr[hi]]).to(scores.device)
        greater, equal = sliced_tie_counts(scores, rows, y, pair_slice)
        part = (accuracy_values(greater, equal) if task.kind == "classify"
                else ranking_values(tie_aware_rank(greater, equal)))
        for k in names:
            sums[k] += part[k].sum().item()
        own = torch.zeros(hi - lo, dtype=torch.float64, device=scores.device)
        per_user[lo:hi] = own.index_add_(0, rows, part[task.metric]).cpu().numpy()
    n = max(len(labels), 1)
    return {k: v / n for k, v in sums.items()}, per_user


@dataclass(frozen=True)
class UserScores:
    """Per-user test scores of one task's test part, in the split's user order."""

    metric: str
    users: np.ndarray  # the test users' ids (stream rows), in split order
    counts: np.ndarray  # test pairs per user
    sums: np.ndarray  # per-user sum of `metric` over the user's pairs


class Evaluator:
    """Holds a stream's splits; hands methods train/val data; scores test parts into R."""

    def __init__(self, stream: TaskStream, split: SplitConfig = SplitConfig(), eval_batch: int = 512):
        self.stream = stream
        self.split_cfg = split
        self.eval_batch = eval_batch
        self._splits: dict[str, dict[str, Targets]] = {t.name: split_task(t, split) for t in stream.tasks}

    def info(self, name: str) -> TaskInfo:
        return task_info(self.stream.task(name))

    def _data(self, name: str, part: str) -> TaskData:
        tg = self._splits[name][part]
        return TaskData(self.info(name), self.stream.sequences[tg.users], tg.ptr, tg.labels)

    def train_data(self, name: str) -> TaskData:
        return self._data(name, "train")

    def val_data(self, name: str) -> TaskData:
        return self._data(name, "val")

    def validate(self, method: Method, task: TaskInfo, data: TaskData) -> dict[str, float]:
        return evaluate_data(method, task, data, self.eval_batch)

    def test(self, method: Method, name: str) -> dict[str, float]:
        """Test metrics of `method` on task `name` (the only place test labels are read)."""
        return self.test_users(method, name)[0]

    def test_users(self, method: Method, name: str) -> tuple[dict[str, float], UserScores]:
        """Test metrics and the per-user scores behind them (for paired statistics)."""
        info, tg = self.info(name), self._splits[name]["test"]
        means, sums = evaluate_users(method, info, self._data(name, "test"), self.eval_batch)
        return means, UserScores(info.metric, np.asarray(tg.users), np.diff(tg.ptr), sums)

    def split_sizes(self) -> dict[str, dict[str, dict[str, int]]]:
        return {
            name: {p: {"users": parts[p].n_users, "pairs": parts[p].n_pairs} for p in PARTS}
            for name, parts in self._splits.items()
        }
