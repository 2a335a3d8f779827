"""DITTO (Choi et al., SIGIR 2025): dynamic time-aware continual user representation learning.

DITTO keeps TERACON's model (one shared NextItNet, relation-aware task masks on h1/h2, per-task
heads, its own gated T1 stage, a frozen teacher = the model after the previous task) and replaces
TERACON's random retention sample by two transfers chosen by how users relate to the item
distributions of past tasks. While task Ti is learned, for every past task Tk, on each batch:

* Forward knowledge transfer (FKT, weight α): the teacher's representation h̃_u of each user
  under Tk's mask is compared (cosine) with E[I^Tk], the mean item-embedding row after Tk was
  learned. The S users most similar to it, S = min(B, max(⌊B·ρ_k⌋, min_users)), restricted to
  users whose sequences hold no item newer than the teacher's vocabulary, are distilled:
  MSE(student representation under Tk's own mask, h̃_u), weighted ρ_k / Σρ.
* Backward knowledge transfer to the next-item task (BKT, weight β): the users whose sequences
  hold items new in this period, the S with the most distinct new items, train T1's next-item
  objective (under T1's current relation-aware mask), so T1 adapts to the new items.
* Backward knowledge transfer to past recommendation tasks (weight γ): the S users LEAST similar
  to E[I^Tk] that hold items newer than Tk's vocabulary get two augmented views (20% of items
  deleted; 20% substituted by their most similar in-batch item); a contrastive loss (NT-Xent,
  temperature 1, cosine) pulls the two views together under Tk's mask.

ρ_k = 1 − mean_d sigmoid(c · cos(m_d^Ti, m̃_d^Tk)) from this step's masks, used by the next step
(TERACON's Eq. 15 with DITTO's c = 2). On a time-aware stream the item table grows before each
task (new rows appended, old rows unchanged). docs/methods.md lists each choice and its source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from curb.method import Batch, Knob, TaskInfo, full_sequences, inputs_for, register

from .teracon import Teracon, relation_rate


def delete_items(rows: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Each left-padded row without ⌊ratio · length⌋ of its items (random positions), left-padded again."""
    out = np.zeros_like(rows)
    for i, row in enumerate(rows):
        items = row[row != 0]
        drop = rng.choice(len(items), int(ratio * len(items)), replace=False)
        kept = np.delete(items, drop)
        out[i, rows.shape[1] - len(kept):] = kept
    return out


def substitute_items(rows: np.ndarray, ratio: float, rng: np.random.Generator, emb: Tensor) -> np.ndarray:
    """Each row with ⌊ratio · length⌋ of its items (random positions) replaced by the most similar
    other item of the batch (cosine of the item-embedding rows `emb`)."""
    items = np.unique(rows[rows != 0])
    out = rows.copy()
    if len(items) < 2:
        return out
    vec = F.normalize(emb[torch.from_numpy(items).to(emb.device)].float(), dim=1)
    sim = vec @ vec.T
    sim.fill_diagonal_(-float("inf"))
    nearest = items[sim.argmax(dim=1).cpu().numpy()]
    for i, row in enumerate(rows):
        real = np.flatnonzero(row != 0)
        pos = real[rng.choice(len(real), int(ratio * len(real)), replace=False)]
        out[i, pos] = nearest[np.searchsorted(items, row[pos])]
    return out


def nt_xent(z: Tensor) -> Tensor:
    """Contrastive loss of 2n views where rows i and i + n are one user's: −log of the positive's
    share of exp(cosine) over all other views (temperature 1), averaged over the 2n anchors."""
    n = len(z) // 2
    zn = F.normalize(z, dim=1, eps=1e-6)
    sim = zn @ zn.T
    pos = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    others = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), -float("inf"))
    return (torch.logsumexp(others, dim=1) - sim[torch.arange(2 * n, device=z.device), pos]).mean()


