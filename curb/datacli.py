"""`curb data list | fetch | info`: what data curb knows, getting it, and what a stream holds."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from tabulate import tabulate

from .registry import UnknownNameError, add_import_option

if TYPE_CHECKING:  # numpy and the data registry load in the commands: `curb --help` stays instant
    from .streams import TaskStream


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("data", help="list, fetch and inspect datasets (`curb data list|fetch|info`)",
                       description="Raw files are looked up in --data-dir, $CURB_DATA/<release>, $CURB_DATA and "
                       "~/.cache/curb/<release>; `fetch` installs into $CURB_DATA (if set) else ~/.cache/curb.")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    add_import_option(dsub.add_parser("list", help="known releases and datasets, whether present locally and where"))
    f = dsub.add_parser("fetch", help="download (or copy with --from), verify and install a release",
                        description="Download a release from its official source with a progress bar, verify the "
                        "publisher's checksum and unpack it atomically into $CURB_DATA/<release> (if CURB_DATA is "
                        "set) else ~/.cache/curb/<release>. Nothing is changed when any step fails.")
    f.add_argument("release", help="release name, e.g. ml-1m, ml-100k, ml-25m, ttl (see `curb data list`)")
    f.add_argument("--from", dest="source", default=None, metavar="PATH",
                   help="install from a local archive (.zip/.tar.gz, checksum verified) or folder instead")
    f.add_argument("--url", default=None, help="download from this mirror instead of the official URL (still verified)")
    f.add_argument("--force", action="store_true", help="replace an existing install")
    f.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the checksum check (for archives without a published checksum)")
    i = dsub.add_parser("info", help="build a dataset's task stream and print its statistics",
                        description="Users, labels and mean targets per task (the columns of the paper's dataset "
                        "table; docs/datasets.md) and the distribution of sequence lengths.")
    i.add_argument("dataset", help="dataset name (see `curb datasets`)")
    i.add_argument("--data-dir", type=Path, default=None, help="folder holding the raw files")
    i.add_argument("--json", action="store_true", help="print the statistics as JSON")
    add_import_option(i)


def cmd_data(args: argparse.Namespace) -> int:
    return {"list": cmd_list, "fetch": cmd_fetch, "info": cmd_info}[args.data_command](args)


def cmd_list(args: argparse.Namespace) -> int:
    from .data import available_datasets, available_releases, candidate_dirs, data_home, find_release, stream_cache_dir

    rows = []
    for name, rel in available_releases().items():
        found = find_release(name)
        where = str(found[0]) if found else "not found in: " + ", ".join(map(str, candidate_dirs(name, None)))
        how = (f"fetch {rel.url} (md5 pinned)" if rel.md5 else f"fetch {rel.url}") if rel.url else "manual + --from"
        rows.append([name, "present" if found else "missing", where, how])
    print(f"Releases (fetch installs into {data_home()}):")
    print(tabulate(rows, headers=["release", "status", "where", "source"], tablefmt="plain"))
    rows = []
    for name, ds in available_datasets().items():
        reads = ", ".join(ds.releases) if ds.releases else ("--data-dir" if name == "custom" else "embedded")
        rows.append([name, f"v{ds.version}", reads, ds.summary])
    print("\nDatasets (`curb run --dataset NAME`, `curb data info NAME`):")
    print(tabulate(rows, headers=["dataset", "recipe", "reads", "summary"], tablefmt="plain"))
    print(f"\nBuilt streams are cached in {stream_cache_dir()}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from .data import available_datasets, available_releases, get_release
    from .fetch import install

    ds = available_datasets()
    if args.release in ds and args.release not in available_releases():
        rels = ds[args.release].releases
        raise UnknownNameError(f"{args.release!r} is a dataset, not a release; fetch one of the releases it reads: "
                               f"{', '.join(rels) or '(none: it needs no download)'}")
    install(get_release(args.release), args.source, url=args.url, force=args.force, check=args.verify)
    return 0


def stream_stats(stream: TaskStream) -> dict:
    """The numbers of the paper's dataset table per task (docs/datasets.md), plus the sequence-length distribution."""
    import numpy as np

    lengths = (stream.sequences != 0).sum(axis=1)
    q = np.percentile(lengths, [0, 10, 25, 50, 75, 90, 100])
    tasks = []
    for j, t in enumerate(stream.tasks):
        c = t.targets.counts()
        tasks.append({"task": t.name, "kind": t.kind, "description": t.description, "users": t.targets.n_users,
                      "labels": t.n_labels, "pairs": t.targets.n_pairs, "mean_targets": float(c.mean()),
                      **({"new_items": stream.vocab_at(j) - (stream.vocab_at(j - 1) if j else 1)}
                         if stream.time_aware else {})})
    return {
        "name": stream.name, "users": stream.n_users, "items": stream.n_items,
        "seq_len": int(stream.sequences.shape[1]),
        "tasks": tasks, "fingerprint": stream.fingerprint(),
        "length": {"min": int(q[0]), "p10": float(q[1]), "p25": float(q[2]), "median": float(q[3]),
                   "p75": float(q[4]), "p90": float(q[5]), "max": int(q[6]), "mean": float(lengths.mean()),
                   "full": float((lengths == stream.sequences.shape[1]).mean())},
        "meta": stream.meta,
    }


def format_stats(s: dict) -> str:
    timed = "new_items" in s["tasks"][0]  # a time-aware stream: the items each task brings
    rows = [[t["task"], t["kind"], t["description"], f"{t['users']:,}", f"{t['labels']:,}", f"{t['pairs']:,}",
             f"{t['mean_targets']:.1f}", *([f"{t['new_items']:,}"] if timed else [])] for t in s["tasks"]]
    table = tabulate(rows, headers=["task", "kind", "description", "users |U|", "labels |Y|", "pairs",
                                    "mean targets", *(["new items"] if timed else [])], tablefmt="github",
                     colalign=("left",) * 3 + ("right",) * (5 if timed else 4), disable_numparse=True)
    ln = s["length"]
    src = ", ".join(s["meta"].get("sources", {})) or "(generated)"
    return "\n".join([
        f"{s['name']}: {s['users']:,} users, {s['items']:,} item ids (padding 0 included), sequences of "
        f"{s['seq_len']} (fingerprint {s['fingerprint']})",
        f"source: {src}" + (f" [release {s['meta']['release']}]" if "release" in s["meta"] else ""),
        "", table, "",
        "paper style (|U| / |Y|): " + " | ".join(f"{t['task']} {t['users']:,} / {t['labels']:,}" for t in s["tasks"]),
        f"sequence length (items, padding excluded): min {ln['min']}, p10 {ln['p10']:g}, p25 {ln['p25']:g}, "
        f"median {ln['median']:g}, p75 {ln['p75']:g}, p90 {ln['p90']:g}, max {ln['max']}, mean {ln['mean']:.1f}; "
        f"{ln['full']:.1%} of users fill all {s['seq_len']} positions",
    ])


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def cmd_info(args: argparse.Namespace) -> int:
    from .data import get_dataset

    recipe = get_dataset(args.dataset)
    logger = logging.getLogger("curb.data")
    handler, level = _Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        stream = recipe.stream(args.data_dir)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    s = stream_stats(stream)
    if args.json:
        print(json.dumps(s, indent=1, default=str))
        return 0
    print(format_stats(s))
    for line in handler.lines:
        print(line)
    return 0
