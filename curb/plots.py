"""Figures for curb reports and leaderboards (matplotlib + seaborn).

Why this module looks the way it does:
- Figures are drawn only from result-derived data handed in by the report layer (R matrices,
  transfer numbers, validation curves, final scores); nothing here computes a result, so a
  figure can never disagree with the tables built from the same result files.
- Output is deterministic: the same input gives byte-identical PNG and SVG files on the same
  matplotlib version (no date or software stamp, fixed SVG hash salt, deterministic jitter), so
  the leaderboard check can regenerate the figures and compare them with the committed ones.
- No pyplot state: every figure is a bare `matplotlib.figure.Figure` (never registered with
  pyplot, so nothing is left open and no backend is chosen for the caller), styled inside an
  `rc_context` that is undone on return.
- A method keeps its colour in every figure (`method_colors`).
- A figure says what it cannot show: a bar or curve point that has no value is named in a
  footnote (e.g. MTL has no T1 score; a curve's tail averages fewer seeds), every bar has a
  marker at its value so a zero bar stays visible, and axes name the metric and the task.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Callable, Iterable, Sequence

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from .records import PAPER_METHODS

KNOWN_METHODS = ("pop", *PAPER_METHODS)
# What a baseline is, for its legend entry in `score_bars`.
BASELINE_NOTES = {"pop": "popularity / majority"}
DPI = 150
_MAX_PANEL_COLS = 4
_GROUP_WIDTH = 0.8  # share of a task slot taken by its group of bars
_LEGEND_WIDTH = 1.8  # inches added to a figure for the legend outside the axes
_NOTE_SIZE = 8  # points: footnotes under a figure (missing bars, fewer-seed tails)


def method_colors(methods: Iterable[str]) -> dict[str, tuple]:
    """Fixed RGB colour per method: the known methods always take the same "tab10" colour (in
    KNOWN_METHODS order); unknown names take the free colours in sorted-name order, so a set of
    methods gets the same colours whatever order a figure lists them in."""
    palette = sns.color_palette("tab10") + sns.color_palette("tab20")[1::2]
    colors = {m: tuple(palette[i]) for i, m in enumerate(KNOWN_METHODS)}
    unknown = sorted({str(m) for m in methods} - set(colors))
    free = palette[len(KNOWN_METHODS):]
    if len(unknown) > len(free):
        free = free + sns.color_palette("husl", len(unknown) - len(free))
    colors.update({m: tuple(c) for m, c in zip(unknown, free)})
    return {str(m): colors[str(m)] for m in methods}


# ----------------------------------------------------------------------------------- public API


def heatmaps(panels: dict[str, tuple[list[str], list[str], np.ndarray]], path: Path, *, title: str = "",
             fmt: str = ".3f", vmin: float | None = None, vmax: float | None = None, cmap: str = "viridis",
             cbar_label: str = "", scale: str = "shared", xlabel: str = "", ylabel: str = "",
             note: str = "") -> list[Path]:
    """One annotated heatmap per panel (title = key; value = (row labels, column labels, 2-D
    array)), at most 4 panels a row; NaN cells stay blank (e.g. the upper triangle of an R
    matrix). `scale="shared"`: one colour scale (vmin/vmax default to the finite range over all
    panels); `scale="column"`: each column label (a task) gets its own scale across all panels,
    so tasks whose scores differ by orders of magnitude are each readable; the cells show the
    raw values either way. `note`: a footnote under the figure."""
    return _render(path, _heatmaps_figure, panels, title=title, fmt=fmt, vmin=vmin, vmax=vmax, cmap=cmap,
                   cbar_label=cbar_label, scale=scale, xlabel=xlabel, ylabel=ylabel, note=note)


def transfer_bars(data: pd.DataFrame, path: Path, *, title: str = "", note: str = "") -> list[Path]:
    """FWT and BWT panels of grouped bars (x = task, hue = method) from columns method, task,
    kind ("FWT"/"BWT"), value (mean, %), err (std over seeds, may be NaN). A method keeps its
    slot in both panels; a missing value leaves its slot empty and is named in a footnote
    (`note` adds the reason)."""
    return _render(path, _transfer_figure, data, title=title, note=note)


def curves(data: pd.DataFrame, path: Path, *, title: str = "", xlabel: str = "epoch",
           ylabel: str = "") -> list[Path]:
    """One line per method (mean over seeds at each x, ±1 std band where more than one seed
    reached x) from columns method, x, value, seed. Where fewer seeds than the method has reached
    x (early stopping), the line is dashed and a footnote says from which x."""
    return _render(path, _curves_figure, data, title=title, xlabel=xlabel, ylabel=ylabel)


def boxes(data: pd.DataFrame, path: Path, *, title: str = "", ylabel: str = "") -> list[Path]:
    """Box per method with every value overlaid as a jittered point, from columns method, value."""
    return _render(path, _boxes_figure, data, title=title, ylabel=ylabel)


def score_bars(data: pd.DataFrame, path: Path, *, title: str = "", ylabel: str = "", xlabel: str = "task",
               baseline: str = "pop", note: str = "") -> list[Path]:
    """Grouped bars (x = task, hue = method; mean ± std over seeds) from columns method, task,
    value (one row per seed) and optionally panel: one panel per distinct `panel` value, which is
    also its y label (say, a metric: tasks scored by MRR and by accuracy get their own y axes);
    without it one panel labelled `ylabel`. The `baseline` method is drawn as a dashed line at its
    mean across each task group instead of a bar, so beating the trivial baseline is visible at a
    glance. A (task, method) without a value leaves its slot empty and is named in a footnote
    (`note` adds the reason)."""
    return _render(path, _score_figure, data, title=title, ylabel=ylabel, xlabel=xlabel, baseline=baseline,
                   note=note)


# ------------------------------------------------------------------------------ shared plumbing


def _render(path: Path, draw: Callable[..., Figure], *args, **kwargs) -> list[Path]:
    """Draw and save under the house style; returns [png, svg]."""
    with mpl.rc_context({**sns.axes_style("whitegrid"), "svg.hashsalt": "curb", "svg.fonttype": "path"}):
        fig = draw(*args, **kwargs)
        return _save(fig, Path(path))


def _save(fig: Figure, path: Path) -> list[Path]:
    """Write path.png (dpi 150) and path.svg without date/software stamps (reproducible bytes).
    The figure was never registered with pyplot, so there is nothing to close."""
    path.parent.mkdir(parents=True, exist_ok=True)
    png, svg = path.with_suffix(".png"), path.with_suffix(".svg")
    fig.savefig(png, dpi=DPI, metadata={"Software": None})
    fig.savefig(svg, metadata={"Date": None})
    return [png, svg]


def _new_figure(nrows: int, ncols: int, panel_w: float, panel_h: float, title: str, extra_w: float = 0.0,
                notes: Sequence[str] = (), width_ratios: Sequence[float] | None = None) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure with an nrows x ncols grid of axes (always a 2-D array; column
    widths in `width_ratios`, equal by default) and the non-empty `notes` as a footnote below
    them (wrapped to the figure's width)."""
    width = ncols * panel_w + extra_w
    lines = [ln for n in notes if n for ln in textwrap.wrap(n, width=int(width * 72 / (0.55 * _NOTE_SIZE)))]
    note_h = (len(lines) * 1.35 * _NOTE_SIZE / 72 + 0.1) if lines else 0.0
    height = round((nrows * panel_h + (0.4 if title else 0.0) + note_h) * DPI) / DPI  # whole pixels
    fig = Figure(figsize=(width, height), layout="constrained")
    if title:  # centred over the panels, not over the legend column beside them
        fig.suptitle(title, x=ncols * panel_w / 2 / width)
    if lines:
        fig.get_layout_engine().set(rect=(0.0, note_h / height, 1.0, 1.0 - note_h / height))
        fig.text(0.01, 0.02 / height, "\n".join(lines), ha="left", va="bottom", fontsize=_NOTE_SIZE, color="0.25")
    return fig, fig.subplots(nrows, ncols, squeeze=False, width_ratios=width_ratios)


