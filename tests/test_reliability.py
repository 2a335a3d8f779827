"""Resume, failure records, status, plans and parallel/distributed grids, through real runs on
`synthetic-mini` (and real `curb run` subprocesses for the kill tests)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from curb.cli import main
from curb.grid import GridError, read_plan, status
from curb.locks import FileLock, LockBusy
from curb.method import available_methods, register
from curb.methods.pop import Pop
from curb.report import load_settings, overall_table
from curb.results import ResultError, load_result, read_sealed_meta
from curb.runner import CellFiles, CellInterrupted, CellSpec, run_cell

# Long enough tasks (40 epochs, no early stop) that a kill lands inside a task, still ~1 s per task.
SLOW = ("--set", "train.epochs=40", "--set", "train.patience=40")
SLOW_SPEC = CellSpec("fineall", "synthetic-mini", overrides=(("train.epochs", "40"), ("train.patience", "40")))
QUIET = dict(echo=lambda *_: None)


def numbers(r: dict) -> dict:
    """Everything a result measures: R, all metrics, transfer, method report, per-user test scores,
    final validation scores, and every epoch's loss and validation score (timings, dates and
    whether T1 came from the cache excluded)."""
    fits = [(f["task"], f["best_epoch"], [(e["loss"], e["val"], e["steps"]) for e in f["epochs"]])
            for f in r["fits"]]
    keys = ("R", "metrics", "final", "transfer", "method_report", "spec_hash", "per_user", "val_final")
    return {k: r[k] for k in keys} | {"fits": fits}


def _cli(*args: str, **kw) -> subprocess.Popen:
    kw.setdefault("env", {**os.environ, "OMP_NUM_THREADS": "1"})
    return subprocess.Popen([sys.executable, "-m", "curb", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _interrupt_after_first_checkpoint(out: Path, sig: int, *command: str) -> tuple[int, str]:
    """Start `curb run` (or `command`, e.g. `reproduce overall`) on SLOW_SPEC, send `sig` once the
    first task checkpoint exists."""
    ckpt = CellFiles.of(out, SLOW_SPEC.hash).checkpoint
    p = _cli(*(command or ("run",)), "--methods", "fineall", "--dataset", "synthetic-mini", "--out", str(out), *SLOW)
    while not ckpt.exists() and p.poll() is None:
        time.sleep(0.005)
    assert p.poll() is None, "the run ended before its first checkpoint could be seen"
    p.send_signal(sig)
    output, _ = p.communicate(timeout=300)
    return p.returncode, output


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """SLOW_SPEC run uninterrupted, in-process."""
    with one_thread():
        return run_cell(SLOW_SPEC, tmp_path_factory.mktemp("ref"), **QUIET)


@contextlib.contextmanager
def one_thread():
    """The CLI's default of one torch thread per cell: float reductions differ with the thread
    count, so in-process runs compared with `curb run` subprocesses must use the same one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_sigkill_mid_task_then_rerun_gives_identical_numbers(tmp_path, reference):
    code, _ = _interrupt_after_first_checkpoint(tmp_path, signal.SIGKILL)
    assert code == -signal.SIGKILL
    files = CellFiles.of(tmp_path, SLOW_SPEC.hash)
    assert not (tmp_path / SLOW_SPEC.relpath()).exists()
    done = read_sealed_meta(files.checkpoint)["next_task"]
    assert 1 <= done < 5
    # The dead process's marker is recognised as stale: pending, resumable.
    row = {r.spec.hash: r for r in status(tmp_path)[0]}[SLOW_SPEC.hash]
    assert row.state == "pending" and "interrupted" in row.detail and "checkpoint after" in row.detail

    p = _cli("run", "--methods", "fineall", "--dataset", "synthetic-mini", "--out", str(tmp_path), *SLOW)
    output, _ = p.communicate(timeout=300)
    assert p.returncode == 0, output
    assert "resuming after" in output
    r = load_result(tmp_path / SLOW_SPEC.relpath())
    assert r["resumed_at"] and r["resumed_at"][0] == r["tasks"][done]["name"]
    assert numbers(r) == numbers(reference)
    assert not files.checkpoint.exists() and not files.running.exists()  # cleaned up with the result


