"""Cold-start recommendation from the universal user representation (issue 9, part 2; docs/coldstart.md).

The study asks whether the user representation a continual learner builds helps a downstream
recommender that never took part in the continual stream, most of all for users with almost no
downstream data:

1. A downstream task (`holdout`, default T3) is removed from the stream (`TaskStream.without`),
   so the continual learner never sees its labels. Its (user, item) pairs become the data of a
   Neural Collaborative Filtering model (NeuMF, He et al. 2017).
2. The continual cell runs on the shortened stream through `run_cell` (same protocol, splits and
   T1 cache as every cell); after each requested task the representation of EVERY user,
   `Method.represent` read through the newest task's view, is sealed to disk.
3. NeuMF is trained with user embeddings initialised either at random (N(0, 0.01^2), NCF's
   default) or from a representation (standardised per dimension, scaled to the same std), and
   evaluated leave-one-out against 99 sampled negatives, separately for warm and cold users.

Every random draw of the NCF protocol (held-out items, simulated cold users, candidates, training
negatives, batch order, non-user weights) depends on the seed only, never on the initialisation,
so all rows of one seed are paired: they differ in the user embeddings' starting point alone.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Literal, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ConfigError, apply
from .method import Method
from .metrics import tie_aware_rank
from .results import ResultError, canonical, iter_results, load_result, load_sealed, save_result, save_sealed
from .records import COLD_START as KIND
from .records import SHARED_SECTIONS, is_cold_start
from .runner import CellSpec, _env, build_stream, resolve_config, run_cell
from .streams import Task, TaskStream

DEFAULT_METHODS = ("teracon", "conure", "fineall")
# Independent random streams of the protocol, keyed by purpose (numpy SeedSequence entropy).
_ORDER, _COLD, _TEST_NEG, _VAL_NEG, _TRAIN = 0xC01D0, 0xC01D1, 0xC01D2, 0xC01D3, 0xC01D4


@dataclass(frozen=True)
class NCFConfig:
    """The downstream protocol and NeuMF's training (`--set ncf.<key>=value`)."""

    cold_threshold: int = 2  # cold = fewer than this many training interactions (the talk: < 2)
    cold_frac: float = 0.05  # share of naturally warm users truncated to `cold_keep` items (simulated cold)
    cold_keep: int = 1  # training interactions a simulated cold user keeps (its earliest ones)
    test_item: Literal["last", "random"] = "last"  # held-out item per user: last in data order, or seeded random
    eval_negatives: int = 99  # sampled negatives ranked with each held-out item (NCF: 99)
    train_negatives: int = 4  # sampled negatives per training positive, redrawn every epoch (NCF: 4)
    mlp_depth: int = 3  # MLP tower 2f -> f -> f/2 -> f/4 (NCF's halving tower)
    init_std: float = 0.01  # std of random embeddings, and the scale representations are brought to
    lr: float = 1e-3  # Adam (NCF)
    batch: int = 256  # (user, item, label) samples per step (NCF)
    epochs: int = 10
    patience: int = 3  # early stopping on validation HR@10, best epoch restored
    eval_batch: int = 2048  # users scored per chunk

    def __post_init__(self) -> None:
        if self.cold_threshold < 1 or not 0 <= self.cold_keep < self.cold_threshold:
            raise ValueError(f"need cold_threshold >= 1 and 0 <= cold_keep < cold_threshold, got {self}")
        if not 0 <= self.cold_frac < 1:
            raise ValueError(f"cold_frac must lie in [0, 1), got {self.cold_frac}")
        if self.test_item not in ("last", "random"):
            raise ValueError(f"test_item must be 'last' or 'random', got {self.test_item!r}")
        for k in ("eval_negatives", "train_negatives", "mlp_depth", "batch", "epochs", "patience", "eval_batch"):
            if getattr(self, k) < 1:
                raise ValueError(f"ncf.{k} must be >= 1, got {getattr(self, k)}")
        if not self.init_std > 0 or not self.lr > 0:
            raise ValueError(f"ncf.init_std and ncf.lr must be > 0, got {self.init_std}, {self.lr}")


