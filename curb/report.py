"""Tables from result files (markdown/plain via tabulate). Numbers come only from results."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable

import numpy as np
from tabulate import tabulate


def _fmt(values: list[float], digits: int = 4) -> str:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals, ddof=1):.{digits}f}"


def final_table(results: Iterable[dict], tablefmt: str = "github") -> str:
    """One row per (method, order): final R(T_M, T_i) per task (mean ± std over seeds),
    the mean over tasks, and mean BWT / FWT in % (relative, METHODS.md §4.3)."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    task_order: list[str] = []
    for r in results:
        groups[(r["spec"]["method"], _order_tag(r))].append(r)
        for t in r["tasks"]:
            if t["name"] not in task_order:
                task_order.append(t["name"])
    metric_of = {}
    for rs in groups.values():
        for t in rs[0]["tasks"]:
            metric_of[t["name"]] = t["metric"]
    headers = ["method", "order"] + [f"{n} ({metric_of[n]})" for n in task_order] + ["mean", "BWT %", "FWT %"]
    rows = []
    for (method, order), rs in sorted(groups.items(), key=lambda kv: (kv[0][0] != "pop", kv[0])):
        cells = [_fmt([r["final"].get(n) for r in rs]) for n in task_order]
        means = [np.mean([v for v in r["final"].values() if v is not None]) for r in rs]
        bwt = [r["transfer"]["bwt_mean"] if r.get("transfer") else None for r in rs]
        fwt = [r["transfer"]["fwt_mean"] if r.get("transfer") else None for r in rs]
        rows.append([method, order, *cells, _fmt(means), _fmt(bwt, 2), _fmt(fwt, 2)])
    return tabulate(rows, headers=headers, tablefmt=tablefmt, disable_numparse=True)


def _order_tag(r: dict) -> str:
    s = r["spec"]
    return s["order"].replace(",", "-") + (f"+noise{s['noise']}" if s.get("noise") is not None else "")