def test_sigterm_finishes_the_step_keeps_the_checkpoint_and_exits_cleanly(tmp_path, reference):
    code, output = _interrupt_after_first_checkpoint(tmp_path, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM
    assert "interrupted" in output and "Traceback" not in output
    files = CellFiles.of(tmp_path, SLOW_SPEC.hash)
    assert files.checkpoint.exists() and not files.running.exists()
    with one_thread():
        r = run_cell(SLOW_SPEC, tmp_path, **QUIET)
    assert r["resumed_at"] and numbers(r) == numbers(reference)


def test_a_stopped_reproduce_ends_with_its_grid(tmp_path):
    """A stop request during `curb reproduce`'s cells ends the command there: the cold-start study
    that follows the grid does not start and no report is written over a half-run grid."""
    code, output = _interrupt_after_first_checkpoint(tmp_path, signal.SIGTERM, "reproduce", "overall,cold-start",
                                                     "--seeds", "0", "--no-figures", "--set", "ncf.eval_negatives=20")
    assert code == 128 + signal.SIGTERM, output
    assert "rerun the same command to resume" in output and "Traceback" not in output
    assert CellFiles.of(tmp_path, SLOW_SPEC.hash).checkpoint.exists()
    assert not (tmp_path / "report").exists()
    assert [p for p in tmp_path.rglob("*") if "cold-start" in p.name] == []


def _stop_after_task(out: Path, spec: CellSpec, k: int):
    """A should_stop that fires once the checkpoint after task k exists."""
    ck = CellFiles.of(out, spec.hash).checkpoint
    return lambda: ck.exists() and read_sealed_meta(ck)["next_task"] >= k


@pytest.mark.parametrize("name", [n for n, c in available_methods().items() if not c.joint and not n.endswith("-test")])
def test_every_method_resumes_to_identical_numbers(name, tmp_path):
    """The checkpoint contract (state_dict/extra_state cover all state) for every registered method."""
    spec = CellSpec(name, "synthetic-mini")
    ref = run_cell(spec, tmp_path / "ref", **QUIET)
    with pytest.raises(CellInterrupted):
        run_cell(spec, tmp_path / "cut", should_stop=_stop_after_task(tmp_path / "cut", spec, 2), **QUIET)
    r = run_cell(spec, tmp_path / "cut", **QUIET)
    assert r["resumed_at"] and numbers(r) == numbers(ref)


@pytest.mark.parametrize("name", ["pop", "fineall"])
def test_a_stop_between_the_last_checkpoint_and_the_result_keeps_the_per_user_scores(name, tmp_path, monkeypatch):
    """The checkpoint after the last task holds no per-user score vectors; a cell resumed from it
    used to write a result without them (and without saying it resumed), which the paired
    statistics cannot read."""
    import curb.runner
    spec = CellSpec(name, "synthetic-mini")
    ref = run_cell(spec, tmp_path / "ref", **QUIET)
    assert ref["per_user"] and set(ref["per_user"]) == {t["name"] for t in ref["tasks"]}
    out = tmp_path / "cut"

    def killed(*_):
        raise CellInterrupted("killed while writing the result")
    with monkeypatch.context() as mp:
        mp.setattr(curb.runner, "save_result", killed)
        with pytest.raises(CellInterrupted):
            run_cell(spec, out, **QUIET)
    ck = CellFiles.of(out, spec.hash).checkpoint
    assert read_sealed_meta(ck)["next_task"] == len(ref["tasks"])
    r = run_cell(spec, out, **QUIET)
    assert r["resumed_at"] == ["end"] and numbers(r) == numbers(ref)
    assert not ck.exists()


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) * 2 // 3] ^= 0x01
    elif how == "truncate":
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flip", "truncate", "other-cell"])
def test_damaged_checkpoint_is_detected_reported_and_recomputed(tmp_path, how):
    spec = CellSpec("fineall", "synthetic-mini")
    ref = run_cell(spec, tmp_path / "ref", **QUIET)
    out = tmp_path / "cut"
    with pytest.raises(CellInterrupted):
        run_cell(spec, out, should_stop=_stop_after_task(out, spec, 2), **QUIET)
    ck = CellFiles.of(out, spec.hash).checkpoint
    if how == "other-cell":  # a valid checkpoint, but of another cell, copied over this one
        other = CellSpec("fineall", "synthetic-mini", seed=1)
        with pytest.raises(CellInterrupted):
            run_cell(other, out, should_stop=_stop_after_task(out, other, 2), **QUIET)
        ck.write_bytes(CellFiles.of(out, other.hash).checkpoint.read_bytes())
    else:
        _damage(ck, how)
    said = []
    r = run_cell(spec, out, echo=said.append)
    assert any(("checksum mismatch" in s or "truncated" in s or "another cell" in s) and "restarting" in s for s in said)
    assert r["resumed_at"] == [] and numbers(r) == numbers(ref)


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_damaged_result_is_detected_reported_and_recomputed(tmp_path, how):
    spec = CellSpec("pop", "synthetic-mini")
    ref = run_cell(spec, tmp_path, **QUIET)
    path = tmp_path / spec.relpath()
    if how == "flip":  # change one digit of a score: still valid JSON, wrong checksum
        text = path.read_text()
        i = text.index('"mrr@5": 0.') + len('"mrr@5": 0.')
        path.write_text(text[:i] + str((int(text[i]) + 1) % 10) + text[i + 1:])
    else:
        _damage(path, how)
    with pytest.raises(ResultError):
        load_result(path)
    rows, notes = status(tmp_path)
    if how == "flip":  # still names its cell: listed as pending, to be recomputed
        (row,) = rows
        assert row.state == "pending" and "damaged result" in row.detail
    else:  # unparseable: reported as a note
        assert rows == [] and any(str(path) in n and "unreadable" in n for n in notes)
    said = []
    r = run_cell(spec, tmp_path, echo=said.append)
    assert any("recomputing" in s for s in said)
    assert numbers(r) == numbers(ref) and load_result(path)["checksum"] == r["checksum"]


