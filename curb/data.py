"""Dataset registry, releases, data locations and the built-stream cache.

A dataset recipe (one file per recipe in `datasets/`, installed as `curb.datasets`) registers a
builder that turns raw files into a `TaskStream`. A *release* is a set of raw files as a
publisher distributes them (e.g. GroupLens' `ml-1m.zip`); recipes declare which releases they
read. Raw files are looked up in, in order: `--data-dir`, `$CURB_DATA/<release>`, `$CURB_DATA`,
and the per-user cache `~/.cache/curb/<release>` (`$XDG_CACHE_HOME` is honoured).
curb never ships third-party data (MovieLens may not be redistributed).

Built streams are cached as `.npz` under `<cache>/streams/`, keyed by the recipe name, the
recipe version, the recipe's options and the sha256 of every source file, so a second run does
not re-parse the raw files and any change to the files or the recipe rebuilds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import CurbError
from .registry import DATASETS_GROUP, UnknownNameError, failures_note, import_from_env, load_entry_points
from .results import atomic_write_bytes, canonical, remove_stale_temp_files
from .streams import Targets, Task, TaskStream

log = logging.getLogger("curb.data")


class DataNotFoundError(CurbError, FileNotFoundError):
    """Raw files are missing; the message lists where curb looked and how to get them."""


class DataFormatError(CurbError, ValueError):
    """A raw file is malformed; the message names the file, the line and the problem."""

    def __init__(self, path: Path | str, line: int | None, problem: str):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.problem = str(path), line, problem


@dataclass(frozen=True)
class Release:
    """Raw files as their publisher distributes them, and how curb obtains them.

    `layouts`: alternative sets of file names; the release is present in a folder holding every
    file of one layout. `md5` is the publisher's own checksum of the archive at `url` (None when
    no published checksum exists; curb then refuses to download it without `--no-verify`).
    """

    name: str
    title: str
    homepage: str
    terms: str
    layouts: tuple[tuple[str, ...], ...]
    url: str | None = None
    md5: str | None = None
    md5_source: str | None = None
    manual: str = ""  # how to obtain the files when there is no downloadable archive

    def layout_in(self, folder: Path) -> tuple[str, ...] | None:
        for layout in self.layouts:
            if all((folder / f).is_file() for f in layout):
                return layout
        return None


@dataclass(frozen=True)
class ItemTexts:
    """One text per item (a movie title), keyed by the source ids the recipe keeps in the stream's
    `item_ids`; read for `backbone.item_init=text` (curb/text.py aligns them with the item table)."""

    ids: np.ndarray  # int64 source ids, unique
    texts: tuple[str, ...]  # non-empty, aligned with ids
    source: Path  # the file they were read from (provenance)


@dataclass(frozen=True)
class DatasetRecipe:
    name: str
    summary: str
    build: Callable[[Path | None], TaskStream]
    defaults: dict[str, str] = field(default_factory=dict)  # config defaults, e.g. preset
    version: str = "1"  # bump whenever the recipe's output changes: invalidates cached streams
    releases: tuple[str, ...] = ()  # releases the recipe reads, in lookup preference order
    item_texts: Callable[[Path | None], ItemTexts] | None = None  # None: the dataset's items have no text

    def stream(self, data_dir: Path | None) -> TaskStream:
        """The recipe's stream; every caller (cells, `curb plan`, `curb data info`) goes through here."""
        return _parsing(self.name, data_dir, self.build)

    def texts(self, data_dir: Path | None) -> ItemTexts:
        """The items' texts (the recipe must have `item_texts`)."""
        assert self.item_texts is not None, f"dataset {self.name} has no item texts"
        return _parsing(self.name, data_dir, self.item_texts)


# What a parser meeting input it did not anticipate raises deep inside pandas, numpy, gzip or zlib.
_PARSER_FAILURES = (ValueError, LookupError, TypeError, ArithmeticError, OSError, EOFError, MemoryError, zlib.error)


def _parsing(dataset: str, data_dir: Path | None, read: Callable[[Path | None], object]):
    """`read(data_dir)`, with an unanticipated parser failure reported as a DataFormatError (one line
    naming the dataset and folder) rather than a traceback; curb's own errors pass unchanged."""
    try:
        return read(data_dir)
    except CurbError:
        raise
    except _PARSER_FAILURES as e:
        msg = (str(e).strip().splitlines() or [""])[0]
        raise DataFormatError(f"dataset {dataset!r}" + (f" in {data_dir}" if data_dir else ""), None,
                              f"cannot read the raw files (malformed?): {type(e).__name__}: {msg}") from e


