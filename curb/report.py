"""`curb report`: every setting of a run folder rendered as README.md, tables (markdown, LaTeX)
and figures, and the end-of-run summary of `curb run`. Nothing here trains or evaluates; every
number is read from a sealed result (curb/resultsets.py groups them, curb/sections.py builds
each experiment's tables). Tables give mean ± sample std over seeds; the best mean per column is
in bold.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable, Sequence

from tabulate import tabulate

from . import export
from .claims import claims_table, evaluate_claims
from .document import Figure, Page, Part, markdown
from .results import ResultError
from .resultsets import (Setting, final, load_settings, mean_final, method_rank, metric_of, spec_of, task_names,
                         transfer_mean)
from .sections import (adaptation_data, adaptation_table, adaptation_task, capacity_table, cold_start_bars,
                       cold_start_tables, mask_similarity, metric_name, noisy_table, orders_data, orders_table,
                       overall_table, r_matrices, ranks_table, sampling_tables, score_axis, score_data,
                       selection_table, text_init_curves, text_init_table, training_table, transfer_data,
                       transfer_tables, validation_curves)
from .tables import fmt_stat


SECTIONS = ("overall", "training", "transfer", "noisy", "sampling", "adaptation", "text-init", "cold-start", "orders",
            "claims")


def build_sections(st: Setting, figures_dir: Path | None, only: Sequence[str] = SECTIONS) -> list[Part]:
    """A part per section of `only` that has results in this setting (titled by the section's
    name); figures written to `figures_dir` (skipped when None)."""
    if figures_dir is not None:
        from . import plots  # matplotlib only when figures are drawn

    def fig(stem: str, caption: str, draw: Callable[[Path], object]) -> list[Figure]:
        """The figure; drawn only when there is a folder to draw into."""
        if figures_dir is not None:
            draw(figures_dir / stem)
        return [Figure(stem, caption)]

    out = []
    tag = st.file_tag
    if "overall" in only and (t := overall_table(st)):
        methods = st.methods()
        joint = "mtl learns T2..T_M jointly after T1: it has no T1 score" if "mtl" in methods else ""
        figs = fig(f"{tag}-scores", "Final test score per task (bars: mean ± std over seeds, diamond at the mean; "
                   "dashed: pop)" + (f"; {joint}" if joint else ""),
                   lambda p: plots.score_bars(score_data(st), p, title=f"Final scores, {st.label}",
                                              note=f"{joint}." if joint else ""))
        figs += fig(f"{tag}-R", "R matrices (mean over seeds): row = after learning T_j, column = test task T_i with "
                    "its metric; each column has its own colour scale (lowest to highest over all methods), the "
                    "cells give the values",
                    lambda p: plots.heatmaps(r_matrices(st), p, title=f"R(T_j, T_i), {st.label}", fmt=".4f",
                                             scale="column",
                                             xlabel="test task", ylabel="", cbar_label="within each task",
                                             note=f"{joint}, so only its last row exists." if joint else ""))
        if not (td := transfer_data(st)).empty:
            figs += fig(f"{tag}-fwt-bwt", "FWT and BWT per task, relative % (mean ± std over seeds, diamond at the "
                        "mean, so a zero is visible)",
                        lambda p: plots.transfer_bars(td, p, title=f"Transfer, {st.label}",
                                                      note="T1 has no FWT and the last task no BWT; SinMo has no "
                                                           "FWT (it is the reference FWT is measured against)."))
        if ms := mask_similarity(st):
            figs += fig(f"{tag}-masks", "Cosine similarity between the tasks' masks (mean over seeds)",
                        lambda p: plots.heatmaps(ms, p, title=f"Task-mask similarity, {st.label}", fmt=".2f",
                                                 vmin=0.0, vmax=1.0, cbar_label="cosine", xlabel="task"))
        blocks: list = [t]
        if found := ranks_table(st):
            ranks, ranked, cd = found
            blocks.append(ranks)
            figs += fig(f"{tag}-cd", f"Average rank over tasks (1 = best); bars join methods whose ranks differ by "
                        f"less than the Nemenyi critical difference CD = {cd:.2f}",
                        lambda p: plots.cd_diagram(ranked, cd, p, title=f"Average ranks, {st.label}"))
        out.append(Part("overall", [*blocks, *figs]))
    if "training" in only and (t := training_table(st)):
        parts: list = [t]
        if s := selection_table(st):
            parts.append(s)
        for task in task_names(st.select()):
            data, axis = validation_curves(st, task)
            if not data.empty:
                parts += fig(f"{tag}-val-{task}", f"{axis[0].upper()}{axis[1:]} per round (mean ± std over seeds)",
                             lambda p, d=data, a=axis, n=task: plots.curves(d, p, title=f"Validation on {n}, {st.label}",
                                                                         xlabel="round", ylabel=a))
        if c := capacity_table(st):
            parts.append(c)
        out.append(Part("training", parts))
    if "transfer" in only and (ts := transfer_tables(st)):
        out.append(Part("transfer", [*ts]))
    if "noisy" in only and (t := noisy_table(st)):
        out.append(Part("noisy", [t]))
    if "sampling" in only and (ts := sampling_tables(st)):
        out.append(Part("sampling", [*ts]))
    if "adaptation" in only and (t := adaptation_table(st)):
        data, task = adaptation_data(st), adaptation_task(st.select()[0])
        axis = f"validation {metric_name(task['metric'])} on {task['name']}"
        out.append(Part("adaptation", [t, *fig(f"{tag}-adaptation", f"Learning {task['name']} after the earlier "
                                               f"tasks: {axis} per epoch (mean ± std over seeds)",
                                               lambda p: plots.curves(data, p, title=f"Adaptation, {st.label}",
                                                                      ylabel=axis))]))
    if "text-init" in only and (t := text_init_table(st)):
        data, first = text_init_curves(st), st.select()[0]["tasks"][0]
        axis = f"validation {metric_name(first['metric'])} on {first['name']}"
        out.append(Part("text-init", [t, *fig(f"{tag}-text-init", f"{axis} per epoch, random vs text init",
                                              lambda p: plots.curves(data, p, title=f"T1 with text init, {st.label}",
                                                                     ylabel=axis))]))
    if "cold-start" in only and (ts := cold_start_tables(st)):
        data, holdout = cold_start_bars(st), st.cold_start[0]["spec"]["holdout"]
        axis = f"HR@10 of NCF on the held-out {holdout}"
        out.append(Part("cold-start", [*ts, *fig(f"{tag}-cold-start", f"{axis} by user init (dashed: random init)",
                                                 lambda p: plots.score_bars(data, p, title=f"Cold start, {st.label}",
                                                                            ylabel=axis, xlabel="user group",
                                                                            baseline="random init"))]))
    if "orders" in only and (t := orders_table(st)):
        data = orders_data(st)
        names = task_names(st.select(order=None))
        axis = score_axis(st, f"mean final {{}} over {names[0]}-{names[-1]}")
        out.append(Part("orders", [t, *fig(f"{tag}-orders", f"{axis[0].upper()}{axis[1:]} per (order, seed) cell",
                                           lambda p: plots.boxes(data, p, title=f"Order robustness, {st.label}",
                                                                 ylabel=axis))]))
    if "claims" in only and st.results:  # every claim, "no data" where its results are absent
        twin = st.text_init.results if st.text_init is not None else []
        out.append(Part("claims", [claims_table(evaluate_claims([*st.results, *twin, *st.cold_start]))]))
    return out


def write_report(run_dir: Path, out: Path, only: Sequence[str] = SECTIONS, figures: bool = True,
                 echo: Callable[[str], None] = print) -> list[Path]:
    """Render every setting of `run_dir` into `out`: README.md, tables/*.md|.tex, figures/*.png|.svg
    and scores.csv (every score in long format, as `curb export` writes it). Returns README.md,
    the table files, then scores.csv."""
    settings = load_settings(run_dir, echo)
    if not settings:
        raise ResultError(f"no result files under {run_dir}")
    written = []
    page = Page(f"Report: {Path(run_dir).name}", ["Generated by `curb report` from the result files only. Every "
                                                  "score in long format: `scores.csv` (as `curb export` writes it)."])
    twins = {id(st.text_init): st for st in settings if st.text_init is not None}
    for st in settings:
        part = Part(f"{st.label} ({len({r['spec_hash'] for r in st.results})} result files)")
        page.parts.append(part)
        if id(st) in twins:  # its tables belong beside the random-init cells and their pop row
            part.blocks.append(f"Text-initialised twin of `{twins[id(st)].label}`: compared there, in the text-init "
                               "section.")
            continue
        part.parts = build_sections(st, out / "figures" if figures else None, only)
        for t in (t for sec in part.parts for t in sec.tables()):
            for ext, text in (("md", t.markdown()), ("tex", t.latex())):
                p = out / "tables" / f"{st.file_tag}-{t.name}.{ext}"
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(text + "\n")
                written.append(p)
    readme = out / "README.md"
    readme.parent.mkdir(parents=True, exist_ok=True)
    readme.write_text(markdown(page, "figures" if figures else None))
    scores = export.write(export.score_rows(run_dir, lambda _: None), out / "scores.csv", "csv")
    return [readme, *written, scores]


def final_table(results: Iterable[dict], tablefmt: str = "github") -> str:
    """The end-of-run summary of `curb run`: one row per (method, order, variant), every cell given."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in results:
        s = spec_of(r)
        groups[(method_rank(s.method), s.method, s.order_tag, ",".join(f"{k}={v}" for k, v in s.method_overrides))
               ].append(r)
    names = task_names([r for rs in groups.values() for r in rs])
    metric = metric_of([r for rs in groups.values() for r in rs])
    rows = [[m, o, *([v] if any(k[3] for k in groups) else []),
             *[fmt_stat([final(r, n) for r in rs]) for n in names], fmt_stat([mean_final(r) for r in rs]),
             fmt_stat([transfer_mean(r, "bwt") for r in rs], 2), fmt_stat([transfer_mean(r, "fwt") for r in rs], 2)]
            for (_, m, o, v), rs in sorted(groups.items())]
    headers = ["method", "order", *(["variant"] if any(k[3] for k in groups) else []),
               *[f"{n} ({metric[n]})" for n in names], "mean", "BWT %", "FWT %"]
    return tabulate(rows, headers=headers, tablefmt=tablefmt, disable_numparse=True)
