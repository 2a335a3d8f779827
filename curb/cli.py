"""Command line: `curb run`, `curb plan`, `curb status`, `curb reproduce`, `curb report`,
`curb leaderboard`, `curb export`, `curb methods`, `curb datasets`, `curb data` (see `curb --help`)."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Sequence

from . import __version__
from .config import ConfigError, parse_sets, read_tuned
from .datacli import add_parser as add_data_parser, cmd_data
from .errors import USER_ERRORS
from .results import ResultError
from .registry import add_import_option, import_modules

# Everything imported above is light (no torch, pandas, matplotlib, not even numpy), so that
# `curb --help` and `curb methods` answer at once; other modules are imported where used.


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the command and pointing to its --help."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _csv_ints(text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one integer")
    if not all(0 <= v < 2**32 for v in vals):
        raise argparse.ArgumentTypeError(f"seeds must lie in 0..2**32-1, got {text!r}")
    return vals


def _noise_positions(text: str) -> list[int | None]:
    """Comma list of noise positions; `none` means no noise task (e.g. none,1,3)."""
    out = []
    for x in (x.strip() for x in text.split(",")):
        if x.lower() == "none":
            out.append(None)
        elif re.fullmatch(r"\d{1,6}", x):
            out.append(int(x))
        else:
            raise argparse.ArgumentTypeError(f"expected comma-separated positions or 'none', got {text!r}")
    return out


def _positive_int(text: str) -> int:
    if not re.fullmatch(r"\d{1,6}", text.strip()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def _threads(text: str) -> int | str:
    return "auto" if text == "auto" else _positive_int(text)


def _device(text: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:\d{1,3})?", text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text


def _methods(text: str) -> list[str]:
    """Method names of --methods: a comma list, `all` (the built-in benchmark set) or `all+plugins`
    (that set and every method plugins or --import registered); names may be mixed with either."""
    from .method import available_methods, benchmark_methods, get_method, plugin_methods

    names = []
    for m in (m.strip() for m in text.split(",") if m.strip()):
        if m.lower() == "all":
            names += benchmark_methods()
        elif m.lower() == "all+plugins":
            names += [*benchmark_methods(), *plugin_methods()]
        else:
            names.append(m)
    names = [n.lower().replace("_", "-") for n in names]
    if not names:
        raise ConfigError(f"--methods needs at least one name; valid methods: {', '.join(available_methods())}")
    for n in names:
        get_method(n)  # raises with the list of valid names
    # SinMo first: its scores are the FWT reference of every other method.
    return sorted(dict.fromkeys(names), key=lambda n: (n != "sinmo", names.index(n)))


def _add_grid_options(r: argparse.ArgumentParser) -> None:
    """The options that define a grid (methods x datasets x seeds x orders x noise), shared by run and plan."""
    r.add_argument("--methods", default="sinmo,fineall",
                   help="comma list of method names; 'all' = the built-in benchmark set, 'all+plugins' adds installed "
                   "and --import'ed methods (see `curb methods`)")
    r.add_argument("--dataset", default="synthetic", help="dataset name, or a comma list (see `curb datasets`)")
    r.add_argument("--seeds", type=_csv_ints, default=[0], help="comma list of seeds (model init and batch order)")
    r.add_argument("--order", action="append", default=None, metavar="ORDER",
                   help="task order: default, reversed (T1 stays first), or a comma list such as 1,3,2 or "
                   "T1,T3,T2; repeat for several orders (default: default)")
    r.add_argument("--noise-task", type=_noise_positions, default=[None], metavar="POS",
                   help="insert the uninformative 50-class noise task after the first POS tasks; "
                   "a comma list such as none,1,3 gives one grid axis")
    r.add_argument("--epochs", type=int, default=None, help="cap on epochs per task (sets train.t1_epochs and train.epochs)")
    r.add_argument("--preset", default=None, help="model size preset: paper (256 ch, 8 blocks) or small; default: the dataset's")
    r.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                   help="bf16 autocasts forward passes (meant for --device cuda); sets train.precision")
    r.add_argument("--item-init", choices=["random", "text"], default=None,
                   help="item embeddings: random, or text (movie titles through a sentence encoder; needs "
                   "pip install \"curb[text]\"); text sets backbone.item_init=text")
    r.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. train.lr=1e-3, split.level=pair, teracon.alpha=0.5 (repeatable)")
    r.add_argument("--tuned", default=None, metavar="FILE",
                   help="apply a tuned configuration written by `curb tune` (e.g. tuning/ml.toml); --set wins over it")
    add_import_option(r)


def _grid_specs(args: argparse.Namespace) -> list:
    """The cell specs of the grid options, each config resolved (bad values fail here)."""
    from .data import get_dataset
    from .runner import CellSpec, resolve_config
    from .text import check_dataset

    if args.epochs is not None and args.epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {args.epochs}")
    methods = _methods(args.methods)
    datasets = list(dict.fromkeys(d.strip() for d in args.dataset.split(",") if d.strip()))
    if not datasets:
        raise ConfigError("--dataset needs a name (see `curb datasets`)")
    for d in datasets:
        get_dataset(d)
    orders = list(dict.fromkeys(o.strip() for o in (args.order or ["default"])))
    if "" in orders:
        raise ConfigError("--order needs a value: default, reversed or a comma list of tasks")
    overrides = parse_sets(args.sets)
    if args.epochs is not None:
        overrides = {"train.t1_epochs": str(args.epochs), "train.epochs": str(args.epochs), **overrides}
    if args.precision is not None:
        overrides = {"train.precision": args.precision, **overrides}
    if args.item_init == "text":  # random is the default: such cells are the ordinary ones (results reused)
        overrides = {"backbone.item_init": "text", **overrides}
    if getattr(args, "tuned", None):
        overrides = {"tuned": read_tuned(args.tuned)[0], **overrides}
    specs = [CellSpec(m, d, o, n, s, args.preset, tuple(sorted(overrides.items())))
             for d in datasets for m in methods for o in orders for n in dict.fromkeys(args.noise_task)
             for s in args.seeds]
    for spec in specs:
        if resolve_config(spec).backbone.item_init == "text":
            check_dataset(spec.dataset)  # before any cell runs: e.g. synthetic items have no text
    return specs


ADOPT_HELP = ("a folder of finished results (e.g. `curb tune`'s --out): a cell whose computation is already there "
              "(same method, data, seed, order, noise, preset and resolved configuration, the tuned trial of a "
              "--tuned cell, say) takes that result instead of training again; the file records where it came from")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="curb",
        description="curb: benchmark continual user-representation learning methods on task streams.",
    )
    p.add_argument("--version", action="version", version=f"curb {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser(
        "run", help="run methods on a task stream and print the final per-task table",
        description="Run every (method, dataset, order, noise, seed) cell of a grid, or the cells of a "
        "plan file; each cell writes a result JSON (R matrix, per-task metrics, FWT/BWT, config, timings) "
        "under --out. Valid results are skipped, interrupted cells resume from their last task checkpoint, "
        "a failing cell leaves a failure record and the others go on (see docs/scaling.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_grid_options(r)
    r.add_argument("--plan", type=Path, default=None, metavar="FILE",
                   help="run the cells of a JSONL plan (from `curb plan`) instead of the grid options")
    r.add_argument("--data-dir", type=Path, default=None,
                   help="folder holding the raw files (default: $CURB_DATA/<release>, then ~/.cache/curb/<release>)")
    r.add_argument("--out", type=Path, default=None,
                   help="output directory for result files (default: the plan's folder with --plan, else runs)")
    r.add_argument("--device", type=_device, default="cpu", help="cpu or cuda[:N]")
    r.add_argument("--jobs", type=_positive_int, default=1, help="cells run at once in local worker processes")
    r.add_argument("--threads", type=_threads, default=1,
                   help="torch threads per cell; fixed so numbers do not depend on --jobs ('auto': usable cores // jobs)")
    r.add_argument("--backend", choices=("local", "dask"), default="local",
                   help="local processes, or a Dask cluster (needs --scheduler and `pip install curb[dask]`)")
    r.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="Dask scheduler address, e.g. tcp://127.0.0.1:8786 or tls://host:8786 (docs/scaling.md)")
    r.add_argument("--force", action="store_true", help="recompute cells even when a valid result or checkpoint exists")
    r.add_argument("--adopt", type=Path, default=None, metavar="DIR", help=ADOPT_HELP)

    pl = sub.add_parser(
        "plan", help="write a grid of cells as a JSONL plan for `curb run --plan`",
        description="Write the grid (methods x datasets x orders x noise x seeds) as one JSON cell spec per "
        "line to DIR/plan.jsonl (merged with cells already planned there); every config is checked first.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_grid_options(pl)
    pl.add_argument("--data-dir", type=Path, default=None, help="where to check orders against the data, if present")
    pl.add_argument("--out", type=Path, required=True, metavar="DIR", help="run folder that receives plan.jsonl")

    st = sub.add_parser("status", help="list the done / running / failed / pending cells of a run folder",
                        description="List every cell of RUN_DIR (its plan.jsonl, results, checkpoints, "
                        "failure records) with its state and detail.")
    st.add_argument("run_dir", type=Path, metavar="RUN_DIR")

    from .experiments import EXPERIMENTS

    rp = sub.add_parser(
        "reproduce", help="run one of the paper's experiments (reusing finished cells) and render its tables",
        description="Run the cells of one or more experiments on a dataset, then write their tables and figures "
        "to OUT/report/ and print the tables. Cells shared with other experiments or earlier runs in OUT are "
        "reused, never recomputed. Experiments: " + "; ".join(f"{e.name}: {e.summary}" for e in EXPERIMENTS.values()),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    rp.add_argument("experiments", metavar="EXPERIMENT", help=f"comma list of: {', '.join(EXPERIMENTS)}, or 'all'")
    rp.add_argument("--dataset", required=True, help="dataset name (see `curb datasets`)")
    rp.add_argument("--seeds", type=_csv_ints, default=[0, 1, 2], help="comma list of seeds")
    rp.add_argument("--methods", default=None, help="override the experiment's methods (comma list)")
    rp.add_argument("--preset", default=None, help="model size preset (paper or small); default: the dataset's")
    rp.add_argument("--epochs", type=int, default=None, help="cap on epochs per task")
    rp.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="shared override (backbone., train., split.; ncf. for cold-start), repeatable")
    rp.add_argument("--tuned", default=None, metavar="FILE",
                    help="apply a tuned configuration written by `curb tune` to every cell (e.g. tuning/ml.toml); "
                    "--set wins over it")
    rp.add_argument("--n-orders", type=_positive_int, default=6, help="orders: number of task orders")
    rp.add_argument("--order-seed", type=int, default=0, help="orders: seed of the random task orders")
    rp.add_argument("--noise-position", type=int, default=None,
                    help="noisy: insert T' after this many tasks (default: 3, or M-1 on shorter streams)")
    rp.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<dataset>)")
    rp.add_argument("--data-dir", type=Path, default=None, help="folder holding the raw files")
    rp.add_argument("--device", type=_device, default="cpu", help="cpu or cuda[:N]")
    rp.add_argument("--jobs", type=_positive_int, default=1,
                    help="cells run at once in local worker processes (the cold-start study: seeds at once)")
    rp.add_argument("--threads", type=_positive_int, default=1, help="torch threads per cell")
    rp.add_argument("--adopt", type=Path, default=None, metavar="DIR", help=ADOPT_HELP)
    rp.add_argument("--dry-run", action="store_true", help="list the cells and how many are done; run nothing")
    rp.add_argument("--no-figures", action="store_true", help="tables only")

    rep = sub.add_parser(
        "report", help="render the tables (markdown, LaTeX) and figures of a run folder",
        description="Read every result file under RUN_DIR, group them by setting (dataset, preset, shared "
        "overrides, data) and write OUT/README.md, OUT/tables/*.md|.tex and OUT/figures/*.png|.svg: overall, "
        "transfer, noisy, sampling, adaptation, order-robustness and claims sections, each where its cells exist.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    rep.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    rep.add_argument("--out", type=Path, default=None, help="output folder (default: RUN_DIR/report)")
    rep.add_argument("--sections", default="all",
                     help="comma list of report sections (a wrong name lists them), or 'all'")
    rep.add_argument("--no-figures", action="store_true", help="tables only")

    add_import_option(rp)

    tu = sub.add_parser(
        "tune", help="equal-budget tuning of each method on validation; writes a tuned configuration file",
        description="For every method that trains, run --trials cells (trial 0: the defaults; the others drawn at "
        "random from the learning rate of each task kind and the method's own key knobs, seeded) and pick the "
        "trial whose final model has the best mean validation lift over popularity (validation only: test "
        "scores are never read). Writes the choice to --write, for `curb run --tuned FILE`. Trials are ordinary "
        "cells under --out: they run in parallel, resume, and are kept (docs/protocol.md §4.9).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    tu.add_argument("--methods", default="all", help="comma list of method names, or 'all'")
    tu.add_argument("--dataset", required=True, help="dataset name (see `curb datasets`)")
    tu.add_argument("--preset", default=None, help="model size preset; default: the dataset's")
    tu.add_argument("--trials", type=_positive_int, default=8, help="trials per method (the same for every method)")
    tu.add_argument("--seed", type=int, default=0, help="seed of the trials' cells and of the random draws")
    tu.add_argument("--epochs", type=int, default=None, help="cap on rounds per task (sets train.t1_epochs and train.epochs)")
    tu.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="fixed overrides for every trial (repeatable)")
    tu.add_argument("--out", type=Path, required=True, metavar="DIR", help="run folder of the trials")
    tu.add_argument("--write", type=Path, required=True, metavar="FILE", help="the tuned configuration file to write")
    tu.add_argument("--data-dir", type=Path, default=None, help="folder holding the raw files")
    tu.add_argument("--jobs", type=_positive_int, default=1, help="cells run at once in local worker processes")
    tu.add_argument("--threads", type=_positive_int, default=1, help="torch threads per cell")
    tu.add_argument("--dry-run", action="store_true",
                    help="list every trial with its validation lift so far (pending ones marked) and the best per "
                    "method; run nothing, write nothing")

    from .export import add_parser as add_export_parser

    add_export_parser(sub)
    cp = sub.add_parser(
        "compare", help="test whether a protocol knob changes the scores (paired over users and seeds)",
        description="Group the result files under RUN_DIR into cells that differ only in the config key --by "
        "(e.g. train.pairs_per_user, split.level, teracon.sampling), and compare every value (arm) with the "
        "--against arm per method and task: score, lift over pop, relative difference with a paired bootstrap "
        "interval, a paired sign-flip test over the same users and seeds (Holm per task) and its verdict. Arms "
        "that score different test users are shown side by side without a test; a setting that has only the "
        "--against arm still gets its scores and lift over pop. docs/protocol.md §4.8 is built with this command.")
    cp.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    cp.add_argument("--by", required=True, metavar="KEY", help="config key whose values are the arms (section.field)")
    cp.add_argument("--against", required=True, metavar="VALUE", help="the reference arm ('none' for a None value)")
    cp.add_argument("--methods", default=None, help="comma list of methods to show (default: all found)")
    cp.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the sign flips")
    cp.add_argument("--out", type=Path, default=None, metavar="FILE", help="also write the tables to this markdown file")
    lb = sub.add_parser("leaderboard", help="build or check the published leaderboards from result files",
                        description="build: write leaderboards/<board>/README.md, results.csv and figures from the "
                        "result JSONs named in the boards file; check: rebuild the text in memory and fail on any "
                        "difference (CI runs it). Works from any folder: the boards file is --boards, else "
                        "leaderboards/boards.toml under --root, the current folder, or the repository curb is "
                        "installed from.")
    lb.add_argument("action", choices=("build", "check"))
    where = lb.add_mutually_exclusive_group()
    where.add_argument("--boards", type=Path, default=None, metavar="FILE", help="boards file")
    where.add_argument("--root", type=Path, default=None, metavar="DIR",
                       help="repository root holding leaderboards/boards.toml")
    lb.add_argument("--no-figures", action="store_true", help="build: tables only")
    add_import_option(sub.add_parser("methods", help="list the available methods"))
    add_import_option(sub.add_parser("datasets", help="list the available datasets"))
    add_data_parser(sub)
    return p


def cmd_run(args: argparse.Namespace) -> int:
    import torch

    from .grid import GridError, auto_threads, read_plan, run_grid
    from .report import final_table
    from .results import load_result

    if args.backend == "local" and args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: CUDA is not available on this machine; use --device cpu")
    if args.scheduler and args.backend != "dask":
        raise ConfigError("--scheduler is only used with --backend dask")
    if args.backend == "dask" and (args.jobs != 1 or args.threads == "auto"):
        raise ConfigError("--jobs and --threads auto are for --backend local; a Dask cluster runs as many cells "
                          "as it has worker processes, each with --threads N torch threads")
    if args.plan is not None:
        defaults = vars(build_parser().parse_args(["run"]))
        fixed = [f"--{k.replace('_', '-')}" for k in ("methods", "dataset", "seeds", "order", "noise_task", "epochs",
                                                       "precision", "item_init", "preset", "sets", "tuned")
                 if getattr(args, k) != defaults[k]]
        if fixed:
            raise ConfigError(f"--plan FILE already fixes the grid; drop {', '.join(fixed)}")
        specs = read_plan(args.plan)
        out = args.out or args.plan.parent
    else:
        specs = _grid_specs(args)
        out = args.out or Path("runs")
    threads = auto_threads(args.jobs) if args.threads == "auto" else args.threads
    t0 = time.perf_counter()
    outcomes = run_grid(specs, out, data_dir=args.data_dir, device=args.device, jobs=args.jobs, threads=threads,
                        backend=args.backend, scheduler=args.scheduler, force=args.force, adopt=args.adopt)
    try:
        results = [load_result(out / o["path"]) for o in outcomes if o["status"] == "done"]
    except ResultError as e:
        raise GridError(f"{e}: a cell finished but its result is not readable here; with --backend dask, "
                        "--out must be a folder shared by this machine and every worker") from None
    failed = [o for o in outcomes if o["status"] == "failed"]
    busy = [o for o in outcomes if o["status"] == "busy"]
    if results:
        print()
        print(final_table(results))
    print(f"\n{len(results)} of {len(outcomes)} cell(s) done in {time.perf_counter() - t0:.1f}s; results under {out}/")
    for o in failed:
        print(f"curb: cell {o['label']} failed: {o['error'].splitlines()[0] if o['error'] else ''} "
              f"(record: {out}/.cells/{o['hash']}.failed.json)", file=sys.stderr)
    for o in busy:
        print(f"curb: cell {o['label']} not started: {o['error']}; rerun once that process has ended", file=sys.stderr)
    return _stopped_code(outcomes) or (1 if failed or busy else 0)


def cmd_tune(args: argparse.Namespace) -> int:
    import shlex

    from .grid import run_grid
    from .tuning import choose, trial_specs, write_tuned

    base = parse_sets(args.sets)
    if args.epochs is not None:
        base = {"train.t1_epochs": str(args.epochs), "train.epochs": str(args.epochs), **base}
    specs, of = trial_specs(_methods(args.methods), args.dataset, args.trials, args.seed, args.preset, base,
                            args.data_dir)
    if args.dry_run:
        return _print_trials(args.out, specs, of)
    outcomes = run_grid(specs, args.out, data_dir=args.data_dir, jobs=args.jobs, threads=args.threads)
    if code := _stopped_code(outcomes):
        return code
    missing = [o["label"] for o in outcomes if o["status"] != "done"]
    if missing:
        print(f"curb: {len(missing)} trial cell(s) not finished ({', '.join(missing[:4])}...); rerun to resume; "
              f"{args.write} not written", file=sys.stderr)
        return 1
    chosen, rows = choose(args.out, specs, of)
    meta = {"dataset": args.dataset, "preset": args.preset or "(dataset default)", "seed": str(args.seed),
            "trials_per_method": str(args.trials), "objective": "mean over tasks after T1 of val score / pop val score",
            "command": "curb " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["tune"] else "curb tune"}
    write_tuned(args.write, chosen, rows, meta)
    for m, t in sorted(chosen.items()):
        lift = next(r["val_lift"] for r in rows if r["method"] == m and r["trial"] == t.index)
        print(f"{m:<10} trial {t.index}  val lift {lift:.4f}  {dict(t.overrides) or '(defaults)'}")
    print(f"wrote {args.write}")
    return 0


def _print_trials(out: Path, specs: list, of: dict) -> int:
    """`curb tune --dry-run`: the trial table as it stands (a long tuning run can be read mid-way)."""
    import math

    from tabulate import tabulate

    from .results import load_result
    from .tuning import choose

    try:
        load_result(Path(out) / specs[0].relpath())
    except ResultError:
        print(f"{out}: the popularity cell every trial is scored against has not run yet; "
              f"{len(specs) - 1} trial(s) pending")
        return 0
    chosen, rows = choose(out, specs, of)
    table = [[r["method"], r["trial"], "pending" if math.isnan(r["val_lift"]) else f"{r['val_lift']:.4f}",
              "best so far" if r["method"] in chosen and chosen[r["method"]].index == r["trial"] else "",
              ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "(defaults)"] for r in rows]
    print(tabulate(table, headers=["method", "trial", "val lift", "", "overrides"], tablefmt="github",
                   disable_numparse=True))
    done = sum(not math.isnan(r["val_lift"]) for r in rows)
    print(f"{done} of {len(rows)} trial(s) done in {out}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from .data import DataNotFoundError
    from .grid import check_stream, prepare_out, record_plan

    specs = _grid_specs(args)
    prepare_out(args.out)
    checks = {(s.dataset, s.order, s.noise, s.preset, s.overrides): s for s in specs}
    unchecked = 0
    for s in checks.values():  # orders and noise positions need the stream: check it when the data is here
        try:
            check_stream(s, args.data_dir)
        except DataNotFoundError:
            unchecked += 1
    path, new = record_plan(args.out, specs)
    print(f"{len(specs)} cell(s), {new} new, in {path}")
    if unchecked:
        print(f"note: data not found here for {unchecked} dataset/order combination(s); orders are checked where cells run")
    print(f"run it with: curb run --plan {path}  [--jobs N | --backend dask --scheduler ADDRESS]")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from .grid import overrides_text, status

    if not args.run_dir.is_dir():
        raise ConfigError(f"{args.run_dir} is not a folder")
    rows, notes = status(args.run_dir)
    counts = {k: sum(r.state == k for r in rows) for k in ("done", "running", "failed", "pending")}
    print(f"{args.run_dir}: {len(rows)} cell(s): " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    if rows:
        print(tabulate([[r.state, r.spec.dataset, r.spec.method, r.spec.order_tag, r.spec.seed,
                         overrides_text(r.spec) or "-", r.spec.hash, r.detail] for r in rows],
                       headers=["state", "dataset", "method", "order", "seed", "overrides", "cell", "detail"],
                       tablefmt="plain", disable_numparse=True))
    for n in notes:
        print(f"note: {n}")
    return 0


def _stopped_code(outcomes: list[dict]) -> int | None:
    """After a grid that a stop request (Ctrl-C, SIGTERM) cut short: say how to resume and return
    the shell's code for that signal, so nothing that follows the grid in a command runs."""
    import signal

    from .grid import stop_signal

    stopped = [o for o in outcomes if o["status"] == "interrupted"]
    if not stopped:
        return None
    print(f"curb: interrupted; {len(stopped)} cell(s) not finished: rerun the same command to resume "
          "(a cell continues after its last finished round)", file=sys.stderr)
    return 128 + (stop_signal() or signal.SIGINT)