def _gaps(mean: pd.DataFrame) -> list[str]:
    """The (method, task) slots of a bar matrix (index = task, columns = method) left empty."""
    return [f"{m} on {str(t).splitlines()[0]}" for m in mean.columns for t in mean.index  # task name only
            if not np.isfinite(mean.loc[t, m])]


def _gap_note(gaps: Sequence[str]) -> str:
    return f"No bar (no value): {'; '.join(gaps)}." if gaps else ""


def _legend(fig: Figure, handles: list) -> None:
    """Legend outside the axes, to the right, so it never covers data."""
    fig.legend(handles=handles, loc="outside right upper", frameon=False)


def _check(data: pd.DataFrame, required: list[str], what: str, *, finite: bool = True) -> pd.DataFrame:
    """Validate columns; returns a copy with str methods/tasks, float values and (if finite)
    only the rows whose value is finite. Raises ValueError on missing columns or no data."""
    missing = [c for c in required if c not in data.columns]
    if missing:
        raise ValueError(f"{what}: data lacks column(s) {missing}; it has {list(data.columns)}")
    out = data[required].copy()
    out["method"] = out["method"].astype(str)
    if "task" in out:
        out["task"] = out["task"].astype(str)
    out["value"] = out["value"].astype(float)
    if finite:
        out = out[np.isfinite(out["value"])]
    if out.empty:
        raise ValueError(f"no data to plot in {what}: " + ("no finite value" if len(data) else "no rows"))
    return out


