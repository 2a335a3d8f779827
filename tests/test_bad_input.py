"""Property-based and fuzz tests: malformed CLI arguments, configs, streams, raw data files, plan
lines, results and checkpoints thrown at the entry points. Each must end in a clear curb error
(one line naming the problem), never in a traceback from deep inside torch, numpy or pandas."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis.control import currently_in_test_context
from hypothesis import strategies as st

from curb.cli import USER_ERRORS, main
from curb.config import ConfigError
from curb.evaluator import Evaluator
from curb.method import Setup, TrainConfig, available_methods
from curb.methods.pop import Pop
from curb.results import ResultError, load_result, load_sealed, save_result, save_sealed
from curb.runner import CellSpec, resolve_config, run_cell
from curb.streams import KINDS, SplitConfig, StreamError, Targets, Task, TaskStream

# CI (CI=true) replays the same examples every run, so a red build is reproducible; locally each
# run explores new inputs.
DERANDOMIZE = bool(os.environ.get("CI"))
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=DERANDOMIZE)

EDGE_NUMBERS = ["0", "-1", "1", "2", "0.5", "-0.0", "nan", "inf", "-inf", "1e400", "1e-400", "4294967296",
                "99999999999999999999", "0x10", "1_000", " 3 ", "", "none", "true", "1,2", "1;0", "()", "[1]"]
values = st.one_of(st.sampled_from(EDGE_NUMBERS), st.text(max_size=12))


def _expect_clean_cli_exit(argv: list[str], capsys) -> tuple[int, str]:
    """Run the CLI; any exception other than argparse's SystemExit fails the test with its traceback."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse: --help/--version (0) or a usage error (2)
        code = e.code
    err = capsys.readouterr().err
    if currently_in_test_context():
        event(f"exit {code}")
    assert code in (0, 1, 2), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    if code == 2:
        first = err.splitlines()[0]
        assert first.startswith("curb") and "error:" in first, (argv, err)
        if "curb looked in" not in err:  # data-not-found lists the places searched, one per line
            assert len(err.strip().splitlines()) == 1, (argv, err)
    return code, err


# ---------------------------------------------------------------------------------- CLI
GRID_OPTS = {
    "--methods": st.one_of(st.sampled_from(["pop", "nope", "", ",", "pop,nope", "all,pop", "POP", "pop,,pop"]), st.text(max_size=8)),
    "--dataset": st.one_of(st.sampled_from(["synthetic-mini", "nope", "", ",", "synthetic-mini,nope"]), st.text(max_size=8)),
    "--seeds": st.one_of(st.sampled_from(["0", "0,1", "-1", "", ",", "4294967296", "1.5", "a"]), st.text(max_size=6)),
    "--order": st.one_of(st.sampled_from(["default", "reversed", "1,3,2,4,5", "2,1,3,4,5", "1,2", "T1,T9", "",
                                          "1,1,2,3,4", "0,1,2,3,4", "99999999999999999999"]), st.text(max_size=8)),
    "--noise-task": st.one_of(st.sampled_from(["none", "0", "1", "9", "-1", "none,2", "", "x"]), st.text(max_size=6)),
    "--epochs": st.sampled_from(["1", "0", "-3", "x", "", "1e3"]),
    "--preset": st.one_of(st.sampled_from(["small", "paper", "huge", ""]), st.text(max_size=6)),
    "--set": st.one_of(st.builds(lambda k, v: f"{k}={v}", st.sampled_from(
        ["train.lr", "train.batch", "train.nope", "split.level", "split.fractions", "backbone.channels", "nope",
         "sinmo.x", "train", "", "preset"]), values), st.text(max_size=10)),
}
RUN_OPTS = {
    "--jobs": st.sampled_from(["1", "0", "-2", "x", "", "1.5"]),
    "--threads": st.sampled_from(["1", "auto", "0", "-1", "x", ""]),
    "--device": st.one_of(st.sampled_from(["cpu", "cuda", "cuda:0", "cuda:x", "tpu", "", "cpu:0"]), st.text(max_size=6)),
    "--backend": st.sampled_from(["local", "spark", ""]),
    "--plan": st.sampled_from(["/nonexistent/plan.jsonl", "", "."]),
    "--data-dir": st.sampled_from(["/nonexistent", "", "."]),
}


