"""Grids of cells: plans (JSONL), parallel and distributed execution, failure records, status.

A grid is a list of `CellSpec`s. `run_grid` runs them in this process (`jobs=1`), in `jobs`
local worker processes (joblib's loky backend), or on a Dask cluster (one Dask task per cell).
Only small job descriptions travel to the workers (spec dict, output folder, data folder,
device); every cell reads its data and writes its result, checkpoint, log and failure record
under the shared output folder itself, so the parent only collects outcomes.

Concurrency: the process running a grid holds the folder's lock (`run_lock`), each cell is
computed under its own lock, and plan merges take turns (docs/scaling.md lists the guarantees).

Determinism: a cell's numbers depend on its spec, the device and its torch thread count, never
on `jobs` or on scheduling. CPU float reductions differ with the thread count, so every cell
runs with a fixed `threads` (default 1) rather than one derived from `jobs`.

FWT needs SinMo's R(Ti, Ti): SinMo cells run as a first phase and all other cells after it, so
every cell finds its SinMo reference (when the grid or the folder has it) whatever `jobs` is.
Results are sealed once and never rewritten.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from concurrent.futures import BrokenExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .config import ConfigError
from .errors import USER_ERRORS, CurbError
from .locks import FileLock, LockBusy, describe
from .results import (MisplacedResultError, ResultError, atomic_write_bytes, load_result, read_sealed_meta,
                      remove_stale_temp_files)
from .runner import CellFiles, CellSpec, resolve_config

PLAN_NAME = "plan.jsonl"
RUN_LOCK = ".run.lock"  # held by the one process running the folder's grid
PLAN_LOCK = ".plan.lock"  # held while plan.jsonl is read, merged and rewritten


class GridError(CurbError, ValueError):
    """A grid cannot start (bad plan file, data missing where cells run, bad backend options)."""


# ---------------------------------------------------------------------------------- plans
def plan_lines(specs: Iterable[CellSpec]) -> str:
    return "".join(json.dumps({**s.as_dict(), "hash": s.hash}, sort_keys=True) + "\n" for s in specs)


def read_plan(path: Path) -> list[CellSpec]:
    """Cell specs of a JSONL plan; a bad line is reported with its number."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise GridError(f"cannot read plan {path}: {e}") from None
    specs = []
    for k, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            specs.append(CellSpec.from_dict(json.loads(line)))
        except (json.JSONDecodeError, ConfigError, TypeError) as e:
            raise GridError(f"{path}:{k}: bad cell spec: {e}") from None
    return specs


def record_plan(out: Path, specs: list[CellSpec]) -> tuple[Path, int]:
    """Merge `specs` into `<out>/plan.jsonl` (the cells `curb status` lists); returns (path, new).

    The read-merge-write runs under `<out>/.plan.lock`, so concurrent `curb plan` and `curb run`
    on one folder each add their cells (without it, the last writer dropped the others' lines)."""
    path = Path(out) / PLAN_NAME
    with FileLock(Path(out) / PLAN_LOCK):
        known = read_plan(path) if path.exists() else []
        seen = {s.hash for s in known}
        new = [s for s in dict.fromkeys(specs) if s.hash not in seen]
        if new or not path.exists():
            atomic_write_bytes(path, plan_lines([*known, *new]).encode())
    return path, len(new)


def prepare_out(out: Path) -> Path:
    """`--out` as an existing, writable folder (created when missing), or a GridError saying why not."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GridError(f"--out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GridError(f"--out {out}: cannot create the folder ({e.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise GridError(f"--out {out}: the folder is not writable")
    return out


@contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold the run folder `out` for this process (re-entrant). A second process running a grid on
    the same folder stops at once with a GridError naming the holder: no cell is computed twice."""
    lock = FileLock(Path(out) / RUN_LOCK, {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(),
                                             "command": shlex.join(sys.argv)[:300]})
    try:
        lock.acquire(wait=False)
    except LockBusy as e:
        raise GridError(f"{out} is being run by {describe(e.holder)}; one process runs a folder at a time: wait for "
                        "it to end (`curb status` lists its cells) or use another --out") from None
    try:
        yield
    finally:
        lock.release()


