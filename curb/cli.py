"""Command line: `curb run`, `curb methods`, `curb datasets`, `curb data` (see `curb --help`)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import __version__
from .config import ConfigError, parse_sets
from .data import DataFormatError, DataNotFoundError, available_datasets, get_dataset
from .datacli import add_parser as add_data_parser, cmd_data
from .fetch import FetchError
from .method import UnknownNameError, available_methods, get_method
from .results import ResultError
from .streams import StreamError

# Errors that are the user's to fix: printed as one clear line, no traceback.
USER_ERRORS = (UnknownNameError, ConfigError, StreamError, DataNotFoundError, DataFormatError, ResultError, FetchError)


def _csv_ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _methods(text: str) -> list[str]:
    names = list(available_methods()) if text == "all" else [m.strip() for m in text.split(",") if m.strip()]
    for n in names:
        get_method(n)  # raises with the list of valid names
    # SinMo first: its scores are the FWT reference of every other method.
    return sorted(dict.fromkeys(names), key=lambda n: (n != "sinmo", names.index(n)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="curb",
        description="curb: benchmark continual user-representation learning methods on task streams.",
    )
    p.add_argument("--version", action="version", version=f"curb {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser(
        "run", help="run methods on a task stream and print the final per-task table",
        description="Run every (method, seed) cell on one dataset and task order; each cell writes a "
        "result JSON (R matrix, per-task metrics, FWT/BWT, config, timings) under --out. Cells whose "
        "valid result already exists are skipped.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    r.add_argument("--methods", default="sinmo,fineall", help="comma list of method names, or 'all' (see `curb methods`)")
    r.add_argument("--dataset", default="synthetic", help="dataset name (see `curb datasets`)")
    r.add_argument("--data-dir", type=Path, default=None,
                   help="folder holding the raw files (default: $CURB_DATA/<release>, then ~/.cache/curb/<release>)")
    r.add_argument("--seeds", type=_csv_ints, default=[0], help="comma list of seeds (model init and batch order)")
    r.add_argument("--order", default="default",
                   help="task order: default, reversed (T1 stays first), or a comma list such as 1,3,2 or T1,T3,T2")
    r.add_argument("--noise-task", type=int, default=None, metavar="POS",
                   help="insert the uninformative 50-class noise task after the first POS tasks")
    r.add_argument("--epochs", type=int, default=None, help="cap on epochs per task (sets train.t1_epochs and train.epochs)")
    r.add_argument("--preset", default=None, help="model size preset: paper (256 ch, 8 blocks) or small; default: the dataset's")
    r.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. train.lr=1e-3, split.level=pair, teracon.alpha=0.5 (repeatable)")
    r.add_argument("--out", type=Path, default=Path("runs"), help="output directory for result files")
    r.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    r.add_argument("--force", action="store_true", help="recompute cells even when a valid result exists")

    sub.add_parser("methods", help="list the available methods")
    sub.add_parser("datasets", help="list the available datasets")
    add_data_parser(sub)
    return p


def cmd_run(args: argparse.Namespace) -> int:
    import torch

    from .report import final_table
    from .runner import CellSpec, resolve_config, run_cell

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: CUDA is not available on this machine; use --device cpu")
    if args.epochs is not None and args.epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {args.epochs}")
    methods = _methods(args.methods)
    get_dataset(args.dataset)
    overrides = parse_sets(args.sets)
    if args.epochs is not None:
        overrides = {"train.t1_epochs": str(args.epochs), "train.epochs": str(args.epochs), **overrides}
    specs = [CellSpec(m, args.dataset, args.order, args.noise_task, s, args.preset, tuple(sorted(overrides.items())))
             for m in methods for s in args.seeds]
    for spec in specs:  # fail fast on bad config before any training
        resolve_config(spec)
    t0 = time.perf_counter()
    results = []
    for k, spec in enumerate(specs, 1):
        print(f"[{k}/{len(specs)}] ", end="")
        results.append(run_cell(spec, args.out, args.data_dir, args.device, force=args.force))
    print()
    print(final_table(results))
    print(f"\n{len(results)} cell(s) in {time.perf_counter() - t0:.1f}s; results under {args.out}/")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    for name, cls in available_methods().items():
        print(f"{name:<10} {cls.summary}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    for name, ds in available_datasets().items():
        print(f"{name:<12} {ds.summary}")
    return 0


COMMANDS = {"run": cmd_run, "methods": cmd_methods, "datasets": cmd_datasets, "data": cmd_data}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command](args)
    except USER_ERRORS as e:
        print(f"curb: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("curb: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