def _names(text: str, valid: Sequence[str], what: str) -> list[str]:
    names = list(valid) if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in valid]
    if bad or not names:
        raise ConfigError(f"unknown {what} {', '.join(map(repr, bad)) or '(none given)'}; valid: {', '.join(valid)}, all")
    return names


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .data import get_dataset
    from .experiments import EXPERIMENTS, ExperimentArgs, experiment_cells
    from .grid import prepare_out, run_grid, run_lock, torch_threads
    from .report import write_report
    from .text import check_dataset

    names = _names(args.experiments, list(EXPERIMENTS), "experiment")
    recipe = get_dataset(args.dataset)  # unknown names fail here, listing the valid ones
    if "text-init" in names and recipe.item_texts is None:
        if args.experiments.strip() != "all":
            check_dataset(args.dataset)  # named explicitly: refused with the reason, before any cell runs
        names.remove("text-init")
        print(f"text-init skipped: {args.dataset} items have no texts")
    overrides = parse_sets(args.sets)
    if args.epochs is not None:
        if args.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, got {args.epochs}")
        overrides = {"train.t1_epochs": str(args.epochs), "train.epochs": str(args.epochs), **overrides}
    if args.tuned:
        overrides = {"tuned": read_tuned(args.tuned)[0], **overrides}
    methods = tuple(_methods(args.methods)) if args.methods else None
    ncf = {k: v for k, v in overrides.items() if k.startswith("ncf.")}  # only the cold-start study reads these
    cells = {k: v for k, v in overrides.items() if k not in ncf}
    exp = ExperimentArgs(args.dataset, tuple(args.seeds), args.preset, tuple(sorted(cells.items())), methods,
                         args.n_orders, args.order_seed, args.noise_position, tuple(sorted(ncf.items())),
                         args.data_dir)
    specs = experiment_cells(names, exp)
    out = args.out or Path("runs") / args.dataset
    done = sum((out / s.relpath()).exists() for s in specs)
    print(f"{', '.join(names)} on {args.dataset}: {len(specs)} cell(s), {done} already in {out}/")
    if args.dry_run:
        for s in specs:
            print(f"  {'done' if (out / s.relpath()).exists() else 'todo'}  {s.relpath()}")
        return 0
    # The studies that are not grids write into OUT after the cells: the folder stays held throughout.
    with run_lock(prepare_out(out)):
        outcomes = run_grid(specs, out, data_dir=args.data_dir, device=args.device, jobs=args.jobs,
                            threads=args.threads, adopt=args.adopt)
        if code := _stopped_code(outcomes):  # a stop request ends the command: no study, no report
            return code
        with torch_threads(args.threads):  # same thread rule as the cells
            for n in names:
                if EXPERIMENTS[n].run is not None:
                    EXPERIMENTS[n].run(exp, out, args.device, print, args.jobs)
        written = write_report(out, out / "report", only=[*names, "overall"], figures=not args.no_figures)
    print((out / "report" / "README.md").read_text())
    print(f"report: {written[0]} ({len(written) - 2} table files, {written[-1].name}, figures in "
          f"{out / 'report' / 'figures'})")
    failed = [o for o in outcomes if o["status"] != "done"]
    for o in failed:
        print(f"curb: cell {o['label']} {o['status']}; rerun the same command to resume", file=sys.stderr)
    return 1 if failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    from .grid import prepare_out
    from .report import SECTIONS, write_report

    if not args.run_dir.is_dir():
        raise ConfigError(f"{args.run_dir} is not a folder")
    only = _names(args.sections, list(SECTIONS), "section")
    out = prepare_out(args.out or args.run_dir / "report")
    written = write_report(args.run_dir, out, only=only, figures=not args.no_figures)
    print(written[0].read_text())
    print(f"wrote {written[0]}, {out / 'scores.csv'} and {len(written) - 2} table file(s)"
          + ("" if args.no_figures else f"; figures in {out / 'figures'}"))
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from .leaderboard import build, check, find_boards

    boards = find_boards(args.boards, args.root)
    if args.action == "build":
        build(boards, figures=not args.no_figures)
        return 0
    problems = check(boards)
    for p in problems:
        print(f"curb: leaderboard check: {p}")
    if problems:
        print("curb: leaderboard check FAILED: rebuild with `curb leaderboard build` after changing results")
        return 1
    print(f"leaderboards in {boards.parent} match their result files")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import cmd_export

    return cmd_export(args)


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import cmd_compare

    return cmd_compare(args)