def _order(values: pd.Series) -> list[str]:
    """Distinct values in order of first appearance."""
    return list(pd.unique(values))


def _grouped_bars(ax: Axes, mean: pd.DataFrame, err: pd.DataFrame, colors: dict[str, tuple]) -> np.ndarray:
    """Bars for mean (index = task, columns = method) with black error bars where err is finite;
    non-finite means draw no bar. Returns the x centre of each task group."""
    methods = list(mean.columns)
    width = _GROUP_WIDTH / max(len(methods), 1)
    centres = np.arange(len(mean.index), dtype=float)
    for j, m in enumerate(methods):
        x = centres + (j - (len(methods) - 1) / 2) * width
        y, e = mean[m].to_numpy(float), err[m].to_numpy(float)
        ok = np.isfinite(y)
        ax.bar(x[ok], y[ok], width, color=colors[m], label=m)
        # A marker at the value: a bar of height 0 is invisible, its marker on the zero line is not.
        ax.plot(x[ok], y[ok], linestyle="none", marker="D", markersize=3.5, markerfacecolor=colors[m],
                markeredgecolor="black", markeredgewidth=0.6, zorder=3, label=f"_{m} value")
        has_err = ok & np.isfinite(e)
        if has_err.any():
            ax.errorbar(x[has_err], y[has_err], yerr=e[has_err], fmt="none", ecolor="black", elinewidth=0.8,
                        capsize=2)
    ax.set_xticks(centres, labels=list(mean.index))
    ax.set_xlim(-0.5, len(centres) - 0.5)
    ax.grid(False, axis="x")  # vertical grid lines would cut through the groups
    return centres


def _bar_panel_width(n_tasks: int, n_methods: int) -> float:
    """Inches for one panel of grouped bars: room for ~0.18 in per bar, at least 3.5 in."""
    return max(3.5, n_tasks * max(0.6, 0.18 * n_methods) + 1.0)


def _method_patches(methods: list[str], colors: dict[str, tuple]) -> list[Patch]:
    return [Patch(facecolor=colors[m], label=m) for m in methods]


# ------------------------------------------------------------------------------------ figures