def phases(specs: list[CellSpec]) -> list[list[CellSpec]]:
    """SinMo cells first (they are every other cell's FWT reference), then the rest."""
    specs = list(dict.fromkeys(specs))
    first = [s for s in specs if s.method == "sinmo"]
    rest = [s for s in specs if s.method != "sinmo"]
    return [p for p in (first, rest) if p]


# ---------------------------------------------------------------------------------- stopping
class _Stop:
    """Process-wide stop request: a caught SIGINT/SIGTERM, or the grid's stop file."""

    signum: int | None = None
    file: Path | None = None
    _checked = 0.0
    _file_seen = False

    @classmethod
    def reset(cls, file: Path | None) -> None:
        cls.signum, cls.file, cls._checked, cls._file_seen = None, file, 0.0, False

    @classmethod
    def requested(cls) -> bool:
        if cls.signum is not None or cls._file_seen:
            return True
        now = time.monotonic()
        if cls.file is not None and now - cls._checked >= 1.0:  # a stat per second, not per step
            cls._checked = now
            cls._file_seen = cls.file.exists()
        return cls._file_seen


def _on_signal(signum, frame) -> None:
    if _Stop.signum is not None:  # a second signal: stop now (the last checkpoint stays valid)
        raise KeyboardInterrupt
    _Stop.signum = signum
    if _Stop.file is not None:
        try:
            _Stop.file.parent.mkdir(parents=True, exist_ok=True)
            _Stop.file.touch()
        except OSError:
            pass


