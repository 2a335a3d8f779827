"""Experiments, report and leaderboards on stored results (tests/data/mini-run: every experiment of
`curb reproduce all` on synthetic-mini, seeds 0 and 1). Golden texts: tests/data/golden (rewrite
them with `python tests/data/regen_golden.py` after an intended rendering change)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from curb.cli import main
from curb.config import ConfigError
from curb.experiments import ExperimentArgs, experiment_cells, get_experiment, task_orders
from curb.document import markdown
from curb.leaderboard import BoardsError, board_page, board_setting, build, check, read_boards, results_csv
from curb.report import build_sections, write_report
from curb.resultsets import load_settings
from curb.sections import (adaptation_data, adaptation_table, cold_start_tables, noisy_table, overall_table,
                           sampling_tables, text_init_table)
from curb.tables import mean_std
from curb.results import load_result, save_result
from curb.runner import CellSpec

DATA = Path(__file__).parent / "data"
RUN = DATA / "mini-run"


@pytest.fixture(scope="module")
def setting():
    (st,) = load_settings(RUN)
    return st


def _mean(text: str) -> float:
    return float(text.strip().strip("*").split(" ± ")[0].split(" (")[0])


# ---------------------------------------------------------------------------------- experiments
def test_task_orders_are_distinct_start_with_t1_and_are_seeded():
    names = ["T1", "T2", "T3", "T4", "T5"]
    orders = task_orders(names, 6, seed=0)
    assert orders[:2] == ["default", "reversed"] and len(orders) == 6
    custom = [o.split(",") for o in orders[2:]]
    assert all(o[0] == "T1" and sorted(o) == names for o in custom)
    assert len({tuple(o) for o in custom} | {tuple(names[1:]), tuple(reversed(names[1:]))}) == 6
    assert task_orders(names, 6, seed=0) == orders and task_orders(names, 6, seed=1) != orders
    assert task_orders(["T1", "T2", "T3"], 10, 0) == ["default", "reversed"]  # only 2! orders exist
    assert task_orders(["T1", "T2"], 3, 0) == ["default"]


def test_experiments_share_cells_instead_of_recomputing():
    a = ExperimentArgs("synthetic-mini", seeds=(0, 1))
    overall = set(get_experiment("overall").cells(a))
    assert {s.method for s in overall} == {"pop", "sinmo", "fineall", "peterrec", "mtl", "piggyback", "hat", "conure",
                                           "teracon", "ditto", "ewc", "lwf", "replay"}  # `--methods all`
    transfer = set(get_experiment("transfer").cells(a))
    sampling = get_experiment("sampling").cells(a)
    # The default-order HAT/CONURE/TERACON cells of `transfer` are exactly those of `overall`.
    assert {s for s in transfer if s.order == "default"} <= overall
    # `sampling`'s relation row is the default TERACON cell (no override), the others are variants.
    assert {s.method_overrides for s in sampling if s.method == "teracon"} == {
        (), (("teracon.sampling", "min"),), (("teracon.sampling", "none"),)}
    union = experiment_cells(["overall", "transfer", "sampling"], a)
    assert len(union) == len(set(union)) == len(overall | transfer | set(sampling))


def test_noisy_experiment_inserts_t_prime_after_t3_or_before_the_last_task():
    cells = get_experiment("noisy").cells(ExperimentArgs("synthetic-mini"))
    assert {s.noise for s in cells} == {None, 3}  # 5 tasks: after T3, as on TTL
    with pytest.raises(ConfigError, match="noise position"):
        get_experiment("noisy").cells(ExperimentArgs("synthetic-mini", noise_position=9))


def test_unknown_experiment_lists_the_valid_ones(capsys):
    assert main(["reproduce", "overal", "--dataset", "synthetic-mini"]) == 2
    err = capsys.readouterr().err
    assert "overal" in err and "overall, transfer, noisy, sampling, adaptation, orders" in err


def test_reproduce_reuses_stored_cells(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(RUN, run)
    assert main(["reproduce", "transfer", "--dataset", "synthetic-mini", "--seeds", "0,1", "--out", str(run),
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "transfer on synthetic-mini: 16 cell(s), 16 already in" in out and "todo" not in out
    before = {p: p.stat().st_mtime_ns for p in run.rglob("seed*.json")}
    assert main(["reproduce", "transfer", "--dataset", "synthetic-mini", "--seeds", "0,1", "--out", str(run),
                 "--no-figures"]) == 0
    assert {p: p.stat().st_mtime_ns for p in run.rglob("seed*.json")} == before  # nothing recomputed
    assert "Transfer (BWT %)" in capsys.readouterr().out


# ---------------------------------------------------------------------------------- tables
def test_overall_table_is_mean_and_std_of_the_result_files_with_the_best_in_bold(setting):
    t = overall_table(setting)
    md = t.markdown().splitlines()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in md[2:] if "|" in line}
    assert list(rows)[0] == "pop"  # the trivial baseline is always there, first
    files = [json.loads(p.read_text()) for p in RUN.rglob("seed*.json")]
    t3 = [f["final"]["T3"] for f in files if f["spec"]["method"] == "conure" and f["spec"]["order"] == "default"
          and f["spec"]["noise"] is None]
    assert len(t3) == 2
    # the score (bold on the best), then the interval and significance mark (tests/test_significance.py)
    assert re.fullmatch(re.escape(f"{np.mean(t3):.4f} ± {np.std(t3, ddof=1):.4f}") + r"\*{0,2} \[[\d.]+, [\d.]+\] [▲≈▽]",
                        rows["conure"][2].lstrip("*"))
    assert _mean(rows["conure"][2]) == pytest.approx(np.mean(t3), abs=5e-5)
    # Bold exactly on the highest mean of each task column.
    for c in range(5):
        col = {m: _mean(v[c]) for m, v in rows.items() if v[c] != "-"}
        bold = {m for m, v in rows.items() if v[c].startswith("**")}
        assert bold == {m for m, x in col.items() if x == max(col.values())}
    assert rows["mtl"][0] == "-" and rows["mtl"][5] == "-"  # no T1 score, hence no all-task mean
    assert rows["pop"][7] == "-"  # pop is no continual learner: no BWT


def test_noisy_change_is_relative_to_the_clean_mean(setting):
    t = noisy_table(setting)
    (noisy_row,) = [r for r in t.rows if r[0] == "conure" and r[1].startswith("T'")]
    clean = [load_result(p)["final"]["T4"] for p in RUN.glob("synthetic-mini/conure/default/*.json")]
    noisy = [load_result(p)["final"]["T4"] for p in RUN.glob("synthetic-mini/conure/default+noise3/*.json")]
    want = (np.mean(noisy) - np.mean(clean)) / np.mean(clean) * 100
    assert noisy_row[5].endswith(f"({want:+.2f}%)")
    # CONURE isolates the tasks before T': their scores do not move.
    assert all(noisy_row[2 + i].endswith("(+0.00%)") for i in range(3))


def test_sampling_time_table_is_relative_to_rho_one(setting):
    scores, times = sampling_tables(setting)
    rates = [r[1] for r in times.rows if r[0] == "default"]
    assert rates == ["min", "relation", "none"]
    ratio = {r[1]: r[-2] for r in times.rows if r[0] == "default"}
    assert ratio["none"] == "1.00"
    used = {r[1]: mean_std(r[-1])[0] for r in times.rows if r[0] == "default"}
    assert used["none"] == pytest.approx(100.0) and used["min"] < used["none"]


def test_sampling_time_ratio_does_not_move_with_the_machine_a_cell_ran_on(setting):
    """Relation-aware cells as if computed on a machine twice as fast: their seconds per epoch
    halve, but `time vs ρ=1` (each cell's seconds in units of its own T1 epoch) stays."""
    def faster(r: dict) -> dict:
        fits = [{**f, "epochs": [{**e, "seconds": e["seconds"] / 2} for e in f["epochs"]]} for f in r["fits"]]
        return {**r, "fits": fits}

    relation = lambda r: r["spec"]["method"] == "teracon" and not r["spec"]["overrides"]
    moved = dataclasses.replace(setting, results=[faster(r) if relation(r) else r for r in setting.results])
    before, after = sampling_tables(setting)[1], sampling_tables(moved)[1]
    for b, a in zip(before.rows, after.rows):
        assert a[-2] == b[-2]
        if b[1] == "relation":
            assert mean_std(a[2])[0] == pytest.approx(mean_std(b[2])[0] / 2)
    assert "own T1 epoch" in after.note


def test_sampling_time_table_reads_cpu_time_when_every_teracon_cell_has_it(setting):
    """With CPU time in every TERACON round the table shows it (here half the wall time, as on a
    machine shared with one other process); one cell without it sends the table back to wall time."""
    def with_cpu(r: dict) -> dict:
        fits = [{**f, "epochs": [{**e, "cpu_seconds": e["seconds"] / 2} for e in f["epochs"]]} for f in r["fits"]]
        return {**r, "fits": fits}

    teracon = lambda r: r["spec"]["method"] == "teracon"
    cpu = dataclasses.replace(setting, results=[with_cpu(r) if teracon(r) else r for r in setting.results])
    (_, wall_table), (_, cpu_table) = sampling_tables(setting), sampling_tables(cpu)
    assert "CPU seconds" in cpu_table.title and "CPU seconds" not in wall_table.title
    for w, c in zip(wall_table.rows, cpu_table.rows):
        assert mean_std(c[2])[0] == pytest.approx(mean_std(w[2])[0] / 2) and c[-2] == w[-2]  # same ratios
    first = next(i for i, r in enumerate(cpu.results) if teracon(r))
    mixed = dataclasses.replace(cpu, results=[setting.results[first] if i == first else r
                                              for i, r in enumerate(cpu.results)])
    assert sampling_tables(mixed)[1].title == wall_table.title


def test_latex_is_booktabs_bolds_and_escapes(setting):
    tex = overall_table(setting).latex()
    assert r"\textbf{" in tex and r"$\pm$" in tex and "±" not in tex and r"BWT \%" in tex
    lines = tex.splitlines()
    assert lines[1].startswith(r"\begin{tabular}{l") and lines[2] == r"\toprule" and lines[4] == r"\midrule"
    assert lines[-2:] == [r"\bottomrule", r"\end{tabular}"] and r"\hline" not in tex
    assert all(ln.endswith(r" \\") for ln in lines[5:-2]) and len(lines[5:-2]) == len(overall_table(setting).rows)
    assert tex.count("&") == 10 * (len(lines) - 6)  # 11 columns: only the column separators, nothing unescaped


def test_report_matches_golden_and_writes_figures(tmp_path):
    write_report(RUN, tmp_path / "plain", figures=False, echo=lambda _: None)
    gold = DATA / "golden" / "report"
    for p in gold.rglob("*"):
        if p.is_file():
            assert (tmp_path / "plain" / p.relative_to(gold)).read_text() == p.read_text(), p.name
    written = write_report(RUN, tmp_path / "figs", echo=lambda _: None)
    readme = written[0].read_text()
    links = [ln.split("](", 1)[1].rstrip(")") for ln in readme.splitlines() if ln.startswith("![")]
    tasks = len(load_settings(RUN, lambda _: None)[0].select()[0]["tasks"])
    assert len(links) == 7 + tasks  # seven section figures (the CD diagram too), one validation curve per task
    assert all((tmp_path / "figs" / link).is_file() for link in links)
    assert all((tmp_path / "figs" / link).with_suffix(".svg").is_file() for link in links)


def test_damaged_result_is_skipped_with_a_warning(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(RUN / "synthetic-mini" / "pop", run / "synthetic-mini" / "pop")
    victim = next(run.rglob("seed*.json"))
    victim.write_text(victim.read_text().replace('"final"', '"finale"', 1))
    said = []
    (st,) = load_settings(run, said.append)
    assert len(st.results) == 1 and "checksum mismatch" in said[0]


# ---------------------------------------------------------------------------------- leaderboards
def test_leaderboard_matches_golden_and_ranks_by_mean():
    board = read_boards(DATA / "mini-boards.toml")[0]
    st = board_setting(board)
    readme = markdown(board_page(board, st, None))
    assert readme == (DATA / "golden" / "leaderboard.md").read_text()
    assert results_csv(board, st) == (DATA / "golden" / "leaderboard.csv").read_text()
    table = [ln for ln in readme.splitlines() if ln.startswith("| ") and ln[2].isdigit()]
    means = [_mean(ln.split("|")[8]) for ln in table]
    assert means == sorted(means, reverse=True) and len(table) == 8  # MTL unranked (no T1)
    assert "| -      | mtl" in readme and "pop" in readme


def _board(tmp_path: Path) -> Path:
    shutil.copytree(RUN, tmp_path / "mini-run")
    shutil.copy(DATA / "mini-boards.toml", tmp_path / "boards.toml")
    build(tmp_path / "boards.toml", echo=lambda _: None)
    return tmp_path / "boards.toml"


def test_board_header_counts_every_file_the_board_reads_text_init_twin_and_cold_start_included():
    board = read_boards(DATA / "mini-boards.toml")[0]
    st = board_setting(board)
    assert st.text_init is None and not st.cold_start and st.n_files == len(st.results) == 44
    twin = dataclasses.replace(st, overrides=(*st.overrides, ("backbone.item_init", "text")), results=st.results[:5])
    with_twin = dataclasses.replace(st, text_init=twin)
    assert dataclasses.replace(with_twin, cold_start=[{}, {}]).n_files == 44 + 5 + 2
    header = markdown(board_page(board, with_twin, None)).splitlines()[2]
    assert "· 49 result files in `mini-run/` ·" in header


def test_leaderboard_check_fails_on_changed_results_tables_or_missing_figures(tmp_path):
    boards = _board(tmp_path)
    assert check(boards) == []
    assert (tmp_path / "mini" / "figures" / "synthetic-mini-scores.png").is_file()
    # A re-sealed result with another number: the table no longer matches it.
    victim = next((tmp_path / "mini-run" / "synthetic-mini" / "teracon" / "default").glob("seed0-*.json"))
    r = load_result(victim)
    r["final"]["T2"] += 0.01
    r["R"][-1][1] += 0.01
    save_result(victim, {k: v for k, v in r.items() if k not in ("checksum", "schema")})
    problems = check(boards)
    assert any("mini/README.md: differs" in p for p in problems) and any("results.csv" in p for p in problems)
    build(boards, echo=lambda _: None)
    assert check(boards) == []
    readme = tmp_path / "mini" / "README.md"
    readme.write_text(readme.read_text().replace("teracon", "TERACON!", 1))
    assert any("README.md: differs" in p for p in check(boards))
    build(boards, echo=lambda _: None)
    (tmp_path / "mini" / "figures" / "synthetic-mini-R.png").unlink()
    assert any("figure figures/synthetic-mini-R.png is missing" in p for p in check(boards))


def test_leaderboard_build_removes_figures_no_page_links_and_check_names_them(tmp_path):
    boards = _board(tmp_path)
    figs = tmp_path / "mini" / "figures"
    kept = sorted(f.name for f in figs.iterdir())
    assert "synthetic-mini-scores.png" in kept and "synthetic-mini-scores.svg" in kept  # README and page links
    stale = figs / "synthetic-mini-old-scores.png"  # what a board's earlier setting drew
    stale.write_bytes(b"png")
    assert [p for p in check(boards) if "linked from no page" in p] == [f"{stale}: linked from no page (a leftover; "
                                                                         "`curb leaderboard build` removes it)"]
    build(boards, echo=lambda _: None)
    assert not stale.exists() and sorted(f.name for f in figs.iterdir()) == kept and check(boards) == []


def test_leaderboard_check_refuses_a_tampered_result_file(tmp_path):
    boards = _board(tmp_path)
    victim = next((tmp_path / "mini-run").rglob("seed*.json"))
    victim.write_text(victim.read_text().replace('"seed": 0', '"seed": 7', 1).replace('"seed": 1', '"seed": 7', 1))
    with pytest.raises(Exception, match="damaged result"):
        check(boards)


def test_bad_boards_file_names_board_and_keys(tmp_path):
    p = tmp_path / "boards.toml"
    p.write_text('[x]\ntitle = "t"\nversion = "v"\nresults = "r"\ndataset = "d"\ncolour = "red"\n')
    with pytest.raises(BoardsError, match=r"\[x\] unknown keys \['colour'\]"):
        read_boards(p)
    p.write_text('[x]\ntitle = "t"\n')
    with pytest.raises(BoardsError, match="missing keys"):
        read_boards(p)


def test_committed_leaderboards_match_their_results():
    """What CI guards: every published table equals a rebuild from the committed result files."""
    boards = Path(__file__).parents[1] / "leaderboards" / "boards.toml"
    assert check(boards) == []


def test_readme_embedded_board_table_is_written_and_checked(tmp_path):
    shutil.copytree(RUN, tmp_path / "lb" / "mini-run")
    shutil.copy(DATA / "mini-boards.toml", tmp_path / "lb" / "boards.toml")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- leaderboard:mini -->\n<!-- /leaderboard -->\noutro\n")
    build(tmp_path / "lb" / "boards.toml", echo=lambda _: None, figures=False)
    text = readme.read_text()
    assert text.startswith("intro\n<!-- leaderboard:mini -->\n| rank") and text.endswith("<!-- /leaderboard -->\noutro\n")
    first = re.search(r"^\| 1 +\| (\w+)", text, flags=re.M).group(1)  # the rank-1 row is written
    readme.write_text(text.replace(f"| {first}", "| someone-else", 1))
    assert any("README.md: differs" in p for p in check(tmp_path / "lb" / "boards.toml"))
    readme.write_text("<!-- leaderboard:nope -->\n<!-- /leaderboard -->\n")
    with pytest.raises(BoardsError, match="embeds board 'nope'"):
        build(tmp_path / "lb" / "boards.toml", echo=lambda _: None, figures=False)


# ---------------------------------------------------------------------------------- issue 9 studies
def test_text_init_section_pairs_a_setting_with_its_text_twin(tmp_path):
    """A setting whose only difference is backbone.item_init=text is rendered beside its random twin."""
    run = tmp_path / "run"
    shutil.copytree(RUN / "synthetic-mini" / "teracon", run / "synthetic-mini" / "teracon")
    shutil.copytree(RUN / "synthetic-mini" / "pop", run / "synthetic-mini" / "pop")
    twins = []
    for p in sorted((run / "synthetic-mini" / "teracon" / "default").glob("*.json")):
        r = load_result(p)
        if r["spec"]["overrides"]:
            continue
        r["spec"]["overrides"] = {"backbone.item_init": "text"}
        r["spec_hash"] = CellSpec.from_dict(r["spec"]).hash  # another cell: its own hash and file name
        r["final"] = {k: v + 0.5 for k, v in r["final"].items()}  # recognisable "text" numbers
        twins.append(r["final"]["T2"])
        r["fits"] = [{**f, "epochs": [{**e, "val": 0.9} for e in f["epochs"]]} for f in r["fits"]]
        save_result(run / "text" / f"seed{r['spec']['seed']}-{r['spec_hash']}.json",
                    {k: v for k, v in r.items() if k not in ("checksum", "schema")})
    base = next(st for st in load_settings(run) if not st.overrides)
    assert base.text_init is not None and base.text_init.overrides == (("backbone.item_init", "text"),)
    t = text_init_table(base)
    rows = {(r[0], r[1]): r for r in t.rows}
    assert set(rows) == {("pop", "-"), ("teracon", "random"), ("teracon", "text")}
    assert mean_std(rows[("teracon", "text")][3])[0] == pytest.approx(np.mean(twins))
    assert mean_std(rows[("teracon", "text")][-1])[0] == pytest.approx(0.9)  # T1 validation after epoch 1
    readme = write_report(run, tmp_path / "report", figures=False)[0].read_text()
    base_part, twin_part = readme.split("## synthetic-mini-backbone.item_init=text")
    assert "### text-init" in base_part and "| teracon  | text" in base_part
    assert "###" not in twin_part and "Text-initialised twin of `synthetic-mini`" in twin_part  # no table without pop


def test_cold_start_results_get_their_own_section_and_never_break_the_tables(tmp_path):
    from curb.coldstart import run_cold_start

    run = tmp_path / "run"
    shutil.copytree(RUN, run)
    paths = run_cold_start("synthetic-mini", ("fineall",), (0, 1), None, run, echo=lambda *_: None,
                           overrides={"ncf.eval_negatives": "19", "ncf.epochs": "2"})
    (st,) = load_settings(run)
    assert len(st.cold_start) == len(paths) == 6 and len(st.results) == 44  # cold-start files kept apart
    warm, cold = cold_start_tables(st)
    assert [r[0] for r in warm.rows] == ["random init", "fineall after T2", "fineall after T5"]
    hr10 = [load_result(p)["groups"]["cold"]["hr@10"] for p in paths if p.parent.name == "fineall-after-T5"]
    row = next(r for r in cold.rows if r[0] == "fineall after T5")
    assert mean_std(row[4])[0] == pytest.approx(np.mean(hr10))
    assert [s.title for s in build_sections(st, None)][-3:] == ["cold-start", "orders", "claims"]


def test_reproduce_routes_ncf_overrides_to_cold_start_only(tmp_path, capsys):
    assert main(["reproduce", "overall,cold-start", "--dataset", "synthetic-mini", "--seeds", "0",
                 "--set", "ncf.epochs=1", "--out", str(tmp_path), "--dry-run"]) == 0
    assert "overall, cold-start on synthetic-mini: 13 cell(s)" in capsys.readouterr().out


def test_reproduce_all_skips_text_init_on_a_dataset_without_texts(tmp_path, capsys):
    assert main(["reproduce", "all", "--dataset", "synthetic-mini", "--out", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "text-init skipped: synthetic-mini items have no texts" in out and "text-init on" not in out
    assert main(["reproduce", "text-init", "--dataset", "synthetic-mini", "--out", str(tmp_path), "--dry-run"]) == 2
    assert "has no item texts" in capsys.readouterr().err


def test_reproduce_runs_the_cold_start_study_with_the_threads_asked_for(tmp_path):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # a default the study must not inherit
    try:
        assert main(["reproduce", "cold-start", "--dataset", "synthetic-mini", "--seeds", "0", "--methods", "fineall",
                     "--set", "ncf.epochs=1", "--set", "ncf.eval_negatives=19", "--threads", "1",
                     "--out", str(tmp_path), "--no-figures"]) == 0
        assert torch.get_num_threads() == 2  # restored afterwards
    finally:
        torch.set_num_threads(before)
    envs = [load_result(p)["env"] for p in tmp_path.rglob("seed*.json")]
    assert len(envs) >= 3 and {e["threads"] for e in envs} == {1}  # continual cell and both NCF runs
    readme = (tmp_path / "report" / "README.md").read_text()  # a cold-start-only folder still gets its tables
    assert "### cold-start" in readme and "| random init " in readme and "against 19 sampled negatives" in readme
    # a second NCF protocol in the same folder gets rows of its own, never averaged with the first
    assert main(["reproduce", "cold-start", "--dataset", "synthetic-mini", "--seeds", "0", "--methods", "fineall",
                 "--set", "ncf.epochs=1", "--set", "ncf.eval_negatives=9", "--out", str(tmp_path), "--no-figures"]) == 0
    readme = (tmp_path / "report" / "README.md").read_text()
    assert "| random init (ncf: epochs=1,eval_negatives=9) " in readme
    assert "| random init (ncf: epochs=1,eval_negatives=19) " in readme and "against 9 sampled negatives or" in readme


def test_adaptation_curve_is_t4_after_t1_to_t3_from_the_fit_logs(setting):
    assert adaptation_table(setting).title.startswith("Adaptation to T4 ")
    data = adaptation_data(setting)
    r = next(load_result(p) for p in RUN.glob("synthetic-mini/hat/default/seed1-*.json"))
    (fit,) = [f for f in r["fits"] if f["task"] == "T4" and f["phase"] == "train"]
    got = data[(data.method == "hat") & (data.seed == 1)].sort_values("x")["value"].tolist()
    assert got == [e["val"] for e in fit["epochs"]] and "pop" not in set(data.method)


def test_training_section_shows_selected_rounds_validation_curves_and_capacity(run_mini, tmp_path):
    """The report's training section re-reads each task's selecting phase: the selected round,
    the validation cross-entropy there, the per-round validation cross-entropy and HAT's held
    units are the numbers in the result; a joint phase gets no per-task cross-entropy."""
    from curb.resultsets import load_settings
    from curb.sections import capacity_table, selection_table, training_table, validation_curves

    hat, sinmo, mtl = run_mini("hat"), run_mini("sinmo"), run_mini("mtl")
    st = load_settings(tmp_path / "runs")[0]
    rows = {row[0]: row for row in training_table(st).rows}
    chosen = {row[0]: row for row in selection_table(st).rows}
    names = [x["name"] for x in hat["tasks"]]
    for r in (hat, sinmo):
        for i, n in enumerate(names):
            f = [f for f in r["fits"] if f["task"] == n][-1]
            assert rows[r["spec"]["method"]][1 + i] == [f["best_epoch"] + 1]
            assert chosen[r["spec"]["method"]][1 + i] == [min(e["val_loss"] for e in f["epochs"])]
    assert [f["task"] for f in mtl["fits"]] == ["+".join(names[1:])]  # one joint phase, no T1 fit here
    assert chosen["mtl"][1:] == [[None]] * len(names)
    assert "pop" not in chosen and selection_table(st).title.startswith("Model selection: validation cross-entropy")
    curves, axis = validation_curves(st, "T2")
    assert axis == "validation cross-entropy on T2"
    fit = [f for f in hat["fits"] if f["task"] == "T2"][-1]
    assert curves[curves.method == "hat"]["value"].tolist() == [e["val_loss"] for e in fit["epochs"]]
    cap = capacity_table(st)
    assert [row[0] for row in cap.rows] == ["hat"]  # only methods that report units_used
    assert cap.rows[0][1:] == [[hat["method_report"]["units_used"][n]] for n in names]


def test_a_sealed_result_missing_keys_is_refused_by_report_and_leaderboard(tmp_path, capsys):
    """A valid checksum proves a file is as written, not that it is complete: the schema check does."""
    boards = _board(tmp_path)
    victim = next((tmp_path / "mini-run" / "synthetic-mini" / "pop" / "default").glob("seed0-*.json"))
    r = load_result(victim)
    del r["final"]
    save_result(victim, {k: v for k, v in r.items() if k not in ("checksum", "schema")})
    assert main(["report", str(tmp_path / "mini-run"), "--no-figures", "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert f"warning: skipping {victim}: not a valid curb result: missing key 'final'" in out
    assert main(["leaderboard", "check", "--boards", str(boards)]) == 2
    err = capsys.readouterr().err
    assert "damaged result file(s)" in err and "missing key 'final'" in err and "Traceback" not in err


def test_paper_table_sets_the_published_scores_beside_the_settings_means(run_mini, tmp_path):
    """The board's "Against the paper" table: the paper's number, this setting's mean over seeds
    and their ratio, per method and task; methods the paper does not report are left out."""
    from curb.paper import PAPER
    from curb.resultsets import load_settings
    from curb.sections import paper_table

    runs = {s: run_mini("teracon", seed=s) for s in (0, 1)}
    run_mini("ewc")  # not in the paper's table
    t = paper_table(load_settings(tmp_path / "runs")[0], "ml")
    assert [row[0] for row in t.rows] == ["teracon"]
    paper = PAPER["ml"].rows["teracon"]
    for i, task in enumerate(PAPER["ml"].tasks):
        ours = np.mean([r["final"][task] for r in runs.values()])
        assert t.rows[0][1 + 3 * i: 4 + 3 * i] == [f"{paper[i]:.4f}", f"{ours:.4f}", f"{ours / paper[i]:.2f}"]