_DATASETS: dict[str, DatasetRecipe] = {}
_RELEASES: dict[str, Release] = {}


def register_dataset(name: str, summary: str, defaults: dict[str, str] | None = None, version: str = "1",
                     releases: Sequence[str] = (), item_texts: Callable[[Path | None], ItemTexts] | None = None):
    """Decorator for a builder `build(data_dir: Path | None) -> TaskStream`; `item_texts(data_dir)`
    reads the items' texts when the dataset has them (the stream must then carry `item_ids`)."""

    def deco(fn: Callable[[Path | None], TaskStream]):
        _DATASETS[name] = DatasetRecipe(name, summary, fn, dict(defaults or {}), version, tuple(releases), item_texts)
        return fn

    return deco


def register_release(release: Release) -> Release:
    _RELEASES[release.name] = release
    return release


def _load_all() -> None:
    import curb.datasets  # noqa: F401  (built-in recipes register on import)

    load_entry_points(DATASETS_GROUP)  # third-party recipes (and releases); fail soft, once per process
    import_from_env()  # modules named by --import (here or in the parent process)


def available_datasets() -> dict[str, DatasetRecipe]:
    _load_all()
    return dict(sorted(_DATASETS.items()))


def available_releases() -> dict[str, Release]:
    _load_all()
    return dict(sorted(_RELEASES.items()))


def get_dataset(name: str) -> DatasetRecipe:
    ds = available_datasets()
    if name not in ds:
        raise UnknownNameError(f"unknown dataset {name!r}; valid datasets: {', '.join(ds)}{failures_note()}")
    return ds[name]


def get_release(name: str) -> Release:
    rel = available_releases()
    if name not in rel:
        raise UnknownNameError(f"unknown release {name!r}; known releases: {', '.join(rel)} (see `curb data list`)")
    return rel[name]


# ------------------------------------------------------------------------------- locations
def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "curb"


def data_home() -> Path:
    """Where `curb data fetch` installs releases: `$CURB_DATA`, else the per-user cache."""
    return Path(os.environ["CURB_DATA"]) if os.environ.get("CURB_DATA") else cache_root()


def candidate_dirs(release: str, data_dir: Path | None) -> list[Path]:
    """Where raw files of `release` may live, in lookup order."""
    if data_dir is not None:
        return [Path(data_dir)]
    out = []
    if os.environ.get("CURB_DATA"):
        root = Path(os.environ["CURB_DATA"])
        out += [root / release, root]
    out.append(cache_root() / release)
    return out


def find_release(name: str, data_dir: Path | None = None) -> tuple[Path, tuple[str, ...]] | None:
    """The first candidate folder holding a complete layout of release `name`, and that layout."""
    rel = get_release(name)
    for d in candidate_dirs(name, data_dir):
        layout = rel.layout_in(d)
        if layout is not None:
            return d, layout
    return None


def not_found_message(what: str, releases: Sequence[str], folders: Sequence[Path]) -> str:
    """A missing-data message naming every folder and file curb looked for and how to get them."""
    rels = [get_release(r) for r in releases]
    files = ", ".join(f"{' + '.join(layout)} ({r.name})" for r in rels for layout in r.layouts)
    how = [f"`curb data fetch {r.name}` (downloads {r.url})" if r.url else
           f"`curb data fetch {r.name} --from PATH` after downloading {r.manual or r.homepage}" for r in rels]
    return (
        f"{what} not found. curb looked in\n  " + "\n  ".join(dict.fromkeys(map(str, folders))) +
        f"\nfor {files}.\nGet the data with " + ", or ".join(how) +
        f"; fetch installs into {data_home()}. Or pass --data-dir DIR (the folder holding the files), "
        "or set CURB_DATA to a folder holding <release>/ subfolders."
    )


# ------------------------------------------------------------------------------- stream cache
def file_digest(path: Path, algorithm: str = "sha256") -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def stream_cache_dir() -> Path:
    return cache_root() / "streams"


