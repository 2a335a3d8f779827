"""curb.plots: figures show exactly the data handed in, files are byte-reproducible, errors are clear.

Artists are inspected on the figures the private `_*_figure` builders return (the public
functions only add the house style and the save step)."""

from __future__ import annotations

import struct

import matplotlib as mpl
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.patches import PathPatch, Rectangle

from curb import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TASKS = ["T1", "T2", "T3"]


def _r_matrix(seed: int, n: int = 3) -> np.ndarray:
    a = np.random.default_rng(seed).uniform(0.0, 0.5, (n, n))
    a[np.triu_indices(n, 1)] = np.nan
    return a


def _panels(k: int = 2) -> dict:
    return {f"m{i}": ([f"after {t}" for t in TASKS], TASKS, _r_matrix(i)) for i in range(k)}


def _transfer_frame() -> pd.DataFrame:
    rows = []
    for m, base in [("fineall", -5.0), ("teracon", 1.0), ("hat", 0.5)]:
        for j, t in enumerate(TASKS):
            rows.append(dict(method=m, task=t, kind="FWT", value=np.nan if t == "T1" else base + j, err=0.5 * j))
            rows.append(dict(method=m, task=t, kind="BWT", value=np.nan if t == "T3" else base - j,
                             err=np.nan if m == "hat" else 1.0))
    return pd.DataFrame(rows)


def _curves_frame() -> pd.DataFrame:
    """teracon: 3 seeds stopping after 4, 5, 6 epochs; hat: one seed (no band)."""
    rows = [dict(method="teracon", x=x, value=0.1 * x + 0.01 * s, seed=s) for s in range(3) for x in range(1, 5 + s)]
    rows += [dict(method="hat", x=x, value=0.3 - 0.01 * x, seed=0) for x in range(1, 4)]
    return pd.DataFrame(rows)


def _boxes_frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame([dict(method=m, value=rng.normal()) for m, n in [("teracon", 7), ("pop", 4), ("x", 1)]
                         for _ in range(n)])


def _scores_frame() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame([dict(method=m, task=t, value=rng.uniform(0.1, 0.5)) for m in ["pop", "sinmo", "teracon"]
                         for t in TASKS for _ in range(3)])


# (public function, figure builder, data) for every figure kind
KINDS = {
    "heatmaps": (plots.heatmaps, plots._heatmaps_figure, _panels(5)),
    "transfer_bars": (plots.transfer_bars, plots._transfer_figure, _transfer_frame()),
    "curves": (plots.curves, plots._curves_figure, _curves_frame()),
    "boxes": (plots.boxes, plots._boxes_figure, _boxes_frame()),
    "score_bars": (plots.score_bars, plots._score_figure, _scores_frame()),
}


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == PNG_SIGNATURE and png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


@pytest.mark.parametrize("kind", list(KINDS))
def test_writes_png_and_svg_reproducibly(kind, tmp_path):
    public, build, data = KINDS[kind]
    hashsalt = mpl.rcParams["svg.hashsalt"]
    first = public(data, tmp_path / "a" / "deep" / "fig", title="t")
    second = public(data, tmp_path / "b" / "fig", title="t")
    assert first == [tmp_path / "a" / "deep" / "fig.png", tmp_path / "a" / "deep" / "fig.svg"]
    for p, q in zip(first, second):
        assert p.read_bytes() == q.read_bytes(), f"{p.name} differs between two renders of the same data"
    png, svg = first[0].read_bytes(), first[1].read_text()
    w, h = build(data, title="t").get_size_inches() * plots.DPI
    assert _png_size(png) == (round(w), round(h))
    assert b"Software" not in png
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "<dc:date>" not in svg
    assert mpl.rcParams["svg.hashsalt"] == hashsalt, "the style must not leak into global rcParams"


def test_no_pyplot_figures_left_open(tmp_path):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plots.heatmaps(_panels(1), tmp_path / "r")
    assert plt.get_fignums() == before