# ----------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class NCFData:
    """The leave-one-out data of one held-out task. User ids are stream rows, item ids the task's
    label ids. Candidate column 0 is the held-out item, columns 1.. its sampled negatives."""

    n_users: int  # rows of the stream (size of the user tables)
    n_items: int
    train_users: np.ndarray  # [P] training positives
    train_items: np.ndarray
    test_users: np.ndarray  # [U] every user of the task
    test_cands: np.ndarray  # [U, 1 + eval_negatives]
    train_counts: np.ndarray  # [U] training positives of each test user
    simulated: np.ndarray  # [U] bool: truncated to `cold_keep` items by `cold_frac`
    val_users: np.ndarray  # [V] users with a validation item (naturally warm enough to spare one)
    val_cands: np.ndarray  # [V, 1 + eval_negatives]
    cold_threshold: int

    @property
    def cold(self) -> np.ndarray:
        return self.train_counts < self.cold_threshold

    def groups(self) -> dict[str, np.ndarray]:
        """Boolean masks over test users: all, warm, cold and the cold users' two origins."""
        cold = self.cold
        return {"all": np.ones_like(cold), "warm": ~cold, "cold": cold,
                "cold_natural": cold & ~self.simulated, "cold_simulated": cold & self.simulated}

    def stats(self) -> dict:
        return {"n_users": len(self.test_users), "n_items": self.n_items, "train_pairs": len(self.train_users),
                "val_users": len(self.val_users), **{f"{g}_users": int(m.sum()) for g, m in self.groups().items()}}


def sample_negatives(ptr: np.ndarray, labels: np.ndarray, rows: np.ndarray, n_items: int, n: int,
                     rng: np.random.Generator, chunk: int = 1024) -> np.ndarray:
    """`n` distinct items per row of `rows` (positions into the CSR `ptr`/`labels`), uniformly
    among the items that user never interacted with: random keys, positives set to +inf, the
    n smallest kept. Vectorised over a chunk of users at a time."""
    counts = np.diff(ptr)[rows]
    if len(rows) and n_items - counts.max() < n:
        raise ConfigError(f"a user of the held-out task has {counts.max()} of its {n_items} items: fewer than "
                          f"{n} negatives are left (lower ncf.eval_negatives)")
    out = np.empty((len(rows), n), dtype=np.int64)
    for lo in range(0, len(rows), chunk):
        r = rows[lo:lo + chunk]
        keys = rng.random((len(r), n_items), dtype=np.float32)
        c = counts[lo:lo + chunk]
        pos = labels[np.repeat(ptr[r] - np.cumsum(np.r_[0, c[:-1]]), c) + np.arange(c.sum())]
        keys[np.repeat(np.arange(len(r)), c), pos] = np.inf
        out[lo:lo + len(r)] = np.argpartition(keys, n - 1, axis=1)[:, :n]
    return out