def _heatmaps_figure(panels: dict[str, tuple[list[str], list[str], np.ndarray]], *, title: str = "",
                     fmt: str = ".3f", vmin: float | None = None, vmax: float | None = None,
                     cmap: str = "viridis", cbar_label: str = "", scale: str = "shared", xlabel: str = "",
                     ylabel: str = "", note: str = "") -> Figure:
    if not panels:
        raise ValueError("no data to plot in heatmaps: no panels")
    if scale not in ("shared", "column"):
        raise ValueError(f"heatmaps: scale must be 'shared' or 'column', got {scale!r}")
    arrays = {}
    for name, (rows, cols, values) in panels.items():
        a = np.asarray(values, dtype=float)
        if a.shape != (len(rows), len(cols)):
            raise ValueError(f"heatmaps: panel {name!r} has an array of shape {a.shape} but "
                             f"{len(rows)} row and {len(cols)} column labels")
        arrays[name] = a
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays.values()])
    if finite.size == 0:
        raise ValueError("no data to plot in heatmaps: every cell is NaN")
    if scale == "column":  # colour = position within the column's range over all panels
        lo, hi = 0.0, 1.0
        ranges: dict[str, list[float]] = {}
        for name, (_, cols, _) in panels.items():
            for j, c in enumerate(cols):
                ranges.setdefault(c, []).extend(arrays[name][:, j][np.isfinite(arrays[name][:, j])])
        colour = {}
        for name, (_, cols, _) in panels.items():
            a = arrays[name].copy()
            for j, c in enumerate(cols):
                cmin, cmax = (min(ranges[c]), max(ranges[c])) if ranges[c] else (0.0, 0.0)
                a[:, j] = (a[:, j] - cmin) / (cmax - cmin) if cmax > cmin else 0.5
            colour[name] = a
    else:
        lo = float(finite.min()) if vmin is None else vmin
        hi = float(finite.max()) if vmax is None else vmax
        colour = arrays
    n = len(panels)
    ncols = min(_MAX_PANEL_COLS, n)
    max_r = max(a.shape[0] for a in arrays.values())
    max_c = max(a.shape[1] for a in arrays.values())
    fig, axes = _new_figure(math.ceil(n / ncols), ncols, panel_w=max(2.8, 0.62 * max_c + 1.4),
                            panel_h=max(2.4, 0.42 * max_r + 1.4), title=title, extra_w=1.2, notes=[note])
    for ax, (name, (rows, cols, _)) in zip(axes.flat, panels.items()):
        a = arrays[name]
        sns.heatmap(colour[name], ax=ax, mask=~np.isfinite(a), vmin=lo, vmax=hi, cmap=cmap, cbar=False,
                    annot=a, fmt=fmt, annot_kws={"fontsize": 7.5}, xticklabels=list(cols), yticklabels=list(rows),
                    linewidths=0.5, linecolor="white")
        ax.grid(False)
        ax.tick_params(axis="y", labelrotation=0)
        ax.tick_params(axis="x", labelrotation=0)
        ax.set_title(name)
        ax.set(xlabel=xlabel, ylabel=ylabel)
    for ax in axes.flat[n:]:
        ax.remove()
    bar = fig.colorbar(axes.flat[0].collections[0], ax=list(axes.flat[:n]), label=cbar_label)
    if scale == "column":
        bar.set_ticks([0.0, 1.0], labels=["lowest", "highest"])
    return fig


def _transfer_figure(data: pd.DataFrame, *, title: str = "", note: str = "") -> Figure:
    d = _check(data, ["method", "task", "kind", "value", "err"], "transfer_bars", finite=False)
    d["err"] = d["err"].astype(float)
    bad = sorted(set(d["kind"]) - {"FWT", "BWT"})
    if bad:
        raise ValueError(f"transfer_bars: kind must be 'FWT' or 'BWT', got {bad}")
    dup = d.duplicated(["method", "task", "kind"])
    if dup.any():
        raise ValueError(f"transfer_bars: several rows for (method, task, kind) "
                         f"{d.loc[dup, ['method', 'task', 'kind']].values.tolist()}")
    tasks, methods = _order(d["task"]), _order(d["method"])
    colors = method_colors(methods)
    shown = d[np.isfinite(d["value"])]
    panels = {}
    for kind in ("FWT", "BWT"):  # a panel's tasks: those with a value; its slots: every method
        part = shown[shown["kind"] == kind]
        row_order = [t for t in tasks if t in set(part["task"])]
        mean = part.pivot(index="task", columns="method", values="value").reindex(index=row_order, columns=methods)
        err = part.pivot(index="task", columns="method", values="err").reindex(index=row_order, columns=methods)
        panels[kind] = (mean, err)
    gaps = [f"{kind}: {', '.join(g)}" for kind, (mean, _) in panels.items() if (g := _gaps(mean))]
    notes = [_gap_note(gaps), note]
    width = max(_bar_panel_width(len(mean.index), len(methods)) for mean, _ in panels.values())
    fig, axes = _new_figure(1, 2, width, 3.4, title, extra_w=_LEGEND_WIDTH, notes=notes)
    for ax, (kind, (mean, err)) in zip(axes.flat, panels.items()):
        ax.set_title(kind)
        if mean.empty:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="grey")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        _grouped_bars(ax, mean, err, colors)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set(xlabel="task", ylabel=f"{kind} (%)")
    _legend(fig, _method_patches(methods, colors))
    return fig


