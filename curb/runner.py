"""Cells: one (method, dataset, order, noise, seed, config) -> one result JSON.

`run_cell` builds the stream, lets the method learn task after task, fills R[j][i] after each
task j for every seen task i, checkpoints after each task (so a killed cell resumes at the next
task with the same final numbers) and writes the sealed result. A T1 model pre-trained for one
method is cached under `<out>/.cache/t1/` and reused by every method that starts from the same
pre-trained T1 model. Per-cell bookkeeping (checkpoint, running marker, failure record, log)
lives in `<out>/.cells/<spec hash>.*` (see `CellFiles`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import platform
import random
import socket
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import __version__
from .backbone import PlainModel
from .config import ConfigError, RunConfig, resolve, tuned_values
from .data import get_dataset
from .evaluator import Evaluator, evaluate_data, task_info
from .locks import FileLock, LockBusy, describe
from .method import Method, Setup, TaskData, TaskInfo, get_method
from .metrics import transfer
from .records import SpecNames
from .results import ResultError, canonical, load_result, load_sealed, pack_per_user, save_result, save_sealed
from .streams import TaskStream
from .text import prepare as prepare_item_init
from .training import FitLog, Selection, fit


@dataclass(frozen=True)
class CellSpec(SpecNames):
    """Everything that determines a cell's numbers (data location and device excluded)."""

    method: str
    dataset: str
    order: str = "default"  # default | reversed | comma list of task names or 1-based positions
    noise: int | None = None  # insert the noise task at this 0-based index (after `noise` tasks)
    seed: int = 0
    preset: str | None = None
    overrides: tuple[tuple[str, str], ...] = ()

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["overrides"] = dict(self.overrides)
        return d

    @property
    def hash(self) -> str:
        return hashlib.sha256(canonical(self.as_dict()).encode()).hexdigest()[:12]

    def relpath(self) -> Path:
        return Path(self.dataset) / self.method / self.order_tag / f"seed{self.seed}-{self.hash}.json"

    @staticmethod
    def from_dict(d: object) -> "CellSpec":
        """The inverse of `as_dict`, checking every field (plan files are user-editable)."""
        if not isinstance(d, dict):
            raise ConfigError(f"a cell spec must be a JSON object, got {type(d).__name__}")
        fields = {f.name for f in dataclasses.fields(CellSpec)}
        unknown = set(d) - fields - {"hash"}
        if unknown:
            raise ConfigError(f"unknown cell spec key(s) {sorted(unknown)}; valid keys: {sorted(fields)}")
        for k in ("method", "dataset"):
            if not isinstance(d.get(k), str) or not d[k]:
                raise ConfigError(f"cell spec needs a non-empty string {k!r}")
        checks = {"order": (str,), "noise": (int, type(None)), "seed": (int,), "preset": (str, type(None)),
                  "overrides": (dict,)}
        for k, types in checks.items():
            if k in d and (not isinstance(d[k], types) or isinstance(d[k], bool)):
                raise ConfigError(f"cell spec {k!r} has the wrong type ({type(d[k]).__name__})")
        ov = d.get("overrides", {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in ov.items()):
            raise ConfigError("cell spec 'overrides' must map strings to strings")
        if not 0 <= d.get("seed", 0) < 2**32:
            raise ConfigError(f"cell spec seed must lie in 0..2**32-1, got {d['seed']}")
        spec = CellSpec(**{k: v for k, v in d.items() if k not in ("hash", "overrides")},
                        overrides=tuple(sorted(ov.items())))
        if "hash" in d and d["hash"] != spec.hash:
            raise ConfigError(f"cell spec hash {d['hash']!r} does not match its fields ({spec.hash}): edited by hand?")
        return spec


@dataclass(frozen=True)
class CellFiles:
    """A cell's bookkeeping files, keyed by its spec hash, under `<out>/.cells/`."""

    checkpoint: Path  # sealed state after the last finished task; removed once the result exists
    running: Path  # JSON marker (host, pid, progress) while a process works on the cell
    failed: Path  # JSON failure record (error, traceback, spec) of the last failed attempt
    log: Path  # progress lines of every attempt
    lock: Path  # flock held by the process computing the cell: no cell is computed by two at once

    @staticmethod
    def of(out: Path, spec_hash: str) -> "CellFiles":
        d = Path(out) / ".cells"
        return CellFiles(d / f"{spec_hash}.ckpt", d / f"{spec_hash}.running.json", d / f"{spec_hash}.failed.json",
                         d / f"{spec_hash}.log", d / f"{spec_hash}.lock")

    def phase(self, key: str) -> Path:
        """The epoch checkpoint of one training phase (sealed; the key is in its header)."""
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        return self.checkpoint.with_name(f"{self.checkpoint.stem}.phase-{digest}.ckpt")

    def clear_phases(self) -> None:
        for p in self.checkpoint.parent.glob(f"{self.checkpoint.stem}.phase-*.ckpt"):
            p.unlink(missing_ok=True)


class CellInterrupted(KeyboardInterrupt):
    """A stop was requested (SIGINT/SIGTERM or a stop file); the cell resumes from its checkpoint."""


def build_stream(spec: CellSpec, data_dir: Path | None) -> TaskStream:
    stream = get_dataset(spec.dataset).stream(data_dir)
    if spec.order == "reversed":
        stream = stream.reversed()
    elif spec.order != "default":
        stream = stream.reorder([k.strip() for k in spec.order.split(",")])
    if spec.noise is not None:
        stream = stream.with_noise_task(spec.noise, seed=spec.seed)
    return stream


def resolve_config(spec: CellSpec) -> RunConfig:
    """defaults < dataset recipe < preset < tuned file (`tuned=<file>@<sha>`) < the spec's own overrides."""
    cls = get_method(spec.method)
    overrides = dict(spec.overrides)
    tag = overrides.pop("tuned", None)
    if tag is not None:
        overrides = {**tuned_values(tag, cls.name), **overrides}
    cfg = resolve(cls.name, cls.Config(), get_dataset(spec.dataset).defaults, spec.preset, overrides)
    return dataclasses.replace(cfg, tuned=tag)


class Fitter:
    """The fitting function handed to methods: the shared loop with this cell's protocol.

    Methods call `fit(method, task, train, val)` (optionally `phase=`, `max_epochs=`,
    `batch_size=`); every phase's log is kept for the result file. Every phase is checkpointed
    after each validation round in its own file (`CellFiles.phase`), so a stop loses at most one
    round; the files of a task are removed once the task's own checkpoint exists.
    """

    def __init__(self, cfg: RunConfig, echo: Callable[[str], None], should_stop: Callable[[], bool] | None = None,
                 files: "CellFiles | None" = None, progress_meta: dict | None = None,
                 device: torch.device = torch.device("cpu")):
        # A plain function, not the evaluator's bound method: nothing here leads to test labels.
        self.validate = functools.partial(evaluate_data, eval_batch=cfg.train.eval_batch,
                                          with_loss=cfg.train.select == "loss")
        self.train_cfg = cfg.train
        self.logs: list[dict] = []
        self.resumed_at: list[str] = []  # where each resume started (a task, or a phase key), across attempts
        self.echo = echo
        self.should_stop = should_stop or (lambda: False)
        self.files, self.progress_meta, self.device = files, dict(progress_meta or {}), device
        self._calls: dict[str, int] = {}

    def selection(self, task: TaskInfo | None, max_epochs: int | None = None) -> Selection:
        """The model-selection protocol of a phase (`task` None: a joint phase of later tasks)."""
        t = self.train_cfg
        t1 = task is not None and task.kind == "next_item"
        return Selection(select=t.select, max_rounds=max_epochs or (t.t1_epochs if t1 else t.epochs),
                         patience=t.patience, round_steps=t.round_steps)

    def phase_progress(self, method: Method, task: str, phase: str) -> tuple[Callable[[dict], None], dict | None]:
        """(checkpoint function, saved state or None) of the next phase `phase` of `task`.

        Phases are keyed by task, phase name, method and how many such phases this process has
        run: a resumed cell replays its task's phases in the same order, so the keys match."""
        key = f"{task}/{phase}/{method.name}"
        n = self._calls[key] = self._calls.get(key, -1) + 1
        meta = {**self.progress_meta, "kind": "phase-progress", "phase": f"{key}#{n}"}
        path = self.files.phase(meta["phase"]) if self.files is not None else None

        def checkpoint(state: dict) -> None:
            if path is not None:
                save_sealed(path, {**state, "rng": _rng_state(self.device), "logs": self.logs,
                                   "resumed_at": self.resumed_at}, meta)
            if self.should_stop():
                raise CellInterrupted(f"stop requested (the {task} {phase} phase resumes after its last round)")

        if path is None or not path.exists():
            return checkpoint, None
        try:
            got, blob = load_sealed(path)
        except ResultError as e:
            self.echo(f"  {e}; restarting the phase")
            return checkpoint, None
        if got != meta:
            self.echo(f"  {path}: progress of another cell or format; restarting the phase")
            return checkpoint, None
        _set_rng_state(blob.pop("rng"), self.device)
        self.logs = blob.pop("logs")
        self.resumed_at = [*blob.pop("resumed_at"), task]
        self.echo(f"  resuming {task} {phase} after round {len(blob['log']['epochs'])} from {path}")
        return checkpoint, blob

    def _step_done(self, bar: "_StepBar", done: int, total: int) -> None:
        """After every optimiser step: a stop request interrupts training here."""
        bar.update(done, total)
        if self.should_stop():
            bar.close()
            raise CellInterrupted("stop requested")

    def __call__(self, method: Method, task: TaskInfo, train: TaskData, val: TaskData, *, phase: str = "train",
                 max_epochs: int | None = None, batch_size: int | None = None) -> FitLog:
        t = self.train_cfg
        t1 = task.kind == "next_item"
        bar = _StepBar(f"{method.name} {task.name} {phase}")
        checkpoint, resume = self.phase_progress(method, task.name, phase)
        log = fit(method, task, train, val, self.validate, sel=self.selection(task, max_epochs),
                  batch_size=batch_size or (t.t1_batch if t1 else t.batch), pairs_per_user=t.pairs_per_user,
                  phase=phase, progress=lambda msg: (bar.close(), self.echo(f"  [{method.name}] {msg}")),
                  on_step=functools.partial(self._step_done, bar), checkpoint=checkpoint, resume=resume)
        bar.close()
        self.logs.append(log.as_dict())
        return log


class _StepBar:
    """A tqdm bar over the steps of one epoch, shown only on an interactive terminal."""

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def update(self, done: int, total: int) -> None:
        if not sys.stderr.isatty():
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, leave=False, unit="step")
        self.bar.update(done - self.bar.n)
        if done == total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def t1_cache_name(stream: TaskStream, cfg: RunConfig, seed: int, device: torch.device) -> str:
    """The file name of a shared T1 model: a digest of everything it depends on (sequences, T1
    task, split, backbone with its text-init rows, T1 training protocol including a sampled
    softmax, the precision and compilation, seed, device type and, on CPU, the torch thread count,
    since float reductions differ with it) and nothing else, so all methods and orders share one entry."""
    t1 = stream.tasks[0]
    train_key = {k: v for k, v in dataclasses.asdict(cfg.train).items()
                 if k in ("t1_lr", "t1_batch", "t1_epochs", "patience", "ignore_pad", "select", "round_steps")}
    if cfg.train.t1_negatives is not None:  # only when set: full-softmax keys match those written before the knob
        train_key["t1_negatives"] = cfg.train.t1_negatives
    if cfg.train.precision != "fp32":  # bf16 trains another model (fp32 keys match those written before the knob)
        train_key["precision"] = cfg.train.precision
    if cfg.train.compile:  # compiled kernels round differently
        train_key["compile"] = True
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(stream.sequences).tobytes())
    h.update(canonical({"n_items": stream.vocab_at(0), "task": t1.name, "split": dataclasses.asdict(cfg.split),
                        "backbone": cfg.backbone.model_key(), "seed": seed, "train": train_key,
                        "device": device.type, "threads": torch.get_num_threads() if device.type == "cpu" else None,
                        "kernel_layout": "matmul",  # the state's conv kernels are [k * in, out] (CausalConv)
                        }).encode())
    return f"t1-{h.hexdigest()[:16]}.pt"


