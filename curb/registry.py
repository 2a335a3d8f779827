"""The light side of the method and dataset registries: name errors, the table of built-in
methods, and loading plugins so that a broken one costs a warning, not the command.

Nothing here imports torch, numpy or pandas, so `curb --help`, `curb methods` and the data
listings answer at once; the registries themselves live in `curb.method` and `curb.data`.

Third-party methods and datasets arrive in two ways:
- entry points of installed distributions, groups `curb.methods` and `curb.datasets`: each names a
  module that registers its methods (`@register`) or datasets (`@register_dataset`) on import;
- `--import MODULE` on the command line (an importable module name or a `.py` file path). The
  modules are also recorded in `$CURB_IMPORT` (os.pathsep-separated), which every curb process
  honours, so worker processes started by `curb run --jobs N` import them too.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Iterable

from .errors import CurbError

METHODS_GROUP = "curb.methods"
DATASETS_GROUP = "curb.datasets"
IMPORT_ENV = "CURB_IMPORT"
WARNED_ENV = "CURB_PLUGIN_WARNED"  # set after warning, so worker processes (`--jobs N`) do not repeat it
_QUIET = bool(os.environ.get(WARNED_ENV))  # this process is such a worker: its parent has warned

# The built-in methods (methods/*.py): name -> (one-line summary, in `--methods all`). The classes
# are the truth (`Method.summary`, `Method.benchmark`); the table repeats them so that listing
# needs no torch, and tests/test_plugins.py fails when the two disagree.
BUILTIN_METHODS: dict[str, tuple[str, bool]] = {
    "conure": ("prune -> retrain -> freeze: disjoint magnitude-pruned kernel entries per task (BWT = 0)", True),
    "ditto": ("time-aware successor of TERACON: similarity-selected forward and backward transfer (SIGIR 2025)", True),
    "ewc": ("elastic weight consolidation: a diagonal-Fisher penalty keeps the shared backbone near past optima", True),
    "fineall": ("copy of the pre-trained T1 model fine-tuned end to end per task", True),
    "finetune": ("one shared model fine-tuned task after task, nothing protects old tasks (forgetting lower bound)", False),
    "hat": ("hard attention to the task: annealed unit gates per task, gradients masked by past gates", True),
    "lwf": ("learning without forgetting: old heads' softened outputs on each new task's inputs are distilled", True),
    "mtl": ("multi-task learning: all tasks after T1 jointly (not continual: needs the whole stream up front)", True),
    "peterrec": ("frozen pre-trained backbone + per-task model patches, LayerNorm-2 and head (SIGIR 2020)", True),
    "piggyback": ("binary masks (learned scores, straight-through) on the frozen pre-trained T1 convs", True),
    "pop": ("popularity / majority-class baseline from training-label counts (no learning)", True),
    "replay": ("experience replay (DER++): a fixed seeded buffer of training users per task replays labels and logits", True),
    "sinmo": ("single model per task from random init (no transfer; FWT reference)", True),
    "teracon": ("relation-aware task masks + relation-aware knowledge retention (KDD 2023; the paper's method)", True),
}


class PluginImportError(CurbError):
    """A module named by `--import` (or $CURB_IMPORT) failed to import."""


class UnknownNameError(CurbError, KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


_loaded_groups: set[str] = set()
_failures: list[str] = []  # one line per plugin that failed to load in this process
_imported: set[str] = set()  # --import specs already imported (file paths resolved)


def load_entry_points(group: str) -> None:
    """Import every module installed distributions register under `group`, once per process. A
    module that fails to import is skipped with one warning naming its distribution and error."""
    if group in _loaded_groups:
        return
    _loaded_groups.add(group)
    for ep in metadata.entry_points(group=group):
        try:
            ep.load()
        except Exception as e:  # noqa: BLE001  (whatever a third-party import raises)
            dist = ep.dist.name if ep.dist is not None else "unknown"
            line = f"plugin {ep.name!r} of distribution {dist!r} ({group} = {ep.value}): {type(e).__name__}: {e}"
            _failures.append(line)
            if not _QUIET:
                print(f"curb: warning: {line}; skipped, everything else works", file=sys.stderr)
    if _failures:
        os.environ[WARNED_ENV] = "1"


def failures_note() -> str:
    """Appended to unknown-name errors: the name may belong to a plugin that did not load."""
    return f" (plugins that failed to load: {'; '.join(_failures)})" if _failures else ""


def has_plugins(group: str) -> bool:
    """Whether anything beyond the built-ins may register names: entry points or --import modules."""
    return bool(os.environ.get(IMPORT_ENV)) or bool(metadata.entry_points(group=group))


def import_modules(specs: Iterable[str]) -> None:
    """Import modules that register methods or datasets (`--import`): a module name, or a path to a
    `.py` file. Each is recorded in $CURB_IMPORT for worker processes. A failure is a user error."""
    for spec in specs:
        is_file = spec.endswith(".py") or os.sep in spec or "/" in spec
        key = str(Path(spec).resolve()) if is_file else spec
        if key in _imported:
            continue
        try:
            if is_file:
                _import_file(Path(key))
            else:
                importlib.import_module(spec)
        except Exception as e:  # noqa: BLE001  (the user's module: report it in one line)
            raise PluginImportError(f"--import {spec}: {type(e).__name__}: {e}") from None
        _imported.add(key)
        recorded = [s for s in os.environ.get(IMPORT_ENV, "").split(os.pathsep) if s]
        if key not in recorded:
            os.environ[IMPORT_ENV] = os.pathsep.join([*recorded, key])


def add_import_option(parser: argparse.ArgumentParser) -> None:
    """`--import MODULE` for the commands that take or list methods and datasets."""
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import a module (a name, or a path to a .py file) that registers methods or datasets "
                        "(repeatable; worker processes import it too)")


def import_from_env() -> None:
    """Import the modules $CURB_IMPORT names (set by --import in this or a parent process)."""
    import_modules(s for s in os.environ.get(IMPORT_ENV, "").split(os.pathsep) if s)


def _import_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    name = f"curb_import_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before executing: dataclasses and pickling look the module up
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