def select_count(n: int, rate: float, floor_users: int) -> int:
    """How many of n candidate users a past task takes: max(⌊n·ρ⌋, min_users), at most n."""
    return min(n, max(math.floor(n * rate), floor_users))


@register("ditto")
class Ditto(Teracon):
    summary = "time-aware successor of TERACON: similarity-selected forward and backward transfer (SIGIR 2025)"
    benchmark = True  # one of the `--methods all` set
    tune_space = {"ditto.alpha": Knob("uniform", 0.1, 1.5), "ditto.beta": Knob("uniform", 0.1, 1.0)}

    @dataclass
    class Config(Teracon.Config):
        c: float = 2.0  # ρ sharpness: DITTO's code uses sigmoid(2·cos)
        beta: float = 0.4  # weight of the backward transfer to the next-item task
        gamma: float = 0.8  # weight of the contrastive backward transfer to past recommendation tasks
        min_users: int = 20  # each past task selects at least this many users (all when fewer)
        aug_ratio: float = 0.2  # share of a sequence's items deleted / substituted by the augmentations

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.beta < 0 or self.gamma < 0 or self.min_users < 1 or not 0 <= self.aug_ratio < 1:
                raise ValueError(f"need beta, gamma >= 0, min_users >= 1, 0 <= aug_ratio < 1; got {self}")

    def __init__(self, setup):
        super().__init__(setup)
        self.item_means: dict[str, Tensor] = {}  # E[I^Tk]: mean item-embedding row right after task k
        self.vocab_of: dict[str, int] = {}  # the item vocabulary task k was learned with
        self._bkt_users: np.ndarray | None = None  # per past task: sum over steps of BKT users (this stage)

    # ------------------------------------------------------------------ lifecycle
    def begin_task(self, task: TaskInfo) -> None:
        super().begin_task(task)
        self._bkt_users = np.zeros(len(self.tasks) - 1) if self.teacher is not None else None

    def end_task(self, task: TaskInfo) -> None:
        steps = self._stats.steps if self._stats is not None else 0
        super().end_task(task)
        if self._bkt_users is not None:
            names = self.known()[:-1]
            self.stage_stats[task.name]["bkt_users_mean"] = dict(zip(names, (self._bkt_users / max(steps, 1)).tolist()))
        self._bkt_users = None
        self.item_means[task.name] = self.net.backbone.item_emb.weight.detach().mean(dim=0).clone()
        self.vocab_of[task.name] = self.n_items

    # ------------------------------------------------------------------ the transfers
    def stage_loss(self, task: TaskInfo, batch: Batch, m_cur: Tensor, s: float) -> Tensor:
        """A later task's loss: its CE + DITTO's transfers, in place of TERACON's retention."""
        h = self.net.represent(batch.x, m_cur, all_positions=batch.rows is None)
        return self.head_loss(task, h, batch) + self.transfer(batch, m_cur, s)

    def transfer(self, batch: Batch, m_cur: Tensor, s: float) -> Tensor:
        """α·FKT + β·BKT(next-item task) + γ·BKT(past recommendation tasks) on this batch; updates ρ."""
        cfg = self.cfg
        full = full_sequences(batch)
        n_users = full.shape[0]
        past = self.tasks[:-1]
        fixed = cfg.fixed_rate()
        rates = self.rho if fixed is None else [fixed] * len(past)
        known, teacher_known = self.known(), self.known()[:-1]
        old_vocab = self.vocab_of[past[-1].name]  # the teacher's vocabulary: later ids are this period's items
        newest = full.max(dim=1).values
        fkt = bkt = full.new_zeros((), dtype=m_cur.dtype)
        new_rho = []
        for j, (pt, rate) in enumerate(zip(past, rates)):
            x = inputs_for(pt.kind, full)
            n = select_count(n_users, rate, cfg.min_users)
            if cfg.kr_max_users is not None:
                n = min(n, cfg.kr_max_users)
            with torch.no_grad():  # the teacher's view of every user: its representation under Tk's mask
                m_t = self.teacher.mask(pt.name, self.others(pt.name, teacher_known), s)
                h_t = self.teacher.represent(x, m_t)
                sim = F.cosine_similarity(h_t, self.item_means[pt.name][None].to(h_t.dtype), dim=1)
                new_rho.append(relation_rate(m_cur.detach(), m_t, cfg.c))
            m_s = self.net.mask(pt.name, self.others(pt.name, known), s) if cfg.kr_student_mask == "own" else m_cur
            sel = torch.topk(sim, n).indices
            sel = sel[newest[sel] < old_vocab]  # only users whose items the teacher knows
            if cfg.alpha and len(sel):
                fkt = fkt + (rate / sum(rates)) * F.mse_loss(self.net.represent(x[sel], m_s), h_t[sel])
            if pt.kind == "next_item" and cfg.beta:
                bkt = bkt + cfg.beta * self.adapt_next_item(pt, full, old_vocab, rate, m_s, j)
            elif pt.kind == "recommend" and cfg.gamma:
                least = torch.topk(-sim, n).indices
                least = least[newest[least] >= self.vocab_of[pt.name]]  # they hold items newer than Tk
                if len(least):
                    bkt = bkt + cfg.gamma * self.contrast(x[least], m_s)
                    self._bkt_users[j] += len(least)
            st = self._stats
            st.rho[j] += new_rho[-1]
            st.fraction[j] += len(sel) / n_users
            st.users[j] += len(sel)
        self._stats.steps += 1
        self.rho = new_rho
        return cfg.alpha * fkt + bkt

    def adapt_next_item(self, task: TaskInfo, full: Tensor, old_vocab: int, rate: float, mask: Tensor, j: int) -> Tensor:
        """BKT to the next-item task: its objective on the users holding the most distinct new items
        (counted over the whole sequence, trained on the task's view: the sequence without its last item)."""
        seqs = inputs_for(task.kind, full)
        new = torch.where(full >= old_vocab, full, torch.zeros_like(full))
        new = torch.cat([torch.zeros_like(new[:, :1]), new], dim=1)  # a 0 first, so the count below is exact
        distinct = (torch.diff(torch.sort(new, dim=1).values, dim=1) != 0).sum(dim=1)  # distinct new ids per user
        cand = torch.nonzero(distinct > 0).flatten()
        if len(cand) == 0:
            return full.new_zeros((), dtype=mask.dtype)
        n = select_count(len(cand), rate, self.cfg.min_users)
        if self.cfg.kr_max_users is not None:  # the same per-task, per-step cap as the other terms
            n = min(n, self.cfg.kr_max_users)
        pick = cand[torch.sort(distinct[cand], descending=True, stable=True).indices[:n]]
        self._bkt_users[j] += n
        x, y = seqs[pick, :-1], seqs[pick, 1:].clone()
        y[y >= task.n_labels] = -100  # items newer than the task's head can score are not targets
        if self.setup.train.ignore_pad:
            y[y == 0] = -100
        return self.next_item_loss(task.name, self.net.represent(x, mask, all_positions=True), y)

    def contrast(self, x: Tensor, mask: Tensor) -> Tensor:
        """BKT to a past recommendation task: NT-Xent between a deleted and a substituted view."""
        rows = x.cpu().numpy()
        a = delete_items(rows, self.cfg.aug_ratio, self.rng)
        b = substitute_items(rows, self.cfg.aug_ratio, self.rng, self.net.backbone.item_emb.weight.detach())
        views = torch.from_numpy(np.concatenate([a, b])).to(x.device)
        return nt_xent(self.net.represent(views, mask))

    # ------------------------------------------------------------------ state
    def extra_state(self) -> dict:
        return {**super().extra_state(), "item_means": {k: v.cpu() for k, v in self.item_means.items()},
                "vocab_of": dict(self.vocab_of)}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        self.item_means = {k: v.to(self.device) for k, v in state["item_means"].items()}
        self.vocab_of = dict(state["vocab_of"])