def _small(a: np.ndarray) -> np.ndarray:
    """Store integer arrays in the narrowest dtype that holds them (the cache is re-read often)."""
    a = np.asarray(a)
    if a.size == 0:
        return a.astype(np.int32)
    dt = np.result_type(np.min_scalar_type(int(a.min())), np.min_scalar_type(int(a.max())))
    return a.astype(dt)


STREAM_FORMAT = 2  # 2: item_ids stored. Part of the cache key, so older cache files are simply not found


def save_stream(stream: TaskStream, path: Path) -> None:
    """Write `stream` as an .npz (no pickles), atomically."""
    import io

    header = {
        "format": STREAM_FORMAT, "name": stream.name, "n_items": stream.n_items, "meta": stream.meta,
        "tasks": [{"name": t.name, "kind": t.kind, "n_labels": t.n_labels, "description": t.description,
                   "label_names": list(t.label_names) if t.label_names is not None else None,
                   **({"vocab": t.vocab} if t.vocab is not None else {})} for t in stream.tasks],
    }
    arrays = {"header": np.array(json.dumps(header)), "sequences": _small(stream.sequences)}
    if stream.item_ids is not None:
        arrays["item_ids"] = _small(stream.item_ids)
    for i, t in enumerate(stream.tasks):
        arrays.update({f"t{i}_users": _small(t.targets.users), f"t{i}_ptr": _small(t.targets.ptr),
                       f"t{i}_labels": _small(t.targets.labels)})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_stream(path: Path) -> TaskStream:
    with np.load(path, allow_pickle=False) as z:
        header = json.loads(str(z["header"]))
        if header.get("format") != STREAM_FORMAT:
            raise ValueError(f"unknown stream cache format {header.get('format')!r}")
        i64 = lambda k: z[k].astype(np.int64)  # noqa: E731
        tasks = tuple(
            Task(t["name"], t["kind"], t["n_labels"],
                 Targets(i64(f"t{i}_users"), i64(f"t{i}_ptr"), i64(f"t{i}_labels")),
                 label_names=tuple(t["label_names"]) if t["label_names"] is not None else None,
                 description=t["description"], vocab=t.get("vocab"))
            for i, t in enumerate(header["tasks"])
        )
        return TaskStream(header["name"], i64("sequences"), header["n_items"], tasks, meta=header["meta"],
                          item_ids=i64("item_ids") if "item_ids" in z else None)


def cached_build(dataset: str, sources: Sequence[Path], parse: Callable[[], TaskStream],
                 options: dict | None = None) -> TaskStream:
    """The stream of `dataset` built from `sources`, read from the cache when possible.

    The key covers the recipe name and version (from the registry), `options` and the sha256
    of every source file; a damaged or unreadable cache file is rebuilt, an unwritable cache
    directory only costs the re-parse next time.
    """
    version = _DATASETS[dataset].version
    digests = [file_digest(Path(p)) for p in sources]
    key = hashlib.sha256(canonical({"dataset": dataset, "version": version, "format": STREAM_FORMAT,
                                    "options": options or {},
                                    "sources": [[Path(p).name, d] for p, d in zip(sources, digests)]}).encode())
    path = stream_cache_dir() / f"{dataset}-{key.hexdigest()[:20]}.npz"
    if path.parent.is_dir():
        remove_stale_temp_files(path.parent)
    where = {"sources": {str(p): d for p, d in zip(sources, digests)}}
    if path.is_file():
        try:
            stream = load_stream(path)
            log.info("stream cache hit: %s", path)
            stream.meta.update(where)
            return stream
        except Exception as e:  # noqa: BLE001  (any damage means: rebuild)
            log.warning("ignoring damaged stream cache %s (%s)", path, e)
    stream = parse()
    stream.meta.update({"recipe_version": version, **({"options": options} if options else {})})
    try:
        save_stream(stream, path)
        log.info("stream cached: %s", path)
    except OSError as e:
        log.warning("could not write the stream cache %s (%s)", path, e)
    stream.meta.update(where)
    return stream


def check_splittable(stream: TaskStream, files: dict[str, Path | str]) -> None:
    """Fail at load time, naming the task's file, when a task cannot take the default split."""
    from .streams import SplitConfig, StreamError, split_task

    for t in stream.tasks:
        try:
            split_task(t, SplitConfig())
        except StreamError as e:
            raise DataFormatError(files.get(t.name, stream.name), None, str(e)) from None