def _argv(pairs) -> list[str]:
    return [x for pair in pairs for x in pair]


@FUZZ
@given(st.lists(st.sampled_from(list(GRID_OPTS)), max_size=4).flatmap(
    lambda keys: st.tuples(*[st.tuples(st.just(k), GRID_OPTS[k]) for k in keys])))
def test_fuzzed_plan_arguments_end_cleanly(tmp_path_factory, capsys, opts):
    """`curb plan` validates every grid option exactly as `curb run` does, without training."""
    out = tmp_path_factory.mktemp("plan")
    _expect_clean_cli_exit(["plan", "--methods", "pop", "--dataset", "synthetic-mini",
                            *_argv(opts), "--out", str(out)], capsys)


@FUZZ
@given(st.lists(st.sampled_from(list(RUN_OPTS)), max_size=3).flatmap(
    lambda keys: st.tuples(*[st.tuples(st.just(k), RUN_OPTS[k]) for k in keys])))
def test_fuzzed_run_arguments_end_cleanly(tmp_path_factory, capsys, opts):
    out = tmp_path_factory.mktemp("run")
    argv = _argv(opts)
    plan = "--plan" in argv
    grid = [] if plan else ["--methods", "pop", "--dataset", "synthetic-mini"]
    _expect_clean_cli_exit(["run", *grid, *argv, "--out", str(out)], capsys)


@FUZZ
@given(st.lists(st.text(max_size=10), max_size=4))
def test_fuzzed_raw_argv_ends_cleanly(capsys, argv):
    if argv[:1] == ["run"]:
        argv = ["plan", *argv[1:]]  # never train on random input; plan shares run's validation
    _expect_clean_cli_exit(argv, capsys)


def test_status_of_missing_or_garbage_folder(tmp_path, capsys):
    assert _expect_clean_cli_exit(["status", str(tmp_path / "nope")], capsys)[0] == 2
    (tmp_path / ".cells").mkdir()
    (tmp_path / ".cells" / "x.failed.json").write_text("{garbage")
    (tmp_path / ".cells" / "y.running.json").write_text(json.dumps({"spec": {"method": 3}}))
    (tmp_path / ".cells" / "z.ckpt").write_bytes(b"\x00" * 10)
    (tmp_path / "a.json").write_text("[1, 2]")
    (tmp_path / "plan.jsonl").write_text("")
    assert main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "0 cell(s)" in out and "note: " in out


# ---------------------------------------------------------------------------------- configs
def _config_keys() -> list[str]:
    from curb.backbone import BackboneConfig
    from curb.method import TrainConfig

    keys = [f"{sec}.{f.name}" for sec, cls in (("train", TrainConfig), ("split", SplitConfig),
                                               ("backbone", BackboneConfig)) for f in dataclasses.fields(cls)]
    for name, cls in available_methods().items():
        keys += [f"{name}.{f.name}" for f in dataclasses.fields(cls.Config)]
    return keys + ["train.nope", "nosection", "preset"]


@FUZZ
@given(st.sampled_from(sorted(available_methods())), st.dictionaries(st.sampled_from(_config_keys()), values, max_size=3))
def test_fuzzed_config_values_are_accepted_or_rejected_with_a_config_error(method, sets):
    spec = CellSpec(method, "synthetic-mini", overrides=tuple(sorted(sets.items())))
    try:
        cfg = resolve_config(spec)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
        return
    for section in (cfg.train, cfg.backbone, cfg.split):  # accepted numbers are finite
        for v in dataclasses.asdict(section).values():
            for x in (v if isinstance(v, tuple) else (v,)):
                assert not (isinstance(x, float) and not np.isfinite(x)), (sets, section)