@register("boom-test")
class Boom(Pop):
    """Test-only: learns like pop, then raises while learning T3."""

    def learn_task(self, task, train, val, fit):
        if task.name == "T3":
            raise RuntimeError("boom while learning T3")
        super().learn_task(task, train, val, fit)


def test_failing_cell_leaves_a_record_and_the_others_finish(tmp_path, capsys):
    code = main(["run", "--methods", "boom-test,pop,sinmo", "--dataset", "synthetic-mini", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 1
    assert "cell synthetic-mini/boom-test/default/seed0 failed: RuntimeError: boom while learning T3" in captured.err
    assert "Traceback" not in captured.err
    for m in ("pop", "sinmo"):
        load_result(tmp_path / CellSpec(m, "synthetic-mini").relpath())  # finished and valid
    spec = CellSpec("boom-test", "synthetic-mini")
    files = CellFiles.of(tmp_path, spec.hash)
    rec = json.loads(files.failed.read_text())
    assert rec["error"] == "RuntimeError: boom while learning T3" and rec["spec"] == spec.as_dict()
    assert "in learn_task" in rec["traceback"] and not files.running.exists()
    assert read_sealed_meta(files.checkpoint)["next_task"] == 2  # T1, T2 kept for a retry

    # Status: failed, done, and a planned cell that never ran is pending.
    assert main(["plan", "--methods", "pop", "--dataset", "synthetic-mini", "--seeds", "7", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "4 cell(s): 2 done, 0 running, 1 failed, 1 pending" in out
    states = {r.spec.method + str(r.spec.seed): r.state for r in status(tmp_path)[0]}
    assert states == {"boom-test0": "failed", "pop0": "done", "sinmo0": "done", "pop7": "pending"}


def test_status_shows_a_live_running_cell(tmp_path):
    spec = CellSpec("pop", "synthetic-mini")
    files = CellFiles.of(tmp_path, spec.hash)
    files.running.parent.mkdir(parents=True)
    import socket

    files.running.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": "now",
                                         "spec": spec.as_dict()}))
    files.log.write_text("  [pop] after T2: T1 0.1 T2 0.2\n")
    (row,), _ = status(tmp_path)
    assert row.state == "running" and f"pid {os.getpid()}" in row.detail and "after T2" in row.detail


def test_plan_round_trips_and_bad_plans_are_reported_by_line(tmp_path, capsys):
    argv = ["--methods", "fineall,sinmo", "--dataset", "synthetic-mini", "--seeds", "0,1", "--order", "default",
            "--order", "reversed", "--noise-task", "none,2", "--set", "train.lr=0.002"]
    assert main(["plan", *argv, "--out", str(tmp_path)]) == 0
    specs = read_plan(tmp_path / "plan.jsonl")
    assert len(specs) == 16 and len({s.hash for s in specs}) == 16
    assert [s.method for s in specs[:8]] == ["sinmo"] * 8  # SinMo first (FWT reference)
    assert {(s.order, s.noise) for s in specs} == {("default", None), ("default", 2), ("reversed", None), ("reversed", 2)}
    assert all(dict(s.overrides) == {"train.lr": "0.002"} for s in specs)
    # Planning again merges (nothing new); --plan refuses grid options.
    assert main(["plan", *argv, "--out", str(tmp_path)]) == 0
    assert "16 cell(s), 0 new" in capsys.readouterr().out
    assert main(["run", "--plan", str(tmp_path / "plan.jsonl"), "--methods", "pop"]) == 2
    assert "--plan FILE already fixes the grid; drop --methods" in capsys.readouterr().err

    lines = (tmp_path / "plan.jsonl").read_text().splitlines()
    for k, bad in [(3, "{not json"), (2, json.dumps({**json.loads(lines[1]), "seed": "zero"})),
                   (5, json.dumps({**json.loads(lines[4]), "seed": 99})),  # hash no longer matches
                   (1, json.dumps({**json.loads(lines[0]), "colour": "red"}))]:
        broken = lines.copy()
        broken[k - 1] = bad
        (tmp_path / "bad.jsonl").write_text("\n".join(broken))
        with pytest.raises(GridError, match=rf"bad\.jsonl:{k}: bad cell spec"):
            read_plan(tmp_path / "bad.jsonl")
        assert main(["run", "--plan", str(tmp_path / "bad.jsonl")]) == 2
        assert f"bad.jsonl:{k}: bad cell spec" in capsys.readouterr().err


GRID = ["--methods", "pop,sinmo,fineall", "--dataset", "synthetic-mini", "--seeds", "0,1"]


@pytest.fixture(scope="module")
def serial_grid(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("serial")
    assert main(["run", *GRID, "--out", str(out)]) == 0
    return {str(p.relative_to(out)): numbers(load_result(p)) for p in sorted(out.rglob("seed*.json"))}


def test_jobs_2_gives_the_same_results_as_jobs_1(tmp_path, serial_grid):
    assert main(["run", *GRID, "--out", str(tmp_path), "--jobs", "2"]) == 0
    got = {str(p.relative_to(tmp_path)): numbers(load_result(p)) for p in sorted(tmp_path.rglob("seed*.json"))}
    assert len(got) == 6 and got == serial_grid
    # FWT present for every non-SinMo cell: SinMo ran first even in parallel.
    assert all(v["transfer"]["fwt_mean"] is not None for k, v in got.items() if "/sinmo/" not in k)


def test_dask_local_cluster_runs_a_grid_end_to_end(tmp_path, serial_grid, capsys):
    distributed = pytest.importorskip("distributed")
    assert main(["plan", *GRID, "--out", str(tmp_path)]) == 0
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  worker_dashboard_address=None) as cluster:
        code = main(["run", "--plan", str(tmp_path / "plan.jsonl"), "--backend", "dask",
                     "--scheduler", cluster.scheduler_address])
    assert code == 0, capsys.readouterr()
    got = {str(p.relative_to(tmp_path)): numbers(load_result(p)) for p in sorted(tmp_path.rglob("seed*.json"))}
    assert got == serial_grid
    # The cells ran in the cluster's worker processes, not in this one.
    pids = {line.split(" pid ")[1].split(",")[0] for p in (tmp_path / ".cells").glob("*.log")
            for line in p.read_text().splitlines() if line.startswith("--- ") and " pid " in line}
    assert pids and str(os.getpid()) not in pids


def test_backend_options_are_checked(tmp_path, capsys):
    assert main(["run", "--dataset", "synthetic-mini", "--scheduler", "tcp://x:1", "--out", str(tmp_path)]) == 2
    assert "--scheduler is only used with --backend dask" in capsys.readouterr().err
    assert main(["run", "--dataset", "synthetic-mini", "--backend", "dask", "--out", str(tmp_path)]) == 2
    assert "--backend dask needs" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- concurrency (issue 15)
def _plan_repeatedly(out: str, k: int, start, n: int) -> None:
    start.wait()
    for s in range(n):
        assert main(["plan", "--methods", "pop", "--dataset", "synthetic-mini", "--seeds", str(100 * k + s),
                     "--out", out]) == 0


def test_six_concurrent_plan_merges_keep_every_cell(tmp_path):
    """Six `curb plan --out SAME` at once (five merges each): the plan lock keeps every line."""
    ctx = multiprocessing.get_context("fork")  # the children only parse, check and write JSON: no torch work
    start = ctx.Barrier(6)
    procs = [ctx.Process(target=_plan_repeatedly, args=(str(tmp_path), k, start, 5)) for k in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * 6
    assert sorted(s.seed for s in read_plan(tmp_path / "plan.jsonl")) == [100 * k + s for k in range(6) for s in range(5)]


def _hold(path: str, held, release) -> None:
    """Hold the lock at `path` (a run folder's, or a cell's) until `release` is set."""
    from curb.grid import run_lock
    from curb.locks import FileLock

    p = Path(path)
    lock = run_lock(p) if p.is_dir() else FileLock(p, {"pid": os.getpid(), "host": socket.gethostname(),
                                                        "started": "now"})
    with lock:
        held.set()
        release.wait(120)


@contextlib.contextmanager
def held_by_another_process(path: Path):
    """A forked process holding the lock at `path` for the duration; yields its pid."""
    ctx = multiprocessing.get_context("fork")
    held, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(path), held, release))
    holder.start()
    try:
        assert held.wait(60), "the holder never took the lock"
        yield holder.pid
    finally:
        release.set()
        holder.join(60)


