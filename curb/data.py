"""Dataset registry and data locations.

A dataset recipe (one file per recipe in `datasets/`, installed as `curb.datasets`) registers a
builder that turns raw files into a `TaskStream`. Raw files are looked up in, in order:
`--data-dir`, `$CURB_DATA/<release>`, and the per-user cache `~/.cache/curb/<release>`.
curb never ships third-party data (MovieLens may not be redistributed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .method import UnknownNameError
from .streams import TaskStream


class DataNotFoundError(FileNotFoundError):
    """Raw files are missing; the message lists where curb looked and how to get them."""


class DataFormatError(ValueError):
    """A raw file is malformed; the message names the file, the line and the problem."""

    def __init__(self, path: Path | str, line: int | None, problem: str):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.problem = str(path), line, problem


@dataclass(frozen=True)
class DatasetRecipe:
    name: str
    summary: str
    build: Callable[[Path | None], TaskStream]
    defaults: dict[str, str] = field(default_factory=dict)  # config defaults, e.g. preset


_DATASETS: dict[str, DatasetRecipe] = {}


def register_dataset(name: str, summary: str, defaults: dict[str, str] | None = None):
    """Decorator for a builder `build(data_dir: Path | None) -> TaskStream`."""

    def deco(fn: Callable[[Path | None], TaskStream]):
        _DATASETS[name] = DatasetRecipe(name, summary, fn, dict(defaults or {}))
        return fn

    return deco


def available_datasets() -> dict[str, DatasetRecipe]:
    import curb.datasets  # noqa: F401  (recipes register on import)

    return dict(sorted(_DATASETS.items()))


def get_dataset(name: str) -> DatasetRecipe:
    ds = available_datasets()
    if name not in ds:
        raise UnknownNameError(f"unknown dataset {name!r}; valid datasets: {', '.join(ds)}")
    return ds[name]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "curb"


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