def _mostly(good, bad: list[str]):
    """Plausible values most of the time (so configs get accepted and run), edge cases otherwise."""
    return st.one_of(good, good, good, st.sampled_from(bad))


BAD = ["0", "-1", "nan", "-inf", "1e400", "x", ""]
RUN_KEYS = {
    "train.lr": _mostly(st.floats(1e-5, 0.5).map(repr), BAD), "train.t1_lr": _mostly(st.floats(1e-5, 0.5).map(repr), BAD),
    "train.t2_lr": _mostly(st.floats(1e-5, 0.5).map(repr), BAD + ["none"]),
    "train.batch": _mostly(st.integers(1, 300).map(str), BAD), "train.t1_batch": _mostly(st.integers(1, 64).map(str), BAD),
    "train.eval_batch": _mostly(st.integers(1, 64).map(str), BAD), "train.ignore_pad": st.sampled_from(["true", "false", "2"]),
    "train.t1_negatives": _mostly(st.sampled_from(["0.2", "0.05", "1.0", "40", "none"]), BAD + ["1.5", "0.0"]),
    "backbone.channels": _mostly(st.integers(1, 24).map(str), BAD), "backbone.kernel": _mostly(st.integers(1, 4).map(str), BAD),
    "backbone.dilations": _mostly(st.lists(st.integers(1, 6), min_size=1, max_size=3).map(lambda v: ",".join(map(str, v))),
                                  BAD + ["1,0", "1,-2", ","]),
    "backbone.ln_eps": _mostly(st.floats(1e-12, 1e-2).map(repr), BAD),
    "split.seed": _mostly(st.integers(0, 99).map(str), BAD), "split.level": st.sampled_from(["user", "pair", "row"]),
    "split.fractions": st.sampled_from(["0.8,0.05,0.15", "0.1,0.1,0.8", "0.98,0.01,0.01", "0.5,0.5,0", "nan,0.5,0.5",
                                        "0.5,0.5", "1,2"]),
}


@settings(max_examples=16, deadline=None, suppress_health_check=list(HealthCheck), derandomize=DERANDOMIZE)
@given(st.lists(st.sampled_from(sorted(RUN_KEYS)), min_size=1, max_size=4, unique=True).flatmap(
    lambda keys: st.fixed_dictionaries({k: RUN_KEYS[k] for k in keys})))
def test_accepted_configs_run_or_fail_with_a_clear_error(tmp_path_factory, sets):
    """An accepted config either runs a real cell or stops with a curb error, never deep in torch."""
    sets = {**sets, "train.epochs": "1", "train.t1_epochs": "1"}
    spec = CellSpec("sinmo", "synthetic-mini", overrides=tuple(sorted(sets.items())))
    try:
        resolve_config(spec)
    except ConfigError:
        event("rejected by the config")
        return
    try:
        r = run_cell(spec, tmp_path_factory.mktemp("cfg"), echo=lambda *_: None)
    except USER_ERRORS as e:
        event("stopped by a curb error")
        assert "\n" not in str(e)
        return
    event("ran")
    assert all(np.isfinite(v) or np.isnan(v) for v in r["final"].values())


# ---------------------------------------------------------------------------------- streams
int_arrays = st.lists(st.integers(-2, 8), max_size=8).map(lambda v: np.array(v, dtype=np.int64))
any_arrays = st.one_of(int_arrays, st.lists(st.floats(-2, 8) | st.just(float("nan")), max_size=6).map(np.array),
                       st.just(np.zeros((2, 2), dtype=np.int64)))


