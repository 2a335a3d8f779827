"""The evaluator owns the splits and computes every reported number.

Methods receive `TaskData` for train and validation only (model inputs and labels, no user
ids); test labels stay inside the `Evaluator`. Scoring is batched over users and compared with
all labels at once (full ranking, tie-aware), in chunks so a large vocabulary fits in memory.
"""

from __future__ import annotations

import numpy as np
import torch

from .method import Method, TaskData, TaskInfo
from .metrics import CLASSIFY_METRICS, RANKING_METRICS, accuracy_sum, ranking_sums, tie_aware_rank, tie_counts
from .streams import PARTS, SplitConfig, Task, TaskStream, Targets, split_task

# Upper bound on (pairs x labels) compared at once, to cap evaluation memory (~32M bools).
_MAX_CELLS = 1 << 25


def task_info(task: Task) -> TaskInfo:
    return TaskInfo(task.name, task.kind, task.n_labels, task.metric, task.label_names)


def model_inputs(kind: str, seqs: np.ndarray) -> np.ndarray:
    """The next-item task predicts the last item from the rest; other tasks read it all."""
    return seqs[:, :-1] if kind == "next_item" else seqs


def evaluate_data(method: Method, task: TaskInfo, data: TaskData, eval_batch: int = 512) -> dict[str, float]:
    """Mean metrics of `method` on one part of a task. Used for validation and for test."""
    ptr, labels = data.ptr, data.labels
    counts = np.diff(ptr)
    names = CLASSIFY_METRICS if task.kind == "classify" else RANKING_METRICS
    sums = dict.fromkeys(names, 0.0)
    x_all = model_inputs(task.kind, data.inputs)
    users_per_chunk = max(1, min(eval_batch, _MAX_CELLS // max(task.n_labels * max(counts.mean(), 1), 1)))
    for lo in range(0, data.n_users, int(users_per_chunk)):
        hi = min(lo + int(users_per_chunk), data.n_users)
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
        greater, equal = tie_counts(scores, rows, y)
        part = accuracy_sum(greater, equal) if task.kind == "classify" else ranking_sums(tie_aware_rank(greater, equal))
        for k in names:
            sums[k] += part[k]
    n = max(len(labels), 1)
    return {k: v / n for k, v in sums.items()}


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
        return evaluate_data(method, self.info(name), self._data(name, "test"), self.eval_batch)

    def split_sizes(self) -> dict[str, dict[str, dict[str, int]]]:
        return {
            name: {p: {"users": parts[p].n_users, "pairs": parts[p].n_pairs} for p in PARTS}
            for name, parts in self._splits.items()
        }