def test_a_second_runner_on_a_folder_stops_at_once_naming_the_first(tmp_path, capsys):
    argv = ["run", "--methods", "pop", "--dataset", "synthetic-mini", "--out", str(tmp_path)]
    with held_by_another_process(tmp_path) as pid:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"is being run by pid {pid} on {socket.gethostname()} since" in err
        assert "one process runs a folder at a time" in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / CellSpec("pop", "synthetic-mini").relpath()).exists()
    assert main(argv) == 0  # the lock went with its holder


def test_a_runner_losing_the_race_by_microseconds_still_names_the_holder(tmp_path):
    """The holder writes its record just after taking the lock; a loser reading the file in that
    gap used to find it empty and could only say "another process"."""
    path = tmp_path / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)  # a second open file: flock excludes it like a process
    fcntl.flock(fd, fcntl.LOCK_EX)
    writer = threading.Timer(0.3, os.pwrite, (fd, json.dumps({"pid": 4711, "host": "h"}).encode(), 0))
    writer.start()
    try:
        with pytest.raises(LockBusy) as e:
            FileLock(path).acquire(wait=False)
        assert e.value.holder["pid"] == 4711 and "pid 4711 on h" in str(e.value)
        os.ftruncate(fd, 0)  # a holder that never writes: the loser gives up and says so
        t0 = time.monotonic()
        with pytest.raises(LockBusy, match="held by another process"):
            FileLock(path).acquire(wait=False)
        assert time.monotonic() - t0 < 10
    finally:
        writer.join()
        os.close(fd)


