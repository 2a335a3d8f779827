"""Result files grouped into *settings* (dataset, preset, shared overrides and data fingerprint:
only cells of one setting are ever compared), and the accessors that read one number out of a
result dict. Reads result files only: the spec of a cell is the one its file records."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .records import PAPER_METHODS, RecordedSpec, is_cold_start, shared_part
from .results import ResultError, iter_results
from .tables import Value, finite


@dataclass
class Setting:
    """The results of one comparable setting (same dataset, data, preset, shared overrides), and
    the studies that compare it with others: its text-initialised twin and cold-start results."""

    dataset: str
    preset: str | None
    overrides: tuple[tuple[str, str], ...]
    results: list[dict]
    text_init: "Setting | None" = None  # the same setting with backbone.item_init=text
    cold_start: list[dict] = field(default_factory=list)

    @property
    def label(self) -> str:
        """dataset-preset-key=value...; a tuned file shows as `tuned=<file stem>@<6 digest digits>`."""
        def show(k: str, v: str) -> str:
            if k != "tuned":
                return f"{k}={v}"
            path, _, digest = v.rpartition("@")
            return f"tuned={Path(path).stem}@{digest[:6]}"

        parts = [self.dataset] + ([self.preset] if self.preset else []) + [show(k, v) for k, v in self.overrides]
        return "-".join(parts)

    @property
    def n_files(self) -> int:
        """Result files a page of this setting reads: its own, its text-initialised twin's and the
        cold-start study's (a board's header counts them all)."""
        return len(self.results) + (len(self.text_init.results) if self.text_init else 0) + len(self.cold_start)

    @property
    def file_tag(self) -> str:
        """The label as a file-name stem (no dots: they would read as a suffix)."""
        return re.sub(r"[^A-Za-z0-9=+_-]", "_", self.label)

    def select(self, *, method: str | None = None, order: str | None = "default", noise: object = None,
               variant: tuple[tuple[str, str], ...] | None = ()) -> list[dict]:
        """Results matching the filters; `variant` = the method's own overrides (None: any)."""
        out = []
        for r in self.results:
            s = spec_of(r)
            if method is not None and s.method != method:
                continue
            if order is not None and s.order != order:
                continue
            if noise != "any" and s.noise != noise:
                continue
            if variant is not None and s.method_overrides != variant:
                continue
            out.append(r)
        return sorted(out, key=lambda r: (spec_of(r).seed, spec_of(r).hash))

    def methods(self, **filters) -> list[str]:
        found = {spec_of(r).method for r in self.select(**filters)}
        return sorted(found, key=method_rank)


def spec_of(r: dict) -> RecordedSpec:
    return RecordedSpec.of(r)


def method_rank(name: str) -> tuple[int, str]:
    """pop first, then the paper's order, then any other method by name."""
    order = ("pop", *PAPER_METHODS)
    return (order.index(name), "") if name in order else (len(order), name)


def load_settings(run_dir: Path, echo: Callable[[str], None] = print) -> list[Setting]:
    """Every valid result under `run_dir`, grouped by setting; damaged files are reported and skipped."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    cold: list[dict] = []
    for path, r in iter_results(run_dir):
        if isinstance(r, ResultError):
            echo(f"warning: skipping {r}")
            continue
        if is_cold_start(r):
            cold.append(r)
            continue
        s = spec_of(r)
        groups[(s.dataset, s.preset or "", s.shared_overrides, r["dataset"]["base_fingerprint"])].append(r)
    settings = [Setting(d, p or None, ov, rs) for (d, p, ov, _), rs in groups.items()]
    fingerprints = {id(st): key[3] for st, key in zip(settings, groups)}
    labels = [s.label for s in settings]
    for s in settings:  # the same label on different data: say so rather than mix them
        if labels.count(s.label) > 1:
            s.overrides = (*s.overrides, ("data", fingerprints[id(s)][:8]))
    for st in settings:
        text = dict(st.overrides) | {"backbone.item_init": "text"}
        st.text_init = next((o for o in settings if o is not st and dict(o.overrides) == text
                             and (o.dataset, o.preset) == (st.dataset, st.preset)
                             and fingerprints[id(o)] == fingerprints[id(st)]), None)
        st.cold_start = [r for r in cold if _cold_start_matches(r, st, fingerprints[id(st)])]
    claimed = {id(r) for st in settings for r in st.cold_start}
    orphans: dict[tuple, list[dict]] = defaultdict(list)  # cold start run on its own: a setting of its own
    for r in cold:
        if id(r) not in claimed:
            orphans[_cold_start_setting(r)].append(r)
    settings += [Setting(d, p, ov, [], cold_start=rs) for (d, p, ov), rs in orphans.items()]
    return sorted(settings, key=lambda s: s.label)


def _cold_start_setting(r: dict) -> tuple:
    """(dataset, preset, shared overrides) of the stream a cold-start result's representation came from."""
    s = r["spec"]
    return s["dataset"], s["preset"], shared_part(tuple(sorted(s["overrides"].items())))


def _cold_start_matches(r: dict, st: Setting, fingerprint: str) -> bool:
    """A cold-start result belongs to the setting whose data, preset and shared overrides it used."""
    return (_cold_start_setting(r) == (st.dataset, st.preset, st.overrides)
            and r["dataset"]["fingerprint"] == fingerprint)


def task_names(results: list[dict]) -> list[str]:
    """Real task names in default stream order (the noise task is never reported)."""
    names: list[str] = []
    for r in sorted(results, key=lambda r: spec_of(r).order != "default"):
        for t in r["tasks"]:
            if t["name"] != "noise" and t["name"] not in names:
                names.append(t["name"])
    return names


def metric_of(results: list[dict]) -> dict[str, str]:
    return {t["name"]: t["metric"] for r in results for t in r["tasks"]}


def final(r: dict, task: str) -> Value:
    return r["final"].get(task)


def mean_final(r: dict, later_only: bool = False) -> Value:
    """Mean final score over the stream's real tasks (or over T2..T_M); None when one is missing
    (MTL has no T1 score: its all-task mean would average a different set of tasks)."""
    names = [t["name"] for t in r["tasks"] if t["name"] != "noise"][1 if later_only else 0:]
    vals = [r["final"].get(n) for n in names]
    if not vals or any(v is None or math.isnan(v) for v in vals):
        return None
    return float(np.mean(vals))


def transfer_of(r: dict, kind: str, task: str) -> Value:
    """BWT/FWT (%) of a task by name (stored in training order)."""
    tr = r.get("transfer")
    if not tr or spec_of(r).method == "pop":  # pop is not a continual learner: no transfer
        return None
    names = [t["name"] for t in r["tasks"]]
    return tr[kind][names.index(task)] if task in names else None


def transfer_mean(r: dict, kind: str) -> Value:
    """Mean BWT/FWT (%) over the real tasks that have one."""
    vals = finite(transfer_of(r, kind, t["name"]) for t in r["tasks"] if t["name"] != "noise")
    return float(np.mean(vals)) if vals else None