def ncf_data(task: Task, n_users: int, cfg: NCFConfig, seed: int) -> NCFData:
    """Leave-one-out split of `task`'s (user, item) pairs (docs/coldstart.md, "Protocol").

    Per user, in data order (or a seeded random order with `test_item="random"`): the last item
    is the test item; users left with at least `cold_threshold` training items are naturally
    warm, and `cold_frac` of them (seeded) keep only their first `cold_keep` items (simulated
    cold); naturally warm users that can spare one more item without turning cold give their
    second-to-last item to validation; the rest is training data.
    """
    tg = task.targets
    users, items = tg.pair_users(), tg.labels.copy()
    counts = tg.counts()
    starts = np.repeat(tg.ptr[:-1], counts)
    if cfg.test_item == "random":
        order = np.lexsort((np.random.default_rng([seed, _ORDER]).random(len(users)), users))
        items = items[order]  # users stay grouped and sorted (lexsort's primary key)
    pos = np.arange(len(users)) - starts  # position within the user's list
    from_end = np.repeat(counts, counts) - 1 - pos
    rest = counts - 1  # items left per user once the test item is out
    warm = rest >= cfg.cold_threshold
    n_sim = int(round(cfg.cold_frac * warm.sum()))
    rng = np.random.default_rng([seed, _COLD])
    simulated = np.zeros(len(counts), dtype=bool)
    simulated[np.sort(rng.choice(np.flatnonzero(warm), n_sim, replace=False))] = True
    gives_val = (rest >= cfg.cold_threshold + 1) & ~simulated
    sim_p, val_p = np.repeat(simulated, counts), np.repeat(gives_val, counts)
    test = from_end == 0
    val = val_p & (from_end == 1)
    train = ~test & ~val & (~sim_p | (pos < cfg.cold_keep))
    row_of_user = np.repeat(np.arange(len(counts)), counts)
    train_counts = np.bincount(row_of_user[train], minlength=len(counts))
    # Candidates: negatives avoid ALL of a user's positives (test, validation, dropped ones included).
    # (`items` is a within-user permutation of tg.labels, so tg's CSR pointers still delimit users.)
    test_neg = sample_negatives(tg.ptr, items, np.arange(len(counts)), task.n_labels, cfg.eval_negatives,
                                np.random.default_rng([seed, _TEST_NEG]))
    val_rows = np.flatnonzero(gives_val)
    val_neg = sample_negatives(tg.ptr, items, val_rows, task.n_labels, cfg.eval_negatives,
                               np.random.default_rng([seed, _VAL_NEG]))
    return NCFData(
        n_users=n_users, n_items=task.n_labels,
        train_users=users[train], train_items=items[train],
        test_users=tg.users.copy(), test_cands=np.concatenate([items[test][:, None], test_neg], axis=1),
        train_counts=train_counts, simulated=simulated,
        val_users=tg.users[val_rows], val_cands=np.concatenate([items[val][:, None], val_neg], axis=1),
        cold_threshold=cfg.cold_threshold,
    )


def training_negatives(users: np.ndarray, n_items: int, k: int, positive_keys: np.ndarray,
                       rng: np.random.Generator) -> np.ndarray:
    """k items per training positive [P, k], uniform over items that are not one of the user's
    TRAINING positives (as NCF: held-out items may be drawn), redrawn until none collides."""
    u = np.repeat(users, k)
    neg = rng.integers(0, n_items, size=len(u))
    bad = np.arange(len(u))
    while len(bad):
        keys = u[bad] * n_items + neg[bad]
        hit = np.searchsorted(positive_keys, keys)
        hit = (hit < len(positive_keys)) & (positive_keys[np.minimum(hit, len(positive_keys) - 1)] == keys)
        bad = bad[hit]
        neg[bad] = rng.integers(0, n_items, size=len(bad))
    return neg.reshape(-1, k)