def _curves_figure(data: pd.DataFrame, *, title: str = "", xlabel: str = "epoch", ylabel: str = "") -> Figure:
    d = _check(data, ["method", "x", "value", "seed"], "curves")
    methods = _order(d["method"])
    colors = method_colors(methods)
    # Seeds may stop at different epochs (early stopping): each x averages the seeds that reached it.
    stats = {m: d[d["method"] == m].groupby("x")["value"].agg(["mean", "std", "count"]).sort_index() for m in methods}
    seeds = {m: d.loc[d["method"] == m, "seed"].nunique() for m in methods}
    full = {m: int((g["count"] == seeds[m]).to_numpy().argmin()) if (g["count"] < seeds[m]).any() else len(g)
            for m, g in stats.items()}  # leading points that average every seed
    tails = [f"{m} from {xlabel} {stats[m].index[full[m]]} ({int(stats[m]['count'].iloc[-1])} of {seeds[m]} "
             "at the end)" for m in methods if full[m] < len(stats[m])]
    note = f"Dashed: the mean of fewer seeds than the method has (early stopping): {'; '.join(tails)}." if tails else ""
    fig, axes = _new_figure(1, 1, 6.0, 3.6, title, extra_w=_LEGEND_WIDTH, notes=[note])
    ax = axes[0, 0]
    for m in methods:
        g = stats[m]
        x, mean, sd = g.index.to_numpy(), g["mean"].to_numpy(), g["std"].to_numpy()
        k = full[m]
        ax.plot(x[:k], mean[:k], marker="o", markersize=3, color=colors[m], label=m)
        if k < len(x):  # the tail, joined to the last full point
            ax.plot(x[max(k - 1, 0):], mean[max(k - 1, 0):], marker="o", markersize=3, color=colors[m],
                    linestyle="--", label=f"_{m} (fewer seeds)")
        band = np.isfinite(sd)  # std is NaN where a single seed reached x: no band there
        if band.any():
            ax.fill_between(x, mean - sd, mean + sd, where=band, color=colors[m], alpha=0.2, linewidth=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel=xlabel, ylabel=ylabel)
    _legend(fig, [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")])
    return fig


def _boxes_figure(data: pd.DataFrame, *, title: str = "", ylabel: str = "") -> Figure:
    d = _check(data, ["method", "value"], "boxes")
    methods = _order(d["method"])
    colors = method_colors(methods)
    values = [d.loc[d["method"] == m, "value"].to_numpy() for m in methods]
    fig, axes = _new_figure(1, 1, max(4.0, 0.8 * len(methods) + 1.5), 3.6, title)
    ax = axes[0, 0]
    positions = np.arange(len(methods), dtype=float)
    drawn = ax.boxplot(values, positions=positions, widths=0.6, patch_artist=True, showfliers=False,
                       medianprops={"color": "black"})
    rng = np.random.default_rng(0)  # deterministic jitter: same input, same file
    for pos, box, m, v in zip(positions, drawn["boxes"], methods, values):
        box.set(facecolor=(*colors[m], 0.45), edgecolor="black")
        ax.scatter(pos + rng.uniform(-0.15, 0.15, size=len(v)), v, s=10, color=colors[m], edgecolors="black",
                   linewidths=0.3, zorder=3)
    ax.set_xticks(positions, labels=[f"{m}\n(n={len(v)})" for m, v in zip(methods, values)])
    ax.grid(False, axis="x")
    ax.set_ylabel(ylabel)
    return fig


def _score_figure(data: pd.DataFrame, *, title: str = "", ylabel: str = "", xlabel: str = "task",
                  baseline: str = "pop", note: str = "") -> Figure:
    d = _check(data, ["method", "task", "value", *(["panel"] if "panel" in data.columns else [])], "score_bars")
    if "panel" not in d:
        d["panel"] = ylabel
    methods = _order(d["method"])
    colors = method_colors(methods)
    bar_methods = [m for m in methods if m != baseline]
    panels = []
    for name in _order(d["panel"]):
        part = d[d["panel"] == name]
        stats = part.groupby(["task", "method"])["value"].agg(["mean", "std"])
        tasks = _order(part["task"])
        panels.append((name, stats["mean"].unstack("method").reindex(index=tasks, columns=methods),
                       stats["std"].unstack("method").reindex(index=tasks, columns=methods)))
    widths = [_bar_panel_width(len(mean.index), len(bar_methods)) for _, mean, _ in panels]
    gaps = [g for _, mean, _ in panels for g in _gaps(mean[bar_methods])]
    fig, axes = _new_figure(1, len(panels), sum(widths) / len(panels), 3.6, title, extra_w=_LEGEND_WIDTH,
                            notes=[_gap_note(gaps), note], width_ratios=widths)
    handles: list = _method_patches(bar_methods, colors)
    label = f"{baseline} ({BASELINE_NOTES.get(baseline, 'baseline')})"
    for ax, (name, mean, err) in zip(axes.flat, panels):
        centres = _grouped_bars(ax, mean[bar_methods], err[bar_methods], colors)
        if baseline in methods:
            y = mean[baseline].to_numpy(float)
            ok = np.isfinite(y)
            half = _GROUP_WIDTH / 2 + 0.05
            ax.hlines(y[ok], centres[ok] - half, centres[ok] + half, colors=[colors[baseline]], linestyles="--",
                      linewidth=1.6, label=label, zorder=4)
        ax.set(xlabel=xlabel, ylabel=name)
    if baseline in methods:
        handles.append(Line2D([], [], color=colors[baseline], linestyle="--", linewidth=1.6, label=label))
    _legend(fig, handles)
    return fig


# ------------------------------------------------------------------------ critical difference


def cd_diagram(ranks: dict[str, float], cd: float, path: Path, *, title: str = "") -> list[Path]:
    """Critical-difference diagram (Demšar 2006): each method at its average rank on an axis
    from 1 (best, left) to k, best half labelled on the left, the rest on the right; a thick
    bar joins every maximal group whose ranks differ by less than `cd` (not significantly
    different by the Nemenyi test, `curb.stats.nemenyi_groups`); the CD is drawn to scale."""
    return _render(path, _cd_figure, ranks, cd, title=title)


def _cd_figure(ranks: dict[str, float], cd: float, *, title: str = "") -> Figure:
    from .stats import nemenyi_groups  # the grouping rule lives with the test that defines it

    names = [str(m) for m in ranks]
    r = np.array([float(v) for v in ranks.values()])
    if len(names) < 2:
        raise ValueError(f"cd_diagram needs 2 or more methods, got {len(names)}")
    if not np.isfinite(r).all() or not (np.isfinite(cd) and cd > 0):
        raise ValueError(f"cd_diagram needs finite ranks and a positive critical difference, got {ranks}, cd={cd}")
    k = len(names)
    order = [int(i) for i in np.argsort(r, kind="stable")]
    groups = nemenyi_groups(r, cd)
    colors = method_colors(names)
    # Layout in inches (1 data unit = 1 inch): the rank axis spans 3.8 in between 1.6 in label margins.
    width, axis_w, margin, row_h, bar_h = 7.0, 3.8, 1.6, 0.3, 0.12
    hi_rank = max(float(k), float(r.max()))
    x_of = lambda rank: margin + (rank - 1.0) / (hi_rank - 1.0) * axis_w
    n_left = (k + 1) // 2
    first_row = -0.3 - bar_h * len(groups)
    bottom = first_row - row_h * (max(n_left, k - n_left) - 1) - 0.3
    top = 0.75 + (0.35 if title else 0.0)
    fig = Figure(figsize=(width, top - bottom))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    ax.set_xlim(0.0, width)
    ax.set_ylim(bottom, top)
    ax.hlines(0.0, x_of(1.0), x_of(hi_rank), color="black", linewidth=1.0)
    for t in range(1, int(np.floor(hi_rank)) + 1):
        ax.vlines(x_of(t), 0.0, 0.08, color="black", linewidth=1.0)
        ax.text(x_of(t), 0.12, str(t), ha="center", va="bottom", fontsize=9)
    ax.hlines(0.55, x_of(1.0), x_of(1.0) + cd / (hi_rank - 1.0) * axis_w, color="black", linewidth=1.5)
    ax.text(x_of(1.0) + cd / (hi_rank - 1.0) * axis_w / 2, 0.6, f"CD = {cd:.2f}", ha="center", va="bottom",
            fontsize=9)
    if title:
        ax.text(width / 2, top - 0.1, title, ha="center", va="top", fontsize=11)
    for pos, i in enumerate(order):
        left = pos < n_left
        y = first_row - row_h * (pos if left else k - 1 - pos)
        x_label = margin - 0.1 if left else margin + axis_w + 0.1
        ax.plot([x_of(r[i]), x_of(r[i]), x_label], [0.0, y, y], color=colors[names[i]], linewidth=1.2)
        ax.text(x_label - 0.05 if left else x_label + 0.05, y, f"{names[i]} ({r[i]:.2f})",
                ha="right" if left else "left", va="center", fontsize=9)
    for g, members in enumerate(groups):
        y = -0.2 - bar_h * g
        ax.hlines(y, x_of(r[members[0]]) - 0.05, x_of(r[members[-1]]) + 0.05, color="black", linewidth=3.0)
    return fig
