"""Resume, failure records, status, plans and parallel/distributed grids, through real runs on
`synthetic-mini` (and real `curb run` subprocesses for the kill tests)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from curb.cli import main
from curb.grid import GridError, read_plan, status
from curb.method import available_methods, register
from curb.methods.pop import Pop
from curb.results import ResultError, load_result, read_sealed_meta
from curb.runner import CellFiles, CellInterrupted, CellSpec, run_cell

# Long enough tasks (40 epochs, no early stop) that a kill lands inside a task, still ~1 s per task.
SLOW = ("--set", "train.epochs=40", "--set", "train.patience=40")
SLOW_SPEC = CellSpec("fineall", "synthetic-mini", overrides=(("train.epochs", "40"), ("train.patience", "40")))
QUIET = dict(echo=lambda *_: None)


def numbers(r: dict) -> dict:
    """Everything a result measures: R, all metrics, transfer, method report, and every epoch's
    loss and validation score (timings, dates and whether T1 came from the cache excluded)."""
    fits = [(f["task"], f["best_epoch"], [(e["loss"], e["val"], e["steps"]) for e in f["epochs"]])
            for f in r["fits"]]
    return {k: r[k] for k in ("R", "metrics", "final", "transfer", "method_report", "spec_hash")} | {"fits": fits}


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "curb", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _interrupt_after_first_checkpoint(out: Path, sig: int) -> tuple[int, str]:
    """Start `curb run` on SLOW_SPEC, send `sig` once the first task checkpoint exists."""
    ckpt = CellFiles.of(out, SLOW_SPEC.hash).checkpoint
    p = _cli("run", "--methods", "fineall", "--dataset", "synthetic-mini", "--out", str(out), *SLOW)
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