def _t1_provider(stream: TaskStream, train: TaskData, val: TaskData, cfg: RunConfig, seed: int,
                 device: torch.device, cache_dir: Path, fitter: Fitter) -> Callable[[], PlainModel]:
    """Returns a function giving the plain pre-trained T1 model (trained once, then cached under
    `t1_cache_name`; a lock beside the file makes concurrent cells of one seed train it once). The
    returned function closes over T1's train/val data only, never over the stream.
    """
    t1 = stream.tasks[0]
    info, n_items = task_info(t1), stream.vocab_at(0)
    path = cache_dir / t1_cache_name(stream, cfg, seed, device)

    def provide() -> PlainModel:
        lock = FileLock(path.with_suffix(".lock"), {"pid": os.getpid(), "host": socket.gethostname(),
                                                    "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                                    "command": f"pre-training {path.name}"})
        try:
            lock.acquire(wait=False)
        except LockBusy as e:  # another cell of this seed trains the same model: wait, then load it
            fitter.echo(f"  waiting for {describe(e.holder)}: the same T1 model is being pre-trained")
            lock.acquire()
        try:
            blob = _load_or_train()
        finally:
            lock.release()
        model = PlainModel(n_items, cfg.backbone).to(device)
        model.add_head(info.name, info.n_labels)
        model.load_state_dict(blob["state"])
        return model

    def _load_or_train() -> dict:
        blob = None
        if path.exists():
            try:
                _, blob = load_sealed(path)
                fitter.logs.append({**blob["fit"], "phase": "pretrained (cached)"})
            except (ResultError, KeyError, TypeError) as e:  # a damaged cache entry is rebuilt, never used
                fitter.echo(f"  ignoring damaged T1 cache: {e}")
                blob = None
        if blob is None:
            from curb.methods.sinmo import SinMo

            cuda = [torch.cuda.current_device() if device.index is None else device.index] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(seed)
                setup = Setup(n_items, train.inputs.shape[1], cfg.backbone, cfg.train, SinMo.Config(),
                              device, seed, pretrained_t1=None)
                plain = SinMo(setup)
                plain.learn_task(info, train, val, fitter)
                blob = {"state": {k: v.cpu() for k, v in plain.models[info.name].state_dict().items()},
                        "fit": fitter.logs[-1]}
            save_sealed(path, blob, {"kind": "t1-cache", "task": info.name})
        return blob

    return provide


def _cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` knows: leaderboard rows say
    which hardware produced them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


@functools.cache
def source_digest() -> str:
    """12 hex digits of SHA-256 over the source of the packages that compute a cell (`curb`,
    `curb.methods`, `curb.datasets`: every .py file, by relative path and bytes). A result records it, so a
    study that spans code changes (a long sweep run from a frozen checkout, say) can show which
    code produced which cell; plugin methods living elsewhere are not covered."""
    import curb.datasets
    import curb.methods

    h = hashlib.sha256()
    for pkg in (sys.modules[__package__], curb.methods, curb.datasets):
        root = Path(pkg.__file__).parent
        for f in sorted(root.rglob("*.py")):
            h.update(f"{pkg.__name__}/{f.relative_to(root).as_posix()}\0".encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def _env(device: torch.device) -> dict:
    return {
        "curb": __version__, "code": source_digest(), "torch": torch.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "machine": platform.machine(), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model(),
        "threads": torch.get_num_threads(),
        # the vector instructions CPU kernels use: two "AMD EPYC" machines can differ in it, and float
        # reductions (hence the numbers, docs/scaling.md "Determinism") with it
        **({"cpu_capability": torch.backends.cpu.get_cpu_capability()} if device.type == "cpu" else {}),
    }


def find_sinmo_diag(out: Path, spec: CellSpec, task_names: list[str], fingerprint: str | None = None
                    ) -> list[float | None] | None:
    """R(Ti, Ti) of the matching SinMo cell (same dataset, data, seed, preset and shared overrides;
    a method's own overrides, e.g. teracon.sampling, do not change SinMo), if run."""
    if spec.method == "sinmo":
        return None
    for order, noise in ((spec.order, spec.noise), ("default", None)):
        ref = dataclasses.replace(spec, method="sinmo", order=order, noise=noise, overrides=spec.shared_overrides)
        p = out / ref.relpath()
        try:
            r = load_result(p, ref.hash)
        except ResultError:
            continue
        if fingerprint is not None and r["dataset"].get("base_fingerprint") != fingerprint:
            continue
        diag = {t["name"]: r["R"][i][i] for i, t in enumerate(r["tasks"])}
        return [diag.get(n) for n in task_names]
    return None


# 2: per-user test scores and per-phase epoch checkpoints; 3: conv kernels stored as [k * in, out]
CHECKPOINT_FORMAT = 3


def _rng_state(dev: torch.device) -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None}


def _set_rng_state(state: dict, dev: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if dev.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], dev)


def load_checkpoint(path: Path, spec: CellSpec, fingerprint: str, names: list[str]) -> dict:
    """A verified checkpoint of exactly this cell (spec, data, task order); ResultError otherwise."""
    meta, state = load_sealed(path)
    want = {"format": CHECKPOINT_FORMAT, "spec_hash": spec.hash, "fingerprint": fingerprint, "tasks": names}
    for k, v in want.items():
        if meta.get(k) != v:
            raise ResultError(f"{path}: checkpoint of another cell, stream or format ({k} differs)")
    if not isinstance(state, dict) or not 1 <= state.get("next_task", 0) <= len(names):
        raise ResultError(f"{path}: checkpoint has no valid task position")
    return state


# The training and evaluation protocol's version, recorded in every result: results of another
# version are never reused (2: validation-CE selection, rounds, T1 by patience, docs/protocol.md §4).
PROTOCOL = 2


def config_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two resolved configs (a result written under
    other defaults must not pass for today's). Keys the old config lacks are knobs added since,
    whose defaults keep the earlier behaviour; they are not differences."""
    out = []
    for k in sorted(set(old) & set(new)):
        a, b = old[k], new[k]
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{prefix}{k}.")
        elif (list(a) if isinstance(a, tuple) else a) != (list(b) if isinstance(b, tuple) else b):
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def per_user_block(users: dict[str, dict]) -> dict:
    """The result file's per-user test scores (`results.pack_per_user` per task): what the paired
    statistics of docs/metrics.md resample."""
    return {name: pack_per_user(u["scores"].metric, u["scores"].users, u["scores"].counts, u["final"], u.get("diag"))
            for name, u in users.items() if "scores" in u}


def cell_transfer(spec: CellSpec, out: Path, R: list[list[float | None]], names: list[str], base_fingerprint: str,
                  joint: bool) -> dict | None:
    """BWT/FWT of a cell's R matrix; FWT against the matching SinMo cell in `out` (None for a joint method)."""
    if joint:
        return None
    tr = transfer(R, find_sinmo_diag(out, spec, names, base_fingerprint))
    if spec.method == "sinmo":
        tr["fwt"] = [None] + [0.0] * (len(names) - 1)
    return tr


def find_twin(folder: Path, spec: CellSpec, fingerprint: str, device: torch.device) -> tuple[Path, dict] | None:
    """A finished result in `folder` that is already this cell's computation under another name:
    same method, data (fingerprint), seed, order, noise, preset, protocol, device type and torch
    thread count, and the same resolved configuration apart from the `tuned` tag that named it.
    A tuning trial and the tuned grid's cell of its seed are such twins (the tuned file records
    the trial's own override strings, so both resolve to one configuration)."""
    want = {**resolve_config(spec).as_dict(), "tuned": None}
    threads = torch.get_num_threads() if device.type == "cpu" else None
    for p in sorted((Path(folder) / spec.relpath().parent).glob(f"seed{spec.seed}-*.json")):
        try:
            r = load_result(p)
        except ResultError:
            continue
        same_spec = all(r["spec"].get(k) == getattr(spec, k) for k in ("method", "dataset", "order", "noise", "seed",
                                                                         "preset"))
        env = r.get("env", {})
        if (same_spec and r.get("protocol") == PROTOCOL and r["dataset"]["fingerprint"] == fingerprint
                and env.get("device") == device.type and (threads is None or env.get("threads") == threads)
                and not config_changes({**r["config"], "tuned": None}, want)):
            return p, r
    return None


def adopt_twin(spec: CellSpec, out: Path, twin: tuple[Path, dict], joint: bool) -> dict:
    """The twin's result as this cell's: its numbers, logs, timings and environment unchanged, the
    spec and `tuned` tag this cell's, transfer re-derived against this folder's SinMo cell, and an
    `adopted` record naming the source file (relative to `out`) and its checksum."""
    src, r = twin
    names = [t["name"] for t in r["tasks"]]
    result = {k: v for k, v in r.items() if k not in ("checksum", "schema")}
    result.update(spec=spec.as_dict(), spec_hash=spec.hash, config={**r["config"], "tuned": dict(spec.overrides).get("tuned")},
                  transfer=cell_transfer(spec, out, r["R"], names, r["dataset"]["base_fingerprint"], joint),
                  adopted={"from": os.path.relpath(src, out), "spec_hash": r["spec_hash"], "checksum": r["checksum"],
                           "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return result


def run_cell(spec: CellSpec, out: Path, data_dir: Path | None = None, device: str = "cpu",
             echo: Callable[[str], None] = print, force: bool = False,
             should_stop: Callable[[], bool] | None = None,
             transform: Callable[[TaskStream], TaskStream] | None = None,
             on_task_end: Callable[[Method, str, TaskStream], None] | None = None,
             adopt: Path | None = None) -> dict:
    """Run one cell (or return its existing valid result) and write `<out>/<spec.relpath()>`.

    After every task the cell is checkpointed (method state, metrics so far, fit logs, timings,
    RNG states); a rerun continues after the last checkpointed task and gives the same numbers
    as an uninterrupted run. `should_stop` is polled after every optimiser step and after every
    checkpoint; when it returns True the cell raises `CellInterrupted` (the current task restarts
    on resume). `force` recomputes from scratch, ignoring any result or checkpoint.

    Extension points for studies built on cells (the cold-start study): `transform` changes the
    built stream (e.g. `lambda s: s.without("T3")`); the spec does not record it, so cells with
    different transforms need different `out` folders (the data fingerprint check refuses to mix
    them). `on_task_end(method, task, stream)` runs after each task is learned and scored, before
    its checkpoint (the joint path calls it once with the last task); it must not touch random
    state. Neither runs for a result that already exists, nor for tasks a resumed cell skips.

    `adopt`: a folder of finished results (e.g. `curb tune`'s); a result there that is this cell's
    computation (`find_twin`) is written as this cell's result (`adopt_twin`) instead of training.
    """
    out = Path(out)
    path = out / spec.relpath()
    files = CellFiles.of(out, spec.hash)
    stream = build_stream(spec, data_dir)  # cheap: built streams are cached
    if transform is not None:
        stream = transform(stream)
    fingerprint = stream.fingerprint()
    if path.exists() and not force:
        try:
            existing = load_result(path, spec.hash)  # damaged, incomplete or another cell's: never used
        except ResultError as e:
            echo(f"  {e}; recomputing")
        else:
            if existing["dataset"]["fingerprint"] != fingerprint:
                raise ResultError(
                    f"{path} was computed on different data (fingerprint {existing['dataset']['fingerprint']}, "
                    f"source {existing['dataset']['meta'].get('source', '?')}) than this run's "
                    f"({fingerprint}, source {stream.meta.get('source', '?')}); use another --out"
                )
            changed = config_changes(existing.get("config", {}), resolve_config(spec).as_dict())
            if existing.get("protocol") != PROTOCOL:
                changed = [f"protocol {existing.get('protocol', 1)} -> {PROTOCOL}", *changed]
            if changed:
                raise ResultError(
                    f"{path} was computed under another configuration (the defaults changed since: "
                    f"{', '.join(changed[:6])}{' ...' if len(changed) > 6 else ''}); use another --out"
                )
            return existing
    stop = should_stop or (lambda: False)
    dev = torch.device(device)
    cls = get_method(spec.method)
    twin = find_twin(adopt, spec, fingerprint, dev) if adopt is not None and not force else None
    if twin is not None:
        save_result(path, adopt_twin(spec, out, twin, cls.joint))
        files.checkpoint.unlink(missing_ok=True)
        files.clear_phases()
        echo(f"  adopted {twin[0]}: the same computation (method, data, seed, order and resolved configuration)")
        return load_result(path)
    if stream.time_aware and not cls.grows_items:
        raise ConfigError(f"method {spec.method!r} cannot run on the time-aware stream {spec.dataset!r}: items enter "
                          "its vocabulary task by task and the method does not grow its item embeddings "
                          "(Method.grow_items; docs/methods.md says which methods can)")
    cfg = resolve_config(spec)
    backbone, item_init = prepare_item_init(spec.dataset, data_dir, stream, cfg.backbone, echo)
    cfg = dataclasses.replace(cfg, backbone=backbone)  # every model of the cell is built from it
    evaluator = Evaluator(stream, cfg.split, cfg.train.eval_batch)
    fitter = Fitter(cfg, echo, stop, files=files, device=dev,
                    progress_meta={"format": CHECKPOINT_FORMAT, "spec_hash": spec.hash, "fingerprint": fingerprint})
    torch.manual_seed(spec.seed)
    np.random.seed(spec.seed)
    setup = Setup(stream.vocab_at(0), stream.sequences.shape[1], cfg.backbone, cfg.train, cfg.method, dev, spec.seed,
                  pretrained_t1=_t1_provider(stream, evaluator.train_data(stream.tasks[0].name),
                                             evaluator.val_data(stream.tasks[0].name), cfg, spec.seed, dev,
                                             out / ".cache" / "t1", fitter))
    method = cls(setup)
    names = stream.task_names
    m = len(names)
    metrics: list[list[dict | None]] = [[None] * m for _ in range(m)]
    timings: list[dict] = []
    users: dict[str, dict] = {}  # per task: per-user test sums right after it ("diag") and at the end ("final")
    start, spent = 0, 0.0
    if force:
        files.checkpoint.unlink(missing_ok=True)
        files.clear_phases()
    elif files.checkpoint.exists() and not cls.joint:
        try:
            ck = load_checkpoint(files.checkpoint, spec, fingerprint, names)
        except ResultError as e:
            echo(f"  {e}; restarting the cell from its first task")
            files.checkpoint.unlink(missing_ok=True)
        else:
            method.load_state_dict(ck["method"])
            metrics, fitter.logs, timings, users = ck["metrics"], ck["fits"], ck["timings"], ck["users"]
            start, spent = ck["next_task"], ck["elapsed_s"]
            fitter.resumed_at = [*ck["resumed_at"], names[start] if start < m else "end"]
            _set_rng_state(ck["rng"], dev)
            echo(f"  resuming after {names[start - 1]} ({start}/{m} tasks done) from {files.checkpoint}")
    t_start = time.perf_counter()
    echo(f"{spec.method} on {spec.dataset} order={spec.order_tag} seed={spec.seed}: tasks {' -> '.join(names)}")

    def evaluate_row(j: int, seen: range) -> float:
        t0 = time.perf_counter()
        for i in seen:
            metrics[j][i], scores = evaluator.test_users(method, names[i])
            if i == j and not cls.joint:
                users[names[i]] = {"diag": scores.sums}
            if j == m - 1:
                users.setdefault(names[i], {}).update(final=scores.sums, scores=scores)
        return time.perf_counter() - t0

    if start == m:  # stopped after the last checkpoint, before the result: the checkpoint keeps no
        evaluate_row(m - 1, range(m))  # per-user score vectors, so the final row is tested again
    elif cls.joint:  # one learning phase, checkpointed after every round (Fitter.phase_progress)
        later = names[1:]
        t0 = time.perf_counter()
        method.learn_joint([evaluator.info(n) for n in later], [evaluator.train_data(n) for n in later],
                           [evaluator.val_data(n) for n in later], fitter)
        train_s = time.perf_counter() - t0
        eval_s = evaluate_row(m - 1, range(1, m))
        timings.append({"task": "+".join(later), "train_s": train_s, "eval_s": eval_s})
        if on_task_end is not None:
            on_task_end(method, names[-1], stream)
    else:
        for j in range(start, m):
            name = names[j]
            t0 = time.perf_counter()
            method.extend_items(stream.vocab_at(j))  # time-aware streams: this task's new items enter
            method.learn_task(evaluator.info(name), evaluator.train_data(name), evaluator.val_data(name), fitter)
            train_s = time.perf_counter() - t0
            eval_s = evaluate_row(j, range(j + 1))
            timings.append({"task": name, "train_s": train_s, "eval_s": eval_s})
            row = "  ".join(f"{names[i]} {metrics[j][i][evaluator.info(names[i]).metric]:.4f}" for i in range(j + 1))
            echo(f"  [{spec.method}] after {name}: {row}")
            if on_task_end is not None:
                on_task_end(method, name, stream)
            save_sealed(files.checkpoint, {
                "next_task": j + 1, "method": method.state_dict(), "metrics": metrics, "fits": fitter.logs,
                "users": {t: {k: v for k, v in u.items() if k != "scores"} for t, u in users.items()},
                "timings": timings, "elapsed_s": spent + time.perf_counter() - t_start, "resumed_at": fitter.resumed_at,
                "rng": _rng_state(dev),
            }, {"format": CHECKPOINT_FORMAT, "spec_hash": spec.hash, "fingerprint": fingerprint, "tasks": names,
                "next_task": j + 1, "spec": spec.as_dict()})
            files.clear_phases()
            if j + 1 < m and stop():
                raise CellInterrupted(f"stopped after {name}")

    R = [[None if metrics[j][i] is None else metrics[j][i][evaluator.info(names[i]).metric] for i in range(m)]
         for j in range(m)]
    # The final model on every task's validation part: what tuning may select on (never test).
    val_final = {n: evaluate_data(method, evaluator.info(n), evaluator.val_data(n), cfg.train.eval_batch)
                 for n in (names[1:] if cls.joint else names)}
    base_fingerprint = stream.fingerprint(skip=("noise",))
    tr = cell_transfer(spec, out, R, names, base_fingerprint, cls.joint)
    result = {
        "spec": spec.as_dict(), "spec_hash": spec.hash, "protocol": PROTOCOL, "env": _env(dev),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": {"name": spec.dataset, "fingerprint": fingerprint, "base_fingerprint": base_fingerprint, "n_users": stream.n_users,
                    "n_items": stream.n_items, "seq_len": int(stream.sequences.shape[1]), "meta": dict(stream.meta)},
        "config": cfg.as_dict(), "item_init": item_init,
        "tasks": [{"name": n, "kind": evaluator.info(n).kind, "metric": evaluator.info(n).metric,
                   "n_labels": evaluator.info(n).n_labels, "split": evaluator.split_sizes()[n]} for n in names],
        "R": R, "metrics": metrics, "per_user": per_user_block(users), "val_final": val_final,
        "final": {names[i]: R[m - 1][i] for i in range(m)},
        "transfer": tr, "fits": fitter.logs, "method_report": method.report(),
        "timings": {"tasks": timings, "total_s": spent + time.perf_counter() - t_start},
        "resumed_at": fitter.resumed_at,
    }
    save_result(path, result)
    files.checkpoint.unlink(missing_ok=True)
    files.clear_phases()
    return load_result(path)