@st.composite
def tasks(draw):
    """Task fields, mostly well-formed, sometimes not (bad names, kinds, label counts, CSR arrays)."""
    well_formed = st.builds(lambda u, l: Targets.from_pairs(u[: len(l)], l[: len(u)]),
                            st.lists(st.integers(0, 7), min_size=1, max_size=8).map(np.array),
                            st.lists(st.integers(0, 5), min_size=1, max_size=8).map(np.array))
    names, kinds = st.sampled_from(["T1", "T2", "T3", "noise"]), st.sampled_from(KINDS)
    return dict(name=draw(st.one_of(names, names, names, st.text(max_size=5))),
                kind=draw(st.one_of(kinds, kinds, kinds, st.text(max_size=5))),
                n_labels=draw(st.integers(-1, 9)),
                targets=draw(st.one_of(well_formed, well_formed, st.builds(Targets, any_arrays, any_arrays, any_arrays))))


@st.composite
def streams(draw):
    shape = (draw(st.integers(0, 9)), draw(st.sampled_from([0, 1, 2, 3, 3, 4, 4, 5, 5])))
    seqs = draw(st.one_of(
        st.lists(st.integers(-1, 9), min_size=shape[0] * shape[1], max_size=shape[0] * shape[1]).map(
            lambda v: np.array(v, dtype=np.int64).reshape(shape)),
        st.just(np.ones(shape, dtype=np.float32)), st.just(np.arange(6))))
    return seqs, draw(st.integers(-1, 10)), draw(st.lists(tasks(), min_size=0, max_size=3))


@FUZZ
@given(streams())
def test_malformed_streams_raise_stream_errors(stream):
    seqs, n_items, task_specs = stream
    try:
        built = TaskStream("fuzz", seqs, n_items, tuple(Task(**t) for t in task_specs))
    except StreamError as e:
        event("rejected")
        assert str(e)
        return
    event("accepted")  # then everything downstream code relies on holds
    sq = built.sequences
    assert sq.ndim == 2 and np.issubdtype(sq.dtype, np.integer) and ((sq >= 0) & (sq < built.n_items)).all()
    for t in built.tasks:
        tg = t.targets
        assert tg.ptr[0] == 0 and tg.ptr[-1] == len(tg.labels) and (np.diff(tg.ptr) >= 0).all()
        assert len(tg.ptr) == len(tg.users) + 1 and (np.diff(tg.users) > 0).all()
        assert ((tg.users >= 0) & (tg.users < len(sq))).all()
        assert ((tg.labels >= 0) & (tg.labels < t.n_labels)).all()


@st.composite
def valid_streams(draw):
    """Random but well-formed streams: T1 over every user, then recommend/classify tasks."""
    n, length, n_items = draw(st.integers(3, 12)), draw(st.integers(2, 5)), draw(st.integers(2, 9))
    seqs = np.array(draw(st.lists(st.integers(0, n_items - 1), min_size=n * length, max_size=n * length))).reshape(n, length)
    tasks = [Task("T1", "next_item", n_items, Targets(np.arange(n), np.arange(n + 1), seqs[:, -1]))]
    for k in range(draw(st.integers(0, 3))):
        kind, n_labels = draw(st.sampled_from(["recommend", "classify"])), draw(st.integers(1, 6))
        users = np.array(sorted(draw(st.sets(st.integers(0, n - 1), min_size=1))))
        per = np.ones(len(users), dtype=np.int64) if kind == "classify" else \
            np.array(draw(st.lists(st.integers(1, 3), min_size=len(users), max_size=len(users))))
        m = int(per.sum())
        labels = np.array(draw(st.lists(st.integers(0, n_labels - 1), min_size=m, max_size=m)))
        tasks.append(Task(f"T{k + 2}", kind, n_labels, Targets.from_pairs(np.repeat(users, per), labels)))
    return TaskStream("fuzz", seqs, n_items, tuple(tasks))