# ----------------------------------------------------------------------------------- model
class NeuMF(nn.Module):
    """NeuMF (He et al., WWW 2017): GMF (p_u * q_i) and an MLP tower over [p'_u, q'_i], each with
    its own user and item embeddings of size `dim`, fused by one linear layer on their
    concatenation. Trained from scratch (no GMF/MLP pre-training)."""

    def __init__(self, n_users: int, n_items: int, dim: int, depth: int, init_std: float):
        super().__init__()
        self.user_gmf, self.user_mlp = nn.Embedding(n_users, dim), nn.Embedding(n_users, dim)
        self.item_gmf, self.item_mlp = nn.Embedding(n_items, dim), nn.Embedding(n_items, dim)
        for e in (self.user_gmf, self.user_mlp, self.item_gmf, self.item_mlp):
            nn.init.normal_(e.weight, 0.0, init_std)
        sizes = [max(1, 2 * dim // 2 ** k) for k in range(depth + 1)]
        layers: list[nn.Module] = []
        for a, b in zip(sizes, sizes[1:]):
            lin = nn.Linear(a, b)
            nn.init.xavier_uniform_(lin.weight)  # NCF: glorot_uniform for the tower
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.ReLU()]
        self.mlp = nn.Sequential(*layers)
        self.predict = nn.Linear(dim + sizes[-1], 1)
        bound = math.sqrt(3.0 / (dim + sizes[-1]))  # NCF: lecun_uniform for the prediction layer
        nn.init.uniform_(self.predict.weight, -bound, bound)
        nn.init.zeros_(self.predict.bias)

    def init_users(self, vectors: Tensor) -> None:
        """Start BOTH user tables from `vectors` [n_users, dim] (row i = user i)."""
        with torch.no_grad():
            self.user_gmf.weight.copy_(vectors)
            self.user_mlp.weight.copy_(vectors)

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        """Logits of (user, item) pairs; users and items broadcast ([B] or [B, C])."""
        gmf = self.user_gmf(users) * self.item_gmf(items)
        u = self.user_mlp(users).expand(*items.shape, -1)
        mlp = self.mlp(torch.cat([u, self.item_mlp(items)], dim=-1))
        return self.predict(torch.cat([gmf.expand_as(u), mlp], dim=-1)).squeeze(-1)


def scale_representation(vectors: np.ndarray, rows: np.ndarray, std: float) -> np.ndarray:
    """Standardise every dimension over the users `rows` (the task's users), then scale to `std`:
    the same per-dimension spread as the random initialisation, so both inits start NeuMF at one
    scale and differ only in direction. Constant dimensions become 0."""
    sub = vectors[rows].astype(np.float64)
    mu, sd = sub.mean(0), sub.std(0)
    z = (vectors - mu) / np.where(sd > 0, sd, 1.0) * std
    z[:, sd == 0] = 0.0
    return z.astype(np.float32)


# ----------------------------------------------------------------------------------- metrics
def ranks(scores: Tensor) -> Tensor:
    """Tie-aware rank of column 0 (the held-out item) among each row's candidates [U, C]:
    1 + #(scores above) + #(other scores equal)/2, curb's convention (a constant scorer gets
    rank (C+1)/2 and never a hit)."""
    true = scores[:, :1]
    return tie_aware_rank((scores[:, 1:] > true).sum(1), (scores[:, 1:] == true).sum(1))


def rank_metrics(rank: Tensor) -> dict[str, Tensor]:
    """Per-user HR@1, HR@5, HR@10 and NDCG@10 (1/log2(1 + rank) when rank <= 10)."""
    out = {f"hr@{k}": (rank <= k).double() for k in (1, 5, 10)}
    out["ndcg@10"] = torch.where(rank <= 10, 1.0 / torch.log2(rank + 1.0), torch.zeros_like(rank))
    return out


@torch.no_grad()
def score_candidates(model: NeuMF, users: np.ndarray, cands: np.ndarray, device: torch.device,
                     chunk: int) -> Tensor:
    model.eval()
    out = []
    for lo in range(0, len(users), chunk):
        u = torch.from_numpy(users[lo:lo + chunk]).to(device)[:, None]
        out.append(model(u, torch.from_numpy(cands[lo:lo + chunk]).to(device)).float().cpu())
    model.train()
    return torch.cat(out) if out else torch.zeros(0, cands.shape[1])


def group_metrics(rank: Tensor, groups: Mapping[str, np.ndarray]) -> dict[str, dict]:
    per_user = rank_metrics(rank)
    out = {}
    for g, mask in groups.items():
        m = torch.from_numpy(mask)
        n = int(m.sum())
        out[g] = {"n_users": n, **{k: (float(v[m].mean()) if n else None) for k, v in per_user.items()}}
    return out


# ----------------------------------------------------------------------------------- training
def build_ncf(data: NCFData, cfg: NCFConfig, dim: int, seed: int, init: np.ndarray | None) -> NeuMF:
    """NeuMF drawn from `seed` alone (item tables and tower identical for every variant), user
    tables then overwritten by `init` when given."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = NeuMF(data.n_users, data.n_items, dim, cfg.mlp_depth, cfg.init_std)
    if init is not None:
        model.init_users(torch.from_numpy(init))
    return model


def train_ncf(data: NCFData, cfg: NCFConfig, dim: int, seed: int, init: np.ndarray | None,
              device: torch.device, echo: Callable[[str], None] = print) -> tuple[NeuMF, dict]:
    """Train NeuMF with BCE on positives and `train_negatives` sampled negatives per positive;
    validation HR@10 after every epoch, strict improvement, `patience`, best epoch restored.
    `init` [n_users, dim] (already scaled) replaces both user tables' random start."""
    model = build_ncf(data, cfg, dim, seed, init).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    keys = np.unique(data.train_users * data.n_items + data.train_items)
    log: dict = {"epochs": [], "best_epoch": None, "best_val_hr@10": None, "stopped_early": False}
    best, best_val, bad = None, -1.0, 0
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        rng = np.random.default_rng([seed, _TRAIN, epoch])
        neg = training_negatives(data.train_users, data.n_items, cfg.train_negatives, keys, rng)
        users = np.concatenate([data.train_users, np.repeat(data.train_users, cfg.train_negatives)])
        items = np.concatenate([data.train_items, neg.ravel()])
        labels = np.concatenate([np.ones(len(data.train_users)), np.zeros(neg.size)]).astype(np.float32)
        perm = rng.permutation(len(users))
        u_all, i_all, y_all = (torch.from_numpy(a[perm]).to(device) for a in (users, items, labels))
        total, steps = 0.0, 0
        for lo in range(0, len(perm), cfg.batch):
            sl = slice(lo, lo + cfg.batch)
            loss = F.binary_cross_entropy_with_logits(model(u_all[sl], i_all[sl]), y_all[sl])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, steps = total + loss.item(), steps + 1
        val = None
        if len(data.val_users):
            val = float(rank_metrics(ranks(score_candidates(model, data.val_users, data.val_cands, device,
                                                            cfg.eval_batch)))["hr@10"].mean())
        secs = time.perf_counter() - t0
        log["epochs"].append({"epoch": epoch, "loss": total / max(steps, 1), "val_hr@10": val, "seconds": secs,
                              "steps": steps})
        echo(f"    ncf epoch {epoch + 1}: loss {total / max(steps, 1):.4f} val HR@10 "
             f"{'-' if val is None else f'{val:.4f}'} ({secs:.1f}s)")
        if val is None:
            continue
        if val > best_val:
            best_val, bad, best = val, 0, copy.deepcopy(model.state_dict())
            log["best_epoch"], log["best_val_hr@10"] = epoch, val
        else:
            bad += 1
            if bad >= cfg.patience:
                log["stopped_early"] = True
                break
    if best is not None:
        model.load_state_dict(best)
    return model, log


def evaluate_ncf(model: NeuMF, data: NCFData, cfg: NCFConfig, device: torch.device) -> dict[str, dict]:
    """Test metrics per user group (leave-one-out, held-out item vs its sampled negatives)."""
    rank = ranks(score_candidates(model, data.test_users, data.test_cands, device, cfg.eval_batch))
    return group_metrics(rank, data.groups())


# ----------------------------------------------------------------------------------- representations
def rep_path(runs: Path, spec: CellSpec, after: str, view: str) -> Path:
    return runs / "reps" / spec.method / f"seed{spec.seed}-{spec.hash}-after-{after}-view-{view}.pt"


def _rep_meta(spec: CellSpec, fingerprint: str, after: str, view: str) -> dict:
    return {"kind": "user-representations", "spec_hash": spec.hash, "fingerprint": fingerprint, "after": after,
            "view": view}


@torch.no_grad()
def user_representations(method: Method, view: str, sequences: np.ndarray, device: torch.device,
                         chunk: int) -> np.ndarray:
    """Every user's representation through task `view` [n_users, f], batched over users.
    Inputs are the full sequences (the T1 view included: the output after the whole history)."""
    out = [method.user_vectors(view, torch.from_numpy(sequences[lo:lo + chunk]).to(device)).float().cpu()
           for lo in range(0, len(sequences), chunk)]
    return torch.cat(out).numpy()


def load_representation(path: Path, spec: CellSpec, fingerprint: str, after: str, view: str) -> np.ndarray:
    """A sealed representation of exactly this cell, stream and snapshot; ResultError otherwise."""
    meta, blob = load_sealed(path)
    want = _rep_meta(spec, fingerprint, after, view)
    if any(meta.get(k) != v for k, v in want.items()):
        raise ResultError(f"{path}: representation of another cell, stream or snapshot")
    return blob["vectors"].numpy()


def capture_representations(spec: CellSpec, holdout: str, runs: Path, snapshots: Sequence[str], view: str,
                            data_dir: Path | None, device: str = "cpu", echo: Callable[[str], None] = print,
                            force: bool = False) -> dict[str, Path]:
    """Run the continual cell on its stream without task `holdout` into `runs` and
    seal every user's representation after each task in `snapshots` (read through that task's
    view, or through task `view` if it is not "latest"). Existing valid files are reused; a cell
    whose result exists but whose snapshots are missing is recomputed."""
    fingerprint = build_stream(spec, data_dir).without(holdout).fingerprint()
    paths = {k: rep_path(runs, spec, k, view) for k in snapshots}
    dev = torch.device(device)
    chunk = resolve_config(spec).train.eval_batch

    def valid(k: str) -> bool:
        try:
            load_representation(paths[k], spec, fingerprint, k, view)
            return True
        except ResultError:
            return False

    def save(method: Method, name: str, s: TaskStream) -> None:
        if name not in paths:
            return
        reps = user_representations(method, name if view == "latest" else view, s.sequences, dev, chunk)
        save_sealed(paths[name], {"vectors": torch.from_numpy(reps)}, _rep_meta(spec, fingerprint, name, view))
        echo(f"  [{spec.method}] sealed {reps.shape[0]} user representations (f={reps.shape[1]}) after {name}")

    def transform(s: TaskStream) -> TaskStream:
        return s.without(holdout)

    if force or not all(valid(k) for k in snapshots):
        run_cell(spec, runs, data_dir, device, echo, force=force, transform=transform, on_task_end=save)
        if not all(valid(k) for k in snapshots):  # the result or a resumed checkpoint skipped a snapshot
            run_cell(spec, runs, data_dir, device, echo, force=True, transform=transform, on_task_end=save)
    return paths


# ----------------------------------------------------------------------------------- the study
@dataclass(frozen=True)
class ColdStartSpec:
    """Everything that determines one NCF result: the data, the init source and the protocol."""

    dataset: str
    init: str  # "random" or the method whose representation starts the user embeddings
    after: str | None = None  # the task after which the representation was taken (None: random)
    view: str = "latest"  # the task whose view is read; "latest" = the task just learned
    holdout: str = "T3"
    seed: int = 0
    preset: str | None = None
    overrides: tuple[tuple[str, str], ...] = ()  # of the continual cell (shared and the method's own)
    ncf: tuple[tuple[str, str], ...] = ()  # ncf.<key> overrides

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "overrides": dict(self.overrides), "ncf": dict(self.ncf)}

    @property
    def hash(self) -> str:
        return hashlib.sha256(canonical(self.as_dict()).encode()).hexdigest()[:12]

    @property
    def source(self) -> str:
        if self.init == "random":
            return "random"
        return f"{self.init}-after-{self.after}" + ("" if self.view == "latest" else f"-view-{self.view}")

    def relpath(self) -> Path:
        return Path(self.dataset) / KIND / self.source / f"seed{self.seed}-{self.hash}.json"

    def cell(self) -> CellSpec:
        """The continual cell whose representation this row uses (random: the shared setting)."""
        method = "sinmo" if self.init == "random" else self.init
        return CellSpec(method, self.dataset, seed=self.seed, preset=self.preset, overrides=self.overrides)


