"""The overall section's statistics: significance marks and intervals in the overall table (a
clearly worse method is marked worse, an identical copy tied, results without per-user scores
render exactly as before, and all of it shows in markdown, LaTeX and the site), and the
average-rank table (curb.sections.ranks_table)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from test_claims import SEEDS, cell

from curb import stats
from curb.leaderboard import ranked_table
from curb.resultsets import Setting, final
from curb.sections import column_significance, overall_table, ranks_table
from curb.site import table_html


def setting(results: list[dict]) -> Setting:
    """The cells as a setting; `cell` records BWT only, the table also reads FWT."""
    for r in results:
        r["transfer"]["fwt"] = [None] * len(r["tasks"])
    return Setting("synthetic", None, (), results)


def board(per_user: bool = True) -> list[dict]:
    """TERACON, a copy of it under another name (same per-user draws), a much worse HAT, and MTL
    (no T1 score)."""
    return ([cell("teracon", s, lift=0.1, per_user=per_user) for s in SEEDS]
            + [cell("conure", s, lift=0.1, per_user=per_user, draw="teracon") for s in SEEDS]
            + [cell("hat", s, lift=-0.1, per_user=per_user) for s in SEEDS]
            + [cell("mtl", s, per_user=per_user, joint=True) for s in SEEDS])


def marks(text: str) -> str:
    return "".join(re.findall(r"[▲≈▽]", text))


def test_worse_method_is_worse_and_identical_copy_is_tied():
    t = overall_table(setting(board()))
    rows = {row[0]: i for i, row in enumerate(t.rows)}
    cells = t.cells(lambda s: s)
    for c in range(1, 5):  # T1, T2, T3, mean
        assert marks(cells[rows["hat"]][c]) == "▽"
        assert {marks(cells[rows["teracon"]][c]), marks(cells[rows["conure"]][c])} == {"▲", "≈"}
    assert marks(cells[rows["mtl"]][1]) == "" and marks(cells[rows["mtl"]][4]) == ""  # no T1, no all-task mean
    assert marks(cells[rows["mtl"]][5]) in {"≈", "▽", "▲"}  # the T2-T3 mean compares it
    assert "Holm" in t.note and "seeds 0,1,2" in t.note and "No interval" not in t.note


def test_interval_brackets_the_pooled_score_and_is_deterministic():
    results = board()
    groups = [[r for r in results if r["spec"]["method"] == m] for m in ("teracon", "hat")]
    first, seeds = column_significance(groups, ["T2"])
    assert seeds == "0,1,2" and column_significance(groups, ["T2"]) == (first, seeds)
    lo, hi = map(float, re.findall(r"[-\d.]+", first[0])[:2])
    mean = sum(r["final"]["T2"] for r in groups[0]) / len(groups[0])
    assert lo < mean < hi and hi - lo < 0.1


def test_a_column_lacking_per_user_scores_is_left_unmarked_and_named():
    results = board()
    del results[0]["per_user"]["T3"]  # TERACON seed 0 lost T3's per-user scores
    t = overall_table(setting(results))
    cells = t.cells(lambda s: s)
    assert marks(cells[1][3]) == "" and marks(cells[1][2]) != ""
    assert "No interval or mark in T3, mean, mean T2-T3" in t.note


def test_results_without_per_user_scores_render_as_before():
    t = overall_table(setting(board(per_user=False)))
    assert t.annotations == {}
    assert "[" not in t.markdown().split("\n\n")[0] and "Holm" not in t.note


def test_marks_show_in_markdown_latex_and_html():
    t = overall_table(setting(board()))
    assert "▽" in t.markdown() and "] ≈" in t.markdown()
    assert r"$\bigtriangledown$" in t.latex() and r"$\approx$" in t.latex() and "▽" not in t.latex()
    assert "▽" in table_html(t, "overall")


def test_board_ranking_moves_the_marks_with_their_cells():
    t = ranked_table(setting(board()))
    cells = t.cells(lambda s: s)
    rows = {row[1]: i for i, row in enumerate(t.rows)}
    assert t.rows[-1][1] == "hat" or rows["hat"] > rows["conure"]  # ranked below the two copies
    assert all(marks(cells[rows["hat"]][c]) == "▽" for c in range(2, 6))
    assert cells[rows["mtl"]][2] == "-"  # no T1 score: no interval either


def test_ranks_table_matches_average_ranks_and_leaves_out_a_method_without_t1():
    st = setting(board())
    table, ranks, cd = ranks_table(st)
    ranked = ["teracon", "conure", "hat"]  # mtl has no T1 score: not ranked
    scores = np.array([[np.mean([final(r, t) for r in st.select(method=m)]) for t in ("T1", "T2", "T3")]
                       for m in ranked])
    want = dict(zip(ranked, stats.average_ranks(scores)))
    assert ranks == pytest.approx(want) and "mtl" not in ranks and ranks["hat"] == 3.0
    assert [row[0] for row in table.rows][-1] == "hat" and table.rows[-1][1:] == ["3.00", "3", "3", "3"]
    assert cd == pytest.approx(stats.friedman_nemenyi(scores).cd)
    assert "Not ranked (no score on every task): mtl." in table.note


def test_ranks_need_two_methods_scored_on_every_task():
    assert ranks_table(setting([cell("teracon", s) for s in SEEDS] + [cell("mtl", s, joint=True) for s in SEEDS])) is None