@contextmanager
def stop_signals() -> Iterator[None]:
    """Turn SIGINT/SIGTERM into a stop request for the duration (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# ---------------------------------------------------------------------------------- one cell
@dataclass(frozen=True)
class Job:
    """What travels to a worker: a spec and paths (never data)."""

    spec: dict
    out: str
    data_dir: str | None
    device: str
    threads: int
    stop_file: str
    in_process: bool = False  # run in the calling process: print progress, parent owns signals
    force: bool = False
    adopt: str | None = None  # a folder of finished results whose twins of a cell are adopted (run_cell)


_CELL_LOCK = threading.Lock()  # one cell per process: torch/numpy RNGs and thread counts are global


def execute(job: Job) -> dict:
    """Run one cell; never raises for a cell's own failure. Returns a small outcome dict.

    A failing cell leaves `<hash>.failed.json` (error, traceback, spec, host); an interrupted
    one keeps its checkpoint. Both leave the other cells of the grid running. A cell whose lock
    another process holds (an orphaned worker of a lost scheduler still computing it) is not
    started: its outcome is "busy", naming that process.
    """
    spec = CellSpec.from_dict(job.spec)
    files = CellFiles.of(Path(job.out), spec.hash)
    outcome = {"hash": spec.hash, "label": cell_label(spec), "path": str(spec.relpath())}
    with _CELL_LOCK:
        if not job.in_process:
            _Stop.reset(Path(job.stop_file))
            if threading.current_thread() is threading.main_thread():  # loky workers; Dask uses threads
                for s in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(s, _on_signal)
        if _Stop.requested():
            return {**outcome, "status": "interrupted"}
        marker = {"host": socket.gethostname(), "pid": os.getpid(), "started": _now(), "spec": job.spec}
        claim = FileLock(files.lock, {k: marker[k] for k in ("host", "pid", "started")})
        try:
            claim.acquire(wait=False)
        except LockBusy as e:
            return {**outcome, "status": "busy", "error": f"being computed by {describe(e.holder)}"}
        try:
            return {**outcome, **_run_claimed(job, spec, files, marker)}
        finally:
            claim.release()


def _run_claimed(job: Job, spec: CellSpec, files: CellFiles, marker: dict) -> dict:
    """`execute`'s work once the cell's lock is held: marker, log, run_cell, failure record."""
    from .runner import run_cell

    _write_json(files.running, marker)
    t0 = time.perf_counter()
    with open(files.log, "a") as log, torch_threads(job.threads):
        def echo(msg: str) -> None:
            log.write(msg + "\n")
            log.flush()
            if job.in_process:
                print(msg, flush=True)

        echo(f"--- {marker['started']} attempt on {marker['host']} pid {marker['pid']}, {job.threads} thread(s), "
             f"{job.device}")
        try:
            run_cell(spec, Path(job.out), Path(job.data_dir) if job.data_dir else None, job.device, echo=echo,
                     force=job.force, should_stop=_Stop.requested, adopt=Path(job.adopt) if job.adopt else None)
        except KeyboardInterrupt:  # CellInterrupted, or a second signal
            echo("--- interrupted; resumes from its last checkpoint")
            return {"status": "interrupted", "seconds": time.perf_counter() - t0}
        except Exception as e:
            err = f"{type(e).__name__}: {e}"
            echo(f"--- failed: {err}")
            write_failure(job, err, traceback.format_exc(), marker["host"], marker["pid"])
            return {"status": "failed", "error": err, "seconds": time.perf_counter() - t0}
        finally:
            files.running.unlink(missing_ok=True)
    files.failed.unlink(missing_ok=True)
    return {"status": "done", "seconds": time.perf_counter() - t0}


def write_failure(job: Job, error: str, tb: str, host: str, pid: int | None) -> None:
    """The cell's failure record, written by the worker that saw the error or, when the worker
    died (Dask gave up on it), by the client."""
    spec = CellSpec.from_dict(job.spec)
    _write_json(CellFiles.of(Path(job.out), spec.hash).failed,
                {"spec": job.spec, "hash": spec.hash, "error": error, "traceback": tb, "host": host, "pid": pid,
                 "device": job.device, "time": _now()})


def check_stream(spec: CellSpec, data_dir: Path | None) -> None:
    """Raise the user error that would stop `spec`'s cell before training: data not found or
    malformed, order or noise position not fitting the stream, a split leaving a part empty."""
    from .evaluator import Evaluator
    from .runner import build_stream

    Evaluator(build_stream(spec, data_dir), resolve_config(spec).split)


def preflight(item: tuple[dict, str | None, str]) -> str | None:
    """`check_stream` (and CUDA) for one (spec, data folder, device), run where the cells run.
    Returns the error message or None (exceptions do not travel well between processes)."""
    import torch

    spec_d, data_dir, device = item
    if device.startswith("cuda") and not torch.cuda.is_available():
        return f"--device {device}: CUDA is not available on {socket.gethostname()}"
    try:
        check_stream(CellSpec.from_dict(spec_d), Path(data_dir) if data_dir else None)
    except USER_ERRORS as e:
        return str(e)
    return None


# ---------------------------------------------------------------------------------- grids
def overrides_text(spec: CellSpec) -> str:
    """A cell's overrides as `key=value,...` (a tuned file as `tuned=<its path>`), so the arms of a
    sweep and the trials of `curb tune` can be told apart in logs and `curb status`."""
    return ",".join(f"{k}={v.rpartition('@')[0] if k == 'tuned' else v}" for k, v in spec.overrides)


def cell_label(spec: CellSpec) -> str:
    """dataset/method/order/seed, then the cell's overrides in brackets."""
    label = f"{spec.dataset}/{spec.method}/{spec.order_tag}/seed{spec.seed}"
    return label + (f" [{overrides_text(spec)}]" if spec.overrides else "")


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` torch threads, then restore the previous count (numbers must not
    depend on whatever the process happened to be set to)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def auto_threads(jobs: int) -> int:
    """`--threads auto`: split the usable cores between the jobs."""
    return max(1, usable_cores() // max(jobs, 1))


Mapper = Callable[[Callable, list, Callable[[object, BaseException], object]], Iterator]


@contextmanager
def _mapper(backend: str, jobs: int, scheduler: str | None, device: str) -> Iterator[Mapper]:
    """A function map(fn, items, on_error) -> iterator of results (in completion order) for the
    backend. `on_error(item, exc)` turns a task that could not run to its end on a Dask cluster
    (its worker died, the scheduler gave up on it) into a result; the local backends never call it."""
    if backend == "local" and jobs == 1:
        yield lambda fn, items, on_error: (fn(x) for x in items)
        return
    if backend == "local":
        from joblib import Parallel, delayed

        def run(fn, items, on_error):
            return Parallel(n_jobs=jobs, backend="loky", batch_size=1, return_as="generator_unordered")(
                delayed(fn)(x) for x in items)

        yield run
        return
    try:
        from distributed import Client
        from distributed.security import Security
    except ImportError:
        raise GridError("--backend dask needs dask.distributed: pip install 'curb[dask]'") from None
    if not scheduler:
        raise GridError("--backend dask needs --scheduler ADDRESS (e.g. tcp://127.0.0.1:8786)")
    if scheduler.startswith("tls://") and Security().get_connection_args("client").get("ssl_context") is None:
        raise GridError(f"--scheduler {scheduler} uses TLS but this client has no certificate: set "
                        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE, DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT and "
                        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY (docs/scaling.md)")
    try:
        client = Client(scheduler, timeout=30, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as e:
        raise GridError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from None
    try:
        # One GPU per cell: only workers started with `--resources GPU=1` (one per GPU) take cells.
        resources = {"GPU": 1} if device.startswith("cuda") else None
        workers = client.scheduler_info()["workers"].values()
        if resources and not any(w.get("resources", {}).get("GPU") for w in workers):
            raise GridError(f"--device {device}: no worker of the cluster at {scheduler} offers the resource GPU=1; "
                            "start one worker per GPU with `dask worker ... --nthreads 1 --resources GPU=1` "
                            "(docs/scaling.md)")
        yield lambda fn, items, on_error: _dask_map(client, scheduler, resources, fn, items, on_error)
    finally:
        # After a lost scheduler, closing cancels the client's reconnection attempts, which Dask logs
        # as an error with a traceback; curb has already said what happened, in one line.
        log = logging.getLogger("distributed.client")
        level = log.level
        log.setLevel(logging.CRITICAL)
        try:
            client.close()
        finally:
            log.setLevel(level)


def _dask_map(client, scheduler: str, resources: dict | None, fn: Callable, items: list,
              on_error: Callable[[object, BaseException], object]) -> Iterator:
    """Every item as its own Dask task, results as they complete.

    Submitting tasks directly (rather than through joblib's Dask backend, which ran every cell in
    the client process when the cluster had one worker thread, and waited forever for a task the
    scheduler had given up on) makes each cell run on a worker and every task end: a task whose
    workers died `allowed-failures` + 1 times goes to `on_error`. The client polls twice a second,
    so a stop request (Ctrl-C, SIGTERM) is seen at once: queued tasks are cancelled, running cells
    stop at their next step through the stop file. A lost scheduler cancels every task: GridError.
    """
    futures = {client.submit(fn, x, pure=False, resources=resources): x for x in items}
    woken = threading.Event()
    for f in futures:
        f.add_done_callback(lambda _: woken.set())
    pending, withdrawn = set(futures), set()
    while pending:
        woken.wait(0.5)
        woken.clear()
        if _Stop.requested() and not withdrawn:
            running = {k for keys in client.processing().values() for k in keys}
            withdrawn = {f for f in pending if f.key not in running}
            client.cancel(list(withdrawn))
            pending -= withdrawn  # never started: reported as interrupted by the caller
        for f in [f for f in pending if f.done()]:
            pending.discard(f)
            if f.status == "finished":
                yield f.result()
            elif f.status == "cancelled":
                raise GridError(f"lost the connection to the Dask scheduler at {scheduler}; finished cells and "
                                "checkpoints are kept, cells still running on workers go on to their next checkpoint "
                                "(their cell locks keep a new run off them): rerun to continue")
            else:
                yield on_error(futures[f], f.exception())


def run_grid(specs: list[CellSpec], out: Path, *, data_dir: Path | None = None, device: str = "cpu",
             jobs: int = 1, threads: int = 1, backend: str = "local", scheduler: str | None = None,
             force: bool = False, adopt: Path | None = None, echo: Callable[[str], None] = print) -> list[dict]:
    """Run every cell (skipping valid results, adopting twins from `adopt`, resuming checkpoints);
    returns outcome dicts.

    Stops early (outcomes marked "interrupted") when SIGINT/SIGTERM arrives: running cells
    finish their current step and keep their last checkpoint; queued cells do not start. The
    folder is held for the whole run (`run_lock`): a second runner on it stops with a GridError.
    """
    if jobs < 1 or threads < 1:
        raise GridError(f"--jobs and --threads must be >= 1, got {jobs} and {threads}")
    if backend not in ("local", "dask"):
        raise GridError(f"unknown backend {backend!r}; valid backends: local, dask")
    for spec in specs:  # fail fast on bad config before any training
        resolve_config(spec)
    if adopt is not None and not Path(adopt).is_dir():
        raise GridError(f"--adopt {adopt}: no such folder (it should hold finished results, e.g. `curb tune`'s --out)")
    out = prepare_out(out).resolve()
    with run_lock(out):
        return _run_locked(specs, out, data_dir, device, jobs, threads, backend, scheduler, force, adopt, echo)


def _run_locked(specs: list[CellSpec], out: Path, data_dir: Path | None, device: str, jobs: int, threads: int,
                backend: str, scheduler: str | None, force: bool, adopt: Path | None,
                echo: Callable[[str], None]) -> list[dict]:
    if backend == "local" and jobs * threads > usable_cores():
        echo(f"warning: {jobs} jobs x {threads} threads exceed the {usable_cores()} usable cores (oversubscribed)")
    record_plan(out, specs)
    stale = remove_stale_temp_files(out)
    if stale:
        echo(f"removed {len(stale)} temporary file(s) left by killed writes (e.g. {stale[0]})")
    stop_file = out / ".cells" / f"stop-{uuid.uuid4().hex[:12]}"
    data = str(Path(data_dir).resolve()) if data_dir is not None else None
    adopt_dir = str(Path(adopt).resolve()) if adopt is not None else None
    make = lambda s: Job(s.as_dict(), str(out), data, device, threads, str(stop_file), backend == "local" and jobs == 1,
                         force, adopt_dir)
    _Stop.reset(stop_file)
    outcomes: list[dict] = []
    try:
        with stop_signals(), _mapper(backend, jobs, scheduler, device) as map_:
            checks = {(s.dataset, s.order, s.noise, s.preset, s.overrides): s for s in specs}
            for err in map_(preflight, [(s.as_dict(), data, device) for s in checks.values()], _preflight_died):
                if err:
                    raise GridError(err)
            total = len(specs)
            try:
                for phase in phases(specs):
                    if _Stop.requested():
                        break
                    for o in map_(execute, [make(s) for s in phase], _cell_died):
                        outcomes.append(o)
                        detail = f" ({o['seconds']:.1f}s)" if "seconds" in o else ""
                        if o["status"] in ("failed", "busy"):
                            detail += f": {o['error'].splitlines()[0] if o['error'] else ''}"
                        echo(f"[{len(outcomes)}/{total}] {o['status']:<11} {o['label']}{detail}")
            except BrokenExecutor as e:
                # A local worker process died: hit by the Ctrl-C meant for the grid before it could
                # catch it, or killed (out of memory, SIGKILL). Checkpoints and results stay valid.
                if not _Stop.requested():
                    raise GridError(f"a worker process died ({type(e).__name__}: {str(e).splitlines()[0]}); "
                                    "finished cells and checkpoints are kept: rerun to continue") from None
    finally:
        stop_file.unlink(missing_ok=True)
    done = {o["hash"] for o in outcomes}
    outcomes += [{"hash": s.hash, "label": cell_label(s), "path": str(s.relpath()), "status": "interrupted"}
                 for s in specs if s.hash not in done]
    return outcomes


def _preflight_died(item: tuple, e: BaseException) -> str:
    return f"the check of {item[0]['dataset']} could not run on the cluster: {type(e).__name__}: {e}"


def _cell_died(job: Job, e: BaseException) -> dict:
    """The outcome and failure record of a cell whose Dask task ended without running to its end."""
    spec = CellSpec.from_dict(job.spec)
    err = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
    if type(e).__name__ == "KilledWorker":
        err += " (the cell keeps its last checkpoint: rerun to resume it)"
    write_failure(job, err, "".join(traceback.format_exception(e)), socket.gethostname(), None)
    return {"hash": spec.hash, "label": cell_label(spec), "path": str(spec.relpath()), "status": "failed", "error": err}


def stop_signal() -> int | None:
    """The signal that stopped the last grid in this process, if any."""
    return _Stop.signum


# ---------------------------------------------------------------------------------- status
@dataclass
class CellStatus:
    state: str  # done | running | failed | pending
    spec: CellSpec
    detail: str


def status(out: Path) -> tuple[list[CellStatus], list[str]]:
    """Every cell known in `out` (plan, results, checkpoints, markers, failure records), and
    notes on files that name no cell (unreadable bookkeeping, results damaged beyond parsing)."""
    out = Path(out)
    specs: dict[str, CellSpec] = {}
    notes: list[str] = []
    if (out / PLAN_NAME).exists():
        specs.update({s.hash: s for s in read_plan(out / PLAN_NAME)})
    for p in sorted((out / ".cells").glob("*.json")) if (out / ".cells").is_dir() else []:
        try:
            s = CellSpec.from_dict(json.loads(p.read_text())["spec"])
            specs.setdefault(s.hash, s)
        except (OSError, ValueError, KeyError, TypeError):
            notes.append(f"unreadable bookkeeping file {p}")
    from .results import iter_results

    for p, r in iter_results(out):
        try:  # a damaged result still names its cell when its spec parses (listing only, never numbers)
            s = CellSpec.from_dict((r if isinstance(r, dict) else json.loads(p.read_text()))["spec"])
            specs.setdefault(s.hash, s)
        except (OSError, ValueError, KeyError, TypeError):
            notes.append(f"{p}: {r if isinstance(r, ResultError) else 'result without a valid spec'}")
    rows = [_cell_status(out, s) for s in specs.values()]
    order = {"running": 0, "failed": 1, "pending": 2, "done": 3}
    rows.sort(key=lambda c: (order[c.state], cell_label(c.spec)))
    return rows, notes


def _cell_status(out: Path, spec: CellSpec) -> CellStatus:
    files = CellFiles.of(out, spec.hash)
    path = out / spec.relpath()
    if path.exists():
        try:
            r = load_result(path, spec.hash)
            vals = [v for v in r["final"].values() if v is not None]
            return CellStatus("done", spec, f"mean {sum(vals) / max(len(vals), 1):.4f}, {r['timings']['total_s']:.1f}s")
        except MisplacedResultError:
            damaged = "misplaced result file: another cell's (will be recomputed)"
        except ResultError:
            damaged = "damaged result file (will be recomputed)"
    else:
        damaged = ""
    progress = ""
    if files.checkpoint.exists():
        try:
            meta = read_sealed_meta(files.checkpoint)
            progress = f"checkpoint after {meta['tasks'][meta['next_task'] - 1]} ({meta['next_task']}/{len(meta['tasks'])})"
        except (ResultError, KeyError, IndexError, TypeError):
            progress = "damaged checkpoint (will be discarded)"
    if files.running.exists():
        try:
            m = json.loads(files.running.read_text())
            alive = _alive(m["pid"]) if m["host"] == socket.gethostname() else True
            if alive:
                quiet = f"last output {time.time() - files.log.stat().st_mtime:.0f}s ago" if files.log.exists() else ""
                return CellStatus("running", spec, "; ".join(
                    x for x in (f"pid {m['pid']} on {m['host']} since {m['started']}", progress, quiet,
                                _last_line(files.log)) if x))
        except (OSError, ValueError, KeyError, TypeError):
            pass
        progress = "; ".join(x for x in ("interrupted", progress) if x)
    if files.failed.exists():
        try:
            f = json.loads(files.failed.read_text())
            return CellStatus("failed", spec, f"{f['error'].splitlines()[0]} (record: {files.failed})")
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return CellStatus("failed", spec, f"unreadable failure record {files.failed}")
    return CellStatus("pending", spec, "; ".join(x for x in (damaged, progress) if x))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _last_line(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4096))
            lines = f.read().decode(errors="replace").strip().splitlines()
        return lines[-1].strip() if lines else ""
    except OSError:
        return ""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, obj: dict) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode())