def runs_dir(out: Path, dataset: str, holdout: str) -> Path:
    """Where the continual cells on the shortened stream live: a hidden folder, so `curb report`
    and the leaderboards never mistake them for cells of the full stream."""
    return Path(out) / ".cold-start" / dataset / f"without-{holdout}"


def resolve_snapshots(stream: TaskStream, snapshots: Sequence[str] | None) -> list[str]:
    """Task names after which representations are taken: default the 2nd task of the shortened
    stream and its last task (deduplicated); "last" names the last task."""
    names = stream.task_names
    wanted = [names[min(1, len(names) - 1)], "last"] if snapshots is None else list(snapshots)
    out = []
    for k in wanted:
        k = names[-1] if k == "last" else k
        if k not in names:
            raise ConfigError(f"snapshot {k!r} is not a task of the stream without the held-out task: {names}")
        if k not in out:
            out.append(k)
    return out


def _split_overrides(overrides: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    ncf = {k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith("ncf.")}
    return ncf, {k: v for k, v in overrides.items() if not k.startswith("ncf.")}


def ncf_config(values: Mapping[str, str]) -> NCFConfig:
    return apply(NCFConfig(), dict(values), "ncf")


def run_one(spec: ColdStartSpec, data: NCFData, cfg: NCFConfig, reps: np.ndarray | None, provenance: dict,
            out: Path, device: str, echo: Callable[[str], None]) -> Path:
    """Train and evaluate one NCF variant and write its sealed result JSON."""
    dev = torch.device(device)
    dim = resolve_config(spec.cell()).backbone.channels
    init = None
    if reps is not None:
        if reps.shape != (data.n_users, dim):
            raise ResultError(f"representation of shape {reps.shape}, expected {(data.n_users, dim)}")
        init = scale_representation(reps, data.test_users, cfg.init_std)
    echo(f"  ncf {spec.dataset} {spec.source} seed {spec.seed}")
    t0 = time.perf_counter()
    model, log = train_ncf(data, cfg, dim, spec.seed, init, dev, echo)
    train_s = time.perf_counter() - t0
    groups = evaluate_ncf(model, data, cfg, dev)
    echo("    " + "  ".join(f"{g} (n={m['n_users']}) HR@10 {m['hr@10']:.4f}" for g, m in groups.items()
                           if g in ("warm", "cold") and m["n_users"]))
    result = {
        "kind": KIND, "spec": spec.as_dict(), "spec_hash": spec.hash, "source": spec.source, "env": _env(dev),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": provenance["dataset"], "config": {"ncf": dataclasses.asdict(cfg), "dim": dim},
        "data": data.stats(), "groups": groups, "fit": log, "representation": provenance.get("representation"),
        "timings": {"train_s": train_s, "total_s": time.perf_counter() - t0},
    }
    path = out / spec.relpath()
    save_result(path, result)
    return path


@dataclass(frozen=True)
class _Study:
    """What every seed of one cold-start study shares (picklable: a worker process runs a seed)."""

    dataset: str
    methods: tuple[str, ...]
    snapshots: tuple[str, ...]
    out: Path
    data_dir: Path | None
    preset: str | None
    holdout: str
    view: str
    cell_overrides: tuple[tuple[str, str], ...]
    ncf_overrides: tuple[tuple[str, str], ...]  # as recorded in each result's spec
    cfg: NCFConfig  # resolved from them
    random_init: bool
    device: str
    force: bool
    task: Task  # the held-out task, NCF's data
    n_users: int
    dataset_info: dict  # its "stream_fingerprint": the stream without the held-out task

    def spec(self, init: str, after: str | None, seed: int) -> ColdStartSpec:
        own = {k: v for k, v in self.cell_overrides if k.split(".", 1)[0] in (*SHARED_SECTIONS, init)}
        return ColdStartSpec(self.dataset, init, after, self.view if after else "latest", self.holdout, seed,
                             self.preset, tuple(sorted(own.items())), self.ncf_overrides)

    def done(self, spec: ColdStartSpec, echo: Callable[[str], None]) -> Path | None:
        """The path of `spec`'s valid result, None when it must be computed."""
        p = self.out / spec.relpath()
        if self.force or not p.exists():
            return None
        try:
            r = load_result(p, spec.hash)
        except ResultError as e:
            echo(f"  {e}; recomputing")
            return None
        if r["dataset"]["fingerprint"] != self.dataset_info["fingerprint"]:
            raise ResultError(f"{p} was computed on different data; use another --out")
        return p


def _study_seed(study: _Study, seed: int, echo: Callable[[str], None], threads: int | None = None) -> list[Path]:
    """One seed of the study: NCF from random init, then from each method's representations (the
    continual cell on the shortened stream is run first where its snapshots are missing)."""
    if threads is not None:  # a worker process: the same thread count as the serial study
        torch.set_num_threads(threads)
    cfg = study.cfg
    data = ncf_data(study.task, study.n_users, cfg, seed)
    runs = runs_dir(study.out, study.dataset, study.holdout)
    paths: list[Path] = []
    if study.random_init:
        spec = study.spec("random", None, seed)
        paths.append(study.done(spec, echo) or run_one(spec, data, cfg, None, {"dataset": study.dataset_info},
                                                       study.out, study.device, echo))
    for method in study.methods:
        specs = [study.spec(method, k, seed) for k in study.snapshots]
        todo = [s for s in specs if study.done(s, echo) is None]
        paths += [study.out / s.relpath() for s in specs if s not in todo]
        if not todo:
            continue
        cell = todo[0].cell()
        reps = capture_representations(cell, study.holdout, runs, [s.after for s in todo], study.view,
                                       study.data_dir, study.device, echo, study.force)
        try:
            cell_result = load_result(runs / cell.relpath())
        except ResultError:  # representations reused after the cell's result was removed
            cell_result = {"final": None, "R": None, "tasks": []}
        for s in todo:
            vectors = load_representation(reps[s.after], cell, study.dataset_info["stream_fingerprint"], s.after,
                                          study.view)
            prov = {"dataset": study.dataset_info, "representation": {
                "cell": cell.as_dict(), "cell_hash": cell.hash, "after": s.after, "view": study.view,
                "file": str(reps[s.after].relative_to(study.out)), "cell_final": cell_result["final"],
                "cell_R": cell_result["R"], "cell_tasks": [t["name"] for t in cell_result["tasks"]]}}
            paths.append(run_one(s, data, cfg, vectors, prov, study.out, study.device, echo))
    return paths


def run_cold_start(dataset: str, methods: Sequence[str] = DEFAULT_METHODS, seeds: Sequence[int] = (0,),
                   snapshots: Sequence[str] | None = None, out: Path = Path("runs"), data_dir: Path | None = None,
                   preset: str | None = None, *, holdout: str = "T3", view: str = "latest",
                   overrides: Mapping[str, str] | None = None, random_init: bool = True, device: str = "cpu",
                   echo: Callable[[str], None] = print, force: bool = False, jobs: int = 1) -> list[Path]:
    """The cold-start study: per seed, NCF with random user init and with each method's
    representation after each snapshot task; returns the result paths (existing valid results
    are reused unless `force`). `overrides`: `ncf.<key>` for the NCF protocol, the rest
    (`train.`, `backbone.`, `split.`, `<method>.`) for the continual cells. `jobs` > 1 runs
    that many seeds at once, each in its own process with this process's torch thread count
    (the numbers do not depend on it: every draw is seeded); their lines go to stdout."""
    out = Path(out)
    ncf_ov, cell_ov = _split_overrides(overrides or {})
    cfg = ncf_config(ncf_ov)  # bad ncf.<key> values fail here, before any work
    full = build_stream(CellSpec("pop", dataset, preset=preset), data_dir)
    if full.time_aware:  # a snapshot's vocabulary would not cover the held-out task's later items
        raise ConfigError(f"the cold-start study needs a static stream; {dataset!r} is time-aware (its rows hold items "
                          "that enter the vocabulary task by task)")
    task = full.task(holdout)
    if task.kind != "recommend":
        raise ConfigError(f"held-out task {holdout!r} is a {task.kind} task; NCF needs a recommend task")
    short = full.without(holdout)
    snaps = resolve_snapshots(short, snapshots)
    if view != "latest" and view not in short.task_names:
        raise ConfigError(f"view {view!r} is not a task of the stream without {holdout}: {short.task_names}")
    dataset_info = {"name": dataset, "fingerprint": full.fingerprint(), "stream_fingerprint": short.fingerprint(),
                    "holdout": {"name": holdout, "n_labels": task.n_labels, "users": task.targets.n_users,
                                "pairs": task.targets.n_pairs, "description": task.description},
                    "stream_tasks": short.task_names, "n_users": full.n_users, "meta": dict(full.meta)}
    study = _Study(dataset, tuple(methods), tuple(snaps), out, data_dir, preset, holdout, view,
                   tuple(sorted(cell_ov.items())), tuple(sorted(ncf_ov.items())), cfg, random_init, device, force,
                   task, full.n_users, dataset_info)
    if jobs > 1 and len(seeds) > 1:
        from joblib import Parallel, delayed

        threads = torch.get_num_threads()
        per_seed = Parallel(n_jobs=min(jobs, len(seeds)))(delayed(_study_seed)(study, seed, print, threads)
                                                          for seed in seeds)
    else:
        per_seed = [_study_seed(study, seed, echo) for seed in seeds]
    return [p for paths in per_seed for p in paths]


# ----------------------------------------------------------------------------------- reading results
def load_cold_start(root: Path) -> list[dict]:
    """Every valid cold-start result under `root` (other results and damaged files skipped)."""
    return [r for _, r in iter_results(Path(root)) if isinstance(r, dict) and is_cold_start(r)]