def test_method_colors_fixed_distinct_and_order_independent():
    known = plots.method_colors(list(plots.KNOWN_METHODS))
    assert plots.method_colors(["teracon", "pop"]) == {"teracon": known["teracon"], "pop": known["pop"]}
    unknown = [f"new{i:02d}" for i in range(15)]  # more than the palette's free colours
    a = plots.method_colors(["teracon", *unknown])
    b = plots.method_colors([*reversed(unknown), "hat", "teracon"])
    assert all(a[m] == b[m] for m in unknown) and a["teracon"] == known["teracon"]
    everything = plots.method_colors([*plots.KNOWN_METHODS, *unknown])
    assert len(set(everything.values())) == len(everything) == 24


def test_heatmaps_blank_nan_cells_and_shared_scale():
    panels = _panels(5)
    fig = plots._heatmaps_figure(panels, fmt=".2f")
    finite = np.concatenate([a[np.isfinite(a)] for _, _, a in panels.values()])
    maps = [ax for ax in fig.axes if ax.get_title() in panels]
    assert [ax.get_title() for ax in maps] == list(panels)
    for ax, (_, _, a) in zip(maps, panels.values()):
        assert sorted(t.get_text() for t in ax.texts) == sorted(f"{v:.2f}" for v in a[np.isfinite(a)])
        assert ax.collections[0].get_clim() == (finite.min(), finite.max())
    # at most 4 panels a row: the fifth wraps to the second row
    assert [(ax.get_subplotspec().rowspan.start, ax.get_subplotspec().colspan.start) for ax in maps] == [
        (0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]
    fixed = plots._heatmaps_figure(panels, vmin=-1.0, vmax=1.0)
    assert all(ax.collections[0].get_clim() == (-1.0, 1.0) for ax in fixed.axes if ax.get_title() in panels)


def test_heatmaps_column_scale_gives_each_task_its_own_range_and_shows_raw_values():
    """R(T2) ~ 0.009 next to R(T1) ~ 0.026: on one scale T2 is uniformly dark, per column it is readable."""
    a = np.array([[0.026, np.nan], [0.024, 0.0090]])
    b = np.array([[0.025, np.nan], [0.025, 0.0093]])
    fig = plots._heatmaps_figure({"a": (["after T1", "after T2"], ["T1", "T2"], a),
                                  "b": (["after T1", "after T2"], ["T1", "T2"], b)},
                                 scale="column", fmt=".4f", xlabel="test task")
    maps = {ax.get_title(): ax for ax in fig.axes if ax.get_title() in ("a", "b")}
    colours = {k: ax.collections[0].get_array().reshape(2, 2) for k, ax in maps.items()}
    assert colours["a"][1, 1] == pytest.approx(0.0) and colours["b"][1, 1] == pytest.approx(1.0)  # T2: 0.0090..0.0093
    assert colours["a"][0, 0] == pytest.approx(1.0) and colours["a"][1, 0] == pytest.approx(0.0)  # T1: 0.024..0.026
    assert sorted(t.get_text() for t in maps["a"].texts) == ["0.0090", "0.0240", "0.0260"]  # raw values
    assert maps["a"].get_xlabel() == "test task"
    (bar,) = [ax for ax in fig.axes if ax.get_title() not in ("a", "b")]
    assert [t.get_text() for t in bar.get_yticklabels()] == ["lowest", "highest"]


def _footnote(fig) -> str:
    return " ".join(t.get_text() for t in fig.texts).replace("\n", " ")


def _bars(ax) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def _errorbar_lengths(ax) -> list[float]:
    return sorted(float(abs(s[1, 1] - s[0, 1])) for c in ax.collections if isinstance(c, LineCollection)
                  and not c.get_label().startswith("pop") for s in c.get_segments())


def test_transfer_bars_one_bar_per_finite_value():
    data = _transfer_frame()
    fig = plots._transfer_figure(data)
    panels = {ax.get_title(): ax for ax in fig.axes}
    for kind in ("FWT", "BWT"):
        ax, part = panels[kind], data[(data["kind"] == kind) & np.isfinite(data["value"])]
        assert sorted(r.get_height() for r in _bars(ax)) == pytest.approx(sorted(part["value"]))
        with_err = part[np.isfinite(part["err"])]
        assert _errorbar_lengths(ax) == pytest.approx(sorted(2 * with_err["err"]))
        assert [t.get_text() for t in ax.get_xticklabels()] == sorted(set(part["task"]))  # T1.. in order
        assert any(list(line.get_ydata()) == [0, 0] for line in ax.get_lines())
        assert ax.get_ylabel() == f"{kind} (%)" and ax.get_xlabel() == "task"
        markers = sorted(y for line in ax.get_lines() if line.get_marker() == "D" for y in line.get_ydata())
        assert markers == pytest.approx(sorted(part["value"]))  # a marker at every value
    colors = plots.method_colors(["teracon"])
    teracon_fwt = [r.get_height() for r in _bars(panels["FWT"]) if r.get_facecolor()[:3] == colors["teracon"]]
    assert teracon_fwt == pytest.approx([2.0, 3.0])


def test_zero_bars_stay_visible_and_missing_bars_are_named():
    data = _transfer_frame()
    data.loc[data["method"] == "fineall", "value"] = data.loc[data["method"] == "fineall", "value"].where(
        data["value"].isna(), 0.0)  # CONURE-like: exactly 0 everywhere
    data = data[~((data["method"] == "hat") & (data["kind"] == "FWT"))]  # no FWT for hat at all
    fig = plots._transfer_figure(data, note="Hat has none here.")
    bwt = {ax.get_title(): ax for ax in fig.axes}["BWT"]
    zeros = [line for line in bwt.get_lines() if line.get_marker() == "D" and list(line.get_ydata()) == [0.0, 0.0]]
    assert len(zeros) == 1 and zeros[0].get_markerfacecolor()[:3] == pytest.approx(plots.method_colors(["fineall"])[
        "fineall"])
    assert _footnote(fig) == "No bar (no value): FWT: hat on T2, hat on T3. Hat has none here."


def test_transfer_bars_empty_panel_says_no_data():
    data = _transfer_frame()
    data.loc[data["kind"] == "BWT", "value"] = np.nan
    ax = {ax.get_title(): ax for ax in plots._transfer_figure(data).axes}["BWT"]
    assert [t.get_text() for t in ax.texts] == ["no data"] and not _bars(ax)


def test_score_bars_baseline_is_a_dashed_line_not_bars():
    data = _scores_frame()
    stats = data.groupby(["task", "method"])["value"].agg(["mean", "std"])
    ax = plots._score_figure(data).axes[0]
    colors = plots.method_colors(["pop", "sinmo", "teracon"])
    bars = _bars(ax)
    assert len(bars) == 2 * len(TASKS)
    assert all(r.get_facecolor()[:3] != colors["pop"] for r in bars)
    others = stats.drop(index="pop", level="method")
    assert sorted(r.get_height() for r in bars) == pytest.approx(sorted(others["mean"]))
    assert _errorbar_lengths(ax) == pytest.approx(sorted(2 * others["std"]))
    (line,) = [c for c in ax.collections if c.get_label() == "pop (popularity / majority)"]
    segs = line.get_segments()
    assert [s[0, 1] for s in segs] == pytest.approx(list(stats.xs("pop", level="method")["mean"][TASKS]))
    assert [s[:, 0].mean() for s in segs] == pytest.approx(range(len(TASKS)))  # centred on each group
    assert line.get_linestyle()[0][1] is not None  # dashed
    assert "pop (popularity / majority)" in [t.get_text() for t in ax.figure.legends[0].get_texts()]

    assert _footnote(ax.figure) == ""  # nothing missing, nothing to say

    no_baseline = plots._score_figure(data, baseline="none").axes[0]
    assert len(_bars(no_baseline)) == 3 * len(TASKS)
    assert not any(c.get_label().startswith("pop") for c in no_baseline.collections)


def test_score_bars_one_panel_per_metric_and_missing_bars_named():
    data = _scores_frame()
    data["panel"] = np.where(data["task"] == "T3", "final test accuracy", "final test MRR@5")
    data = data[~((data["method"] == "teracon") & (data["task"] == "T1"))]  # e.g. MTL has no T1 score
    fig = plots._score_figure(data, note="teracon learns T2.. jointly.")
    assert [ax.get_ylabel() for ax in fig.axes] == ["final test MRR@5", "final test accuracy"]
    assert [[t.get_text() for t in ax.get_xticklabels()] for ax in fig.axes] == [["T1", "T2"], ["T3"]]
    assert [len(_bars(ax)) for ax in fig.axes] == [3, 2]  # sinmo T1, T2, teracon T2 | sinmo, teracon T3
    assert _footnote(fig) == "No bar (no value): teracon on T1. teracon learns T2.. jointly."


def test_curves_mean_over_seeds_with_band_only_for_several_seeds():
    data = _curves_frame()
    fig = plots._curves_figure(data, ylabel="MRR@5")
    ax = fig.axes[0]
    solid = {line.get_label(): line for line in ax.get_lines() if line.get_linestyle() == "-"}
    dashed = {line.get_label(): line for line in ax.get_lines() if line.get_linestyle() == "--"}
    assert list(solid) == ["teracon", "hat"] and list(dashed) == ["_teracon (fewer seeds)"]
    for m, line in solid.items():
        want = data[data["method"] == m].groupby("x")["value"].mean()
        tail = dashed.get(f"_{m} (fewer seeds)")
        xs = list(line.get_xdata()) + (list(tail.get_xdata())[1:] if tail else [])
        ys = list(line.get_ydata()) + (list(tail.get_ydata())[1:] if tail else [])
        assert xs == list(want.index) and ys == pytest.approx(list(want))
        assert line.get_marker() not in (None, "None", "")
    # teracon's three seeds all reach epoch 4; from epoch 5 fewer do: dashed from 4 on, and said so
    assert list(dashed["_teracon (fewer seeds)"].get_xdata()) == [4, 5, 6]
    assert "teracon from epoch 5 (1 of 3 at the end)" in _footnote(fig) and "hat" not in _footnote(fig)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["teracon", "hat"]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    colors = plots.method_colors(["teracon", "hat"])
    assert len(bands) == 1 and tuple(bands[0].get_facecolor()[0][:3]) == pytest.approx(colors["teracon"])
    # the band spans epochs 1..5 (x = 6 has a single seed) and is ±1 std wide at x = 1
    verts = bands[0].get_paths()[0].vertices
    assert verts[:, 0].max() == 5
    at1 = verts[verts[:, 0] == 1, 1]
    assert at1.max() - at1.min() == pytest.approx(2 * data.query("method == 'teracon' and x == 1")["value"].std())


def test_boxes_one_box_per_method_with_all_points():
    data = _boxes_frame()
    ax = plots._boxes_figure(data).axes[0]
    assert len([p for p in ax.patches if isinstance(p, PathPatch)]) == 3
    assert [t.get_text() for t in ax.get_xticklabels()] == ["teracon\n(n=7)", "pop\n(n=4)", "x\n(n=1)"]
    points = [c.get_offsets() for c in ax.collections if not isinstance(c, (LineCollection, PolyCollection))]
    assert [len(p) for p in points] == [7, 4, 1]
    for i, (m, p) in enumerate(zip(["teracon", "pop", "x"], points)):
        assert np.all(np.abs(p[:, 0] - i) <= 0.15)
        assert sorted(p[:, 1]) == pytest.approx(sorted(data.loc[data["method"] == m, "value"]))


@pytest.mark.parametrize("kind", ["transfer_bars", "curves", "boxes", "score_bars"])
def test_missing_columns_and_empty_data_are_clear_errors(kind, tmp_path):
    public, _, data = KINDS[kind]
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['value'\]"):
        public(data.drop(columns="value"), tmp_path / "f")
    with pytest.raises(ValueError, match="no data to plot"):
        public(data.iloc[:0], tmp_path / "f")
    assert not list(tmp_path.iterdir())


def test_heatmaps_bad_input():
    with pytest.raises(ValueError, match="no data to plot"):
        plots._heatmaps_figure({})
    with pytest.raises(ValueError, match="no data to plot"):
        plots._heatmaps_figure({"a": (["r"], ["c"], np.array([[np.nan]]))})
    with pytest.raises(ValueError, match=r"shape \(3, 3\).*2 row and 3 column labels"):
        plots._heatmaps_figure({"a": (["r1", "r2"], TASKS, _r_matrix(0))})


def test_transfer_bars_rejects_unknown_kind_and_duplicates():
    data = _transfer_frame()
    with pytest.raises(ValueError, match="'FWT' or 'BWT'"):
        plots._transfer_figure(data.assign(kind="fwt"))
    with pytest.raises(ValueError, match="several rows"):
        plots._transfer_figure(pd.concat([data, data.iloc[:1]]))