@FUZZ
@given(valid_streams())
def test_well_formed_streams_split_and_evaluate_or_say_they_are_too_small(s):
    split = SplitConfig(fractions=(0.4, 0.3, 0.3))
    try:
        ev = Evaluator(s, split)
    except StreamError as e:
        event("too small to split")
        assert "too few" in str(e)
        return
    event("evaluated")
    pop = Pop(Setup(s.n_items, s.sequences.shape[1], None, TrainConfig(), None, torch.device("cpu"), 0))
    for name in s.task_names:
        pop.learn_task(ev.info(name), ev.train_data(name), ev.val_data(name), None)
        assert all(0 <= v <= 1 for v in ev.test(pop, name).values())


def _lines(sep: str, n: int):
    field = st.one_of(st.integers(-1, 6).map(str), st.sampled_from(["", "x", "3.5", "1e3", " 2"]), st.text(max_size=3))
    return st.lists(st.lists(field, min_size=n - 1, max_size=n + 1).map(sep.join), max_size=30).map("\n".join)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=DERANDOMIZE)
@given(st.sampled_from([("u.data", "\t", 4), ("ratings.dat", "::", 4), ("ml-100k.inter", "\t", 4)]), st.data(),
       st.sampled_from(["ml", "ml-profile"]))
def test_malformed_movielens_files_end_in_a_clear_error(tmp_path_factory, capsys, layout, data, dataset):
    name, sep, n = layout
    d = tmp_path_factory.mktemp("raw")
    text = data.draw(_lines(sep, n))
    if name.endswith(".inter"):
        text = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + text
    (d / name).write_text(text)
    users = {"u.data": ("u.user", "|"), "ratings.dat": ("users.dat", "::"), "ml-100k.inter": ("ml-100k.user", "\t")}[name]
    (d / users[0]).write_text(data.draw(_lines(users[1], 5)))
    _expect_clean_cli_exit(["plan", "--methods", "pop", "--dataset", dataset, "--data-dir", str(d),
                            "--out", str(d / "out")], capsys)


# ---------------------------------------------------------------------------------- files
spec_values = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**33), st.floats(allow_nan=True), st.text(max_size=6),
                        st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2))


@FUZZ
@given(st.one_of(spec_values, st.dictionaries(st.sampled_from(
    ["method", "dataset", "order", "noise", "seed", "preset", "overrides", "hash", "x"]), spec_values, max_size=8)))
def test_malformed_plan_lines_are_rejected_by_line(tmp_path_factory, capsys, obj):
    d = tmp_path_factory.mktemp("plan")
    good = json.dumps({**CellSpec("pop", "synthetic-mini").as_dict()})
    (d / "plan.jsonl").write_text(good + "\n" + json.dumps(obj) + "\n")
    code, err = _expect_clean_cli_exit(["run", "--plan", str(d / "plan.jsonl")], capsys)
    if code == 0:  # accepted only if the line really is a cell spec (no line is silently skipped)
        assert isinstance(CellSpec.from_dict(obj), CellSpec)
    else:
        assert "plan.jsonl:2: bad cell spec" in err or "unknown" in err


@FUZZ
@given(st.data())
def test_any_damage_to_a_result_or_sealed_file_is_detected(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("files")
    save_result(d / "r.json", {"R": [[0.25]], "spec": {"method": "pop"}})
    save_sealed(d / "s.ckpt", {"w": torch.arange(4.0), "rng": np.random.get_state(), "x": [1, "a"]}, {"k": 1})
    for path, load in ((d / "r.json", load_result), (d / "s.ckpt", load_sealed)):
        raw = bytearray(path.read_bytes())
        how = data.draw(st.sampled_from(["flip", "truncate", "garbage", "insert"]))
        if how == "flip":
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= data.draw(st.integers(1, 255))
        elif how == "truncate":
            raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
        elif how == "insert":
            i = data.draw(st.integers(0, len(raw)))
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=4))
        else:
            raw = bytearray(data.draw(st.binary(max_size=64)))
        path.write_bytes(bytes(raw))
        try:
            load(path)
        except ResultError as e:
            assert str(path) in str(e)
            continue
        # JSON may survive a change of whitespace only; then the content is unchanged.
        assert path.suffix == ".json" and load(path)["R"] == [[0.25]]