def test_a_cell_another_process_is_computing_is_not_started(tmp_path, capsys):
    """The per-cell lock: e.g. an orphaned worker of a lost scheduler still computing the cell."""
    spec = CellSpec("pop", "synthetic-mini")
    files = CellFiles.of(tmp_path, spec.hash)
    with held_by_another_process(files.lock) as pid:
        assert main(["run", "--methods", "pop", "--dataset", "synthetic-mini", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"cell synthetic-mini/pop/default/seed0 not started: being computed by pid {pid}" in err
    assert not (tmp_path / spec.relpath()).exists() and not files.log.exists()


def test_a_cell_waits_for_another_process_pre_training_the_same_t1_model(tmp_path):
    """Two cells of one seed need the same shared T1 model: the second waits for the first's lock
    and loads what it saved, instead of training it again."""
    first, second = tmp_path / "a", tmp_path / "b"
    assert main(["run", "--methods", "fineall", "--dataset", "synthetic-mini", "--out", str(first)]) == 0
    (trained,) = (first / ".cache" / "t1").glob("t1-*.pt")
    target = second / ".cache" / "t1" / trained.name
    spec = CellSpec("piggyback", "synthetic-mini")
    log = CellFiles.of(second, spec.hash).log
    with held_by_another_process(target.with_suffix(".lock")) as pid:
        p = _cli("run", "--methods", "piggyback", "--dataset", "synthetic-mini", "--out", str(second))
        deadline = time.time() + 240
        while not (log.exists() and "waiting for" in log.read_text()) and p.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert f"waiting for pid {pid} on {socket.gethostname()}" in log.read_text()
        assert not target.exists()
        shutil.copy(trained, target)  # what the holder saves before it lets go
    output, _ = p.communicate(timeout=300)
    assert p.returncode == 0, output
    phases = [f.get("phase") for f in load_result(second / spec.relpath())["fits"]]
    assert phases[0] == "pretrained (cached)", phases


def test_two_identical_runs_on_one_folder_compute_the_cell_once(tmp_path, reference):
    runs = [_cli("run", "--methods", "fineall", "--dataset", "synthetic-mini", "--out", str(tmp_path), *SLOW)
            for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in runs]
    codes = sorted(p.returncode for p in runs)
    assert codes[0] == 0 and codes[1] in (0, 2), outputs
    if codes[1] == 2:  # they overlapped (the usual case): the second one stopped at once
        assert any("is being run by pid" in o for o in outputs)
    assert CellFiles.of(tmp_path, SLOW_SPEC.hash).log.read_text().count(" attempt on ") == 1
    assert numbers(load_result(tmp_path / SLOW_SPEC.relpath())) == numbers(reference)


def test_a_result_at_another_cells_path_is_reported_and_recomputed_never_used(tmp_path):
    seed0, seed1 = CellSpec("pop", "synthetic-mini", seed=0), CellSpec("pop", "synthetic-mini", seed=1)
    assert main(["run", "--methods", "pop", "--dataset", "synthetic-mini", "--seeds", "0,1", "--out", str(tmp_path)]) == 0
    shutil.copy(tmp_path / seed0.relpath(), tmp_path / seed1.relpath())  # seed 0's file at seed 1's path
    shutil.copytree(tmp_path / "synthetic-mini", tmp_path / "backup" / "synthetic-mini")  # and a second copy of each
    rows = {r.spec.seed: r for r in status(tmp_path)[0]}
    assert rows[1].state == "pending" and "misplaced" in rows[1].detail and rows[0].state == "done"
    said = []
    (st,) = load_settings(tmp_path, said.append)
    assert [r["spec"]["seed"] for r in st.results] == [0]  # counted once, never under seed 1's name
    assert sum("misplaced" in s for s in said) == 2 and sum("second copy" in s for s in said) == 1
    assert overall_table(st).rows[0][-1] == "0"  # the seeds column: was "0,0"
    said = []
    r = run_cell(seed1, tmp_path, echo=said.append)
    assert r["spec"]["seed"] == 1 and r["spec_hash"] == seed1.hash
    assert any("misplaced" in s and "recomputing" in s for s in said)
    assert load_result(tmp_path / seed1.relpath(), seed1.hash)["spec"]["seed"] == 1


def test_stale_temporary_files_of_killed_writes_are_removed(tmp_path):
    cells = tmp_path / ".cells"
    cells.mkdir(parents=True)
    stale, fresh, other = cells / ".abc.ckpt.k3j_x9q2.tmp", cells / ".abc.ckpt.z8y7x6w5.tmp", cells / "notes.tmp"
    for p in (stale, fresh, other):
        p.write_bytes(b"partial")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    assert main(["run", "--methods", "pop", "--dataset", "synthetic-mini", "--out", str(tmp_path)]) == 0
    assert not stale.exists() and fresh.exists() and other.exists()  # only curb's own, only when stale


# ---------------------------------------------------------------------------------- Dask clusters (issue 15)
def _local_cluster(**kw):
    distributed = pytest.importorskip("distributed")
    return distributed.LocalCluster(**{"n_workers": 1, "threads_per_worker": 1, "processes": True,
                                       "dashboard_address": None, "worker_dashboard_address": None, **kw})


def _wait_for(path: Path, p: subprocess.Popen, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert p.poll() is None, f"the run ended before {what}: {p.communicate()[0]}"
        assert time.monotonic() < deadline, f"no {what} after {timeout}s"
        time.sleep(0.05)


def _attempts(out: Path) -> set[tuple[str, int]]:
    """(host, pid) of every cell attempt recorded in the cells' logs."""
    found = set()
    for log in (out / ".cells").glob("*.log"):
        for line in log.read_text().splitlines():
            if line.startswith("--- ") and " attempt on " in line:
                host, pid = line.split(" attempt on ")[1].split(",")[0].split(" pid ")
                found.add((host, int(pid)))
    return found


def test_the_gpu_worker_recipe_runs_every_cell_on_the_worker(tmp_path, capsys):
    """docs/scaling.md's GPU worker (one process, one thread, resource GPU=1), on CPU. joblib's Dask
    backend ran every cell in the client when the cluster had one worker thread."""
    distributed = pytest.importorskip("distributed")
    with _local_cluster(resources={"GPU": 1}) as cluster, distributed.Client(cluster) as client:
        workers = {(socket.gethostname(), pid) for pid in client.run(os.getpid).values()}
        argv = ["run", "--methods", "pop", "--dataset", "synthetic-mini", "--seeds", "0,1", "--backend", "dask",
                "--scheduler", cluster.scheduler_address, "--out", str(tmp_path)]
        assert main(argv) == 0, capsys.readouterr()
        attempts = _attempts(tmp_path)
        assert len(attempts) >= 1 and attempts <= workers and (socket.gethostname(), os.getpid()) not in attempts
        # --device cuda: the cells' checks run on the worker offering GPU=1 (which has no CUDA here)
        assert main([*argv, "--device", "cuda", "--force"]) == 2
        assert f"CUDA is not available on {socket.gethostname()}" in capsys.readouterr().err
    with _local_cluster() as cluster:  # no worker offers a GPU: refused up front instead of waiting forever
        assert main([*argv[:-4], "--scheduler", cluster.scheduler_address, "--device", "cuda", "--out",
                     str(tmp_path)]) == 2
        assert "no worker of the cluster" in capsys.readouterr().err


def test_a_cell_whose_worker_dies_for_good_ends_with_a_failure_record(tmp_path):
    """Dask gives up on a task whose workers died `allowed-failures` + 1 times (KilledWorker): the
    client used to wait for it forever; now the cell fails with a record and the run ends."""
    distributed = pytest.importorskip("distributed")
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), _local_cluster() as cluster, \
            distributed.Client(cluster) as client:
        (worker_pid,) = client.run(os.getpid).values()
        p = _cli("run", "--methods", "fineall", "--dataset", "synthetic-mini", *SLOW, "--backend", "dask",
                 "--scheduler", cluster.scheduler_address, "--out", str(tmp_path))
        _wait_for(CellFiles.of(tmp_path, SLOW_SPEC.hash).running, p, "the cell started on the worker")
        os.kill(worker_pid, signal.SIGKILL)
        output, _ = p.communicate(timeout=180)
    assert p.returncode == 1, output
    assert ("cell synthetic-mini/fineall/default/seed0 [train.epochs=40,train.patience=40] failed: KilledWorker"
            in output and "Traceback" not in output)
    record = json.loads(CellFiles.of(tmp_path, SLOW_SPEC.hash).failed.read_text())
    assert record["error"].startswith("KilledWorker") and record["spec"] == SLOW_SPEC.as_dict()


def test_ctrl_c_ends_a_dask_run_that_waits_for_workers(tmp_path):
    """A cluster without workers never runs the tasks: one Ctrl-C must still end the client."""
    pytest.importorskip("distributed")
    with _local_cluster(n_workers=0) as cluster:
        p = _cli("run", "--methods", "pop", "--dataset", "synthetic-mini", "--backend", "dask", "--scheduler",
                 cluster.scheduler_address, "--out", str(tmp_path))
        deadline = time.monotonic() + 180
        while not cluster.scheduler.tasks:  # the client has submitted its first task and waits
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()[0] if p.poll() is not None else ""
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        output, _ = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in output, output


def _dask_cli(*args: str) -> subprocess.Popen:
    """`dask scheduler` / `dask worker` run by this interpreter (the `dask` script may be another venv's)."""
    return subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def test_a_lost_scheduler_ends_the_run_with_an_error_and_the_cell_resumes(tmp_path, reference):
    pytest.importorskip("distributed")
    address_file = tmp_path / "scheduler.json"
    out = tmp_path / "runs"
    procs = [_dask_cli("distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                       "--scheduler-file", str(address_file))]
    try:
        _wait_for(address_file, procs[0], "the scheduler's address")
        address = json.loads(address_file.read_text())["address"]
        procs.append(_dask_cli("distributed.cli.dask_worker", address, "--nthreads", "1", "--no-dashboard"))
        p = _cli("run", "--methods", "fineall", "--dataset", "synthetic-mini", *SLOW, "--backend", "dask",
                 "--scheduler", address, "--out", str(out))
        _wait_for(CellFiles.of(out, SLOW_SPEC.hash).checkpoint, p, "the first checkpoint")
        procs[0].kill()  # the scheduler dies, and its worker with it (an orphaned worker would go on computing
        os.killpg(procs[1].pid, signal.SIGKILL)  # the cell and, on a loaded machine, could finish it first)
        output, _ = p.communicate(timeout=120)
        assert p.returncode == 2 and "Traceback" not in output, output
        assert "lost the connection to the Dask scheduler" in output.splitlines()[-1]
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with one_thread():  # the cell resumes from its last checkpoint
        r = run_cell(SLOW_SPEC, out, **QUIET)
    assert r["resumed_at"] and numbers(r) == numbers(reference)


REPO = Path(__file__).resolve().parents[1]


def test_every_dask_example_binds_to_localhost_or_uses_tls():
    """A scheduler runs what its clients send: no documented command may expose one in clear text."""
    text = "\n".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])
    lines = text.replace("\\\n", " ").splitlines()  # continuation lines joined
    commands = [c for c in lines if re.search(r"dask (scheduler|worker)|--scheduler ", c)]
    schedulers = [c for c in commands if "dask scheduler" in c]
    workers = [c for c in commands if "dask worker" in c]
    assert schedulers and workers
    for c in schedulers:
        assert "--host 127.0.0.1" in c or "--protocol tls" in c, c
    for c in [*workers, *(c for c in commands if "curb run" in c)]:
        address = re.search(r"(?:dask worker|--scheduler) (\S+)", c).group(1)
        assert address.startswith(("tls://", "tcp://127.0.0.1:")), c
    for c in [*schedulers, *workers]:
        if "tls" in c:
            assert "--tls-ca-file" in c and "--tls-cert" in c and "--tls-key" in c, c


def test_the_documented_tls_setup_runs_a_grid_and_a_client_without_certificates_is_refused(tmp_path):
    """docs/scaling.md's TLS recipe: a scheduler that requires encryption, curb's client configured
    through the DASK_DISTRIBUTED__COMM__TLS__* variables."""
    pytest.importorskip("distributed")
    from distributed.security import Security

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make the test certificates")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca, cert, key = tmp_path / "ca.pem", tmp_path / "node.pem", tmp_path / "node.key"
    for cmd in ([openssl, "req", "-x509", *ec, "-keyout", tmp_path / "ca.key", "-out", ca, "-days", "2",
                 "-subj", "/CN=ca"],
                [openssl, "req", *ec, "-keyout", key, "-out", tmp_path / "node.csr", "-subj", "/CN=node"],
                [openssl, "x509", "-req", "-in", tmp_path / "node.csr", "-CA", ca, "-CAkey", tmp_path / "ca.key",
                 "-CAcreateserial", "-out", cert, "-days", "2"]):
        subprocess.run(cmd, check=True, capture_output=True)
    security = Security(tls_ca_file=str(ca), require_encryption=True,
                        **{f"tls_{who}_{part}": str(f) for who in ("scheduler", "worker", "client")
                           for part, f in (("cert", cert), ("key", key))})
    argv = ["run", "--methods", "pop", "--dataset", "synthetic-mini", "--backend", "dask", "--out", str(tmp_path / "o")]
    with _local_cluster(protocol="tls://", host="127.0.0.1", security=security) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1:")
        tls = {"DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(ca), "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": str(cert),
               "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": str(key),
               "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True"}
        p = _cli(*argv, "--scheduler", address, env={**os.environ, "OMP_NUM_THREADS": "1", **tls})
        output, _ = p.communicate(timeout=300)
        assert p.returncode == 0, output
        p = _cli(*argv, "--scheduler", address)
        output, _ = p.communicate(timeout=300)
    assert p.returncode == 2 and "uses TLS but this client has no certificate" in output and "Traceback" not in output