def cmd_methods(args: argparse.Namespace) -> int:
    """Built-in methods from the static table (no torch import); plugins only when there are any."""
    from .registry import BUILTIN_METHODS, METHODS_GROUP, has_plugins

    for name, (summary, in_all) in BUILTIN_METHODS.items():
        print(f"{name:<10} {summary}" + ("" if in_all else " (not in --methods all)"))
    if has_plugins(METHODS_GROUP):
        from .method import available_methods, is_builtin

        for name, cls in available_methods().items():
            if not is_builtin(cls):
                print(f"{name:<10} {cls.summary} (plugin: --methods {name} or all+plugins)")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from .data import available_datasets

    for name, ds in available_datasets().items():
        print(f"{name:<12} {ds.summary}")
    return 0


COMMANDS = {"run": cmd_run, "tune": cmd_tune, "plan": cmd_plan, "status": cmd_status, "reproduce": cmd_reproduce,
            "report": cmd_report, "leaderboard": cmd_leaderboard, "export": cmd_export, "compare": cmd_compare, "methods": cmd_methods,
            "datasets": cmd_datasets, "data": cmd_data}


def main(argv: list[str] | None = None) -> int:
    """The one error wrapper of every command: a user error, or a file-system refusal (a path under a
    file, a read-only folder, a full disk), is one line on stderr and exit code 2; a closed output
    pipe (`curb ... | head`) ends quietly with 141 (128 + SIGPIPE), as a shell tool would."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        import_modules(getattr(args, "imports", []))
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe surfaces here, inside the wrapper, not at interpreter exit
        return code
    except BrokenPipeError:
        _discard_stdout()
        return 141
    except USER_ERRORS as e:
        print(f"curb: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        where = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
        print(f"curb: error: {where + ': ' if where else ''}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("curb: interrupted", file=sys.stderr)
        return 130


def _discard_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail on the closed pipe again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    raise SystemExit(main())