def test_sealed_files_round_trip_numpy_and_refuse_code(tmp_path):
    state = {"np": np.random.get_state(), "t": torch.ones(3), "g": np.random.default_rng(1).bit_generator.state}
    save_sealed(tmp_path / "a", state, {"x": 1})
    meta, back = load_sealed(tmp_path / "a")
    assert meta == {"x": 1} and torch.equal(back["t"], state["t"]) and np.array_equal(back["np"][1], state["np"][1])

    class Evil:  # a sealed file with a valid checksum is still not trusted to run code
        def __reduce__(self):
            return (print, ("pwned",))

    save_sealed(tmp_path / "b", {"x": Evil()}, {})
    with pytest.raises(ResultError, match="cannot load sealed payload"):
        load_sealed(tmp_path / "b")


# ---------------------------------------------------------------------------------- one error wrapper (issue 15)
@pytest.mark.parametrize("command", ["run", "plan", "report"])
@pytest.mark.parametrize("where", ["a file", "under a file", "/proc"])
def test_an_unusable_out_folder_is_a_one_line_error(tmp_path, capsys, command, where):
    (tmp_path / "f").write_text("")
    out = {"a file": tmp_path / "f", "under a file": tmp_path / "f" / "sub", "/proc": Path("/proc/curb-test")}[where]
    argv = {"run": ["run", "--methods", "pop", "--dataset", "synthetic-mini"],
            "plan": ["plan", "--methods", "pop", "--dataset", "synthetic-mini"],
            "report": ["report", str(Path(__file__).parent / "data" / "mini-run"), "--no-figures"]}[command]
    code, err = _expect_clean_cli_exit([*argv, "--out", str(out)], capsys)
    assert code == 2 and str(out) in err


def _damaged_raw_files(tmp_path: Path) -> dict[str, tuple[str, Path, str]]:
    """(dataset, folder, expected problem) for raw files that used to raise deep inside Python."""
    manifest = tmp_path / "latin1"
    manifest.mkdir()
    (manifest / "stream.json").write_bytes(b'{"name": "caf\xe9", "tasks": []}')
    not_gzip, truncated = tmp_path / "not-gzip", tmp_path / "truncated"
    for d in (not_gzip, truncated):
        d.mkdir()
    (not_gzip / "ratings_reconstructed.csv.gz").write_bytes(b"user_id,movie_id\n")
    whole = gzip.compress(b"user_id,movie_id,rating,seq_idx,orig_line\n" + b"1,2,3,0,0\n" * 2000)
    (truncated / "ratings_reconstructed.csv.gz").write_bytes(whole[: len(whole) // 2])
    return {"manifest": ("custom", manifest, "stream.json:1: not UTF-8 text"),
            "not gzip": ("ml", not_gzip, "damaged gzip file"), "truncated": ("ml", truncated, "damaged gzip file")}


@pytest.mark.parametrize("case", ["manifest", "not gzip", "truncated"])
@pytest.mark.parametrize("command", ["data info", "plan", "run"])
def test_damaged_raw_files_are_one_line_errors_in_every_command(tmp_path, capsys, case, command):
    dataset, folder, problem = _damaged_raw_files(tmp_path)[case]
    argv = {"data info": ["data", "info", dataset],
            "plan": ["plan", "--methods", "pop", "--dataset", dataset, "--out", str(tmp_path / "out")],
            "run": ["run", "--methods", "pop", "--dataset", dataset, "--out", str(tmp_path / "out")]}[command]
    code, err = _expect_clean_cli_exit([*argv, "--data-dir", str(folder)], capsys)
    assert code == 2 and problem in err


def test_a_closed_output_pipe_ends_quietly():
    """`curb methods | head -1`: the reader is gone before curb writes; no BrokenPipeError traceback."""
    p = subprocess.Popen([sys.executable, "-m", "curb", "methods"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # before the child has imported curb, let alone written
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and err == ""
