"""curb.claims: each claim reaches confirmed / refuted / no data on small synthetic result dicts
built here (per-user scores where the claim reads them), deterministically."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from curb.results import pack_per_user
from curb.claims import CLAIMS, VERDICTS, claims_table, evaluate_claims
from curb.runner import CellSpec

TASKS = ("T1", "T2", "T3")
N_USERS = 150
COUNTS = {t: np.random.default_rng(i).integers(1, 6, N_USERS) for i, t in enumerate(TASKS)}
RATE = {t: np.random.default_rng(10 + i).beta(2, 8, N_USERS) for i, t in enumerate(TASKS)}
IDS = {t: np.arange(N_USERS) + 1000 * i for i, t in enumerate(TASKS)}


def cell(method: str, seed: int, *, lift: float = 0.0, forget: float = 0.0, order: str = "default",
         noise: int | None = None, overrides: dict | None = None, per_user: bool = True, joint: bool = False,
         seconds: float = 1.0, cpu: float | None = None, t1_seconds: float = 1.0, t1_val: float = 0.1,
         draw: str | None = None) -> dict:
    """A result dict like the runner's: per-user sums drawn around RATE + lift (`draw` names the
    random stream, by default the cell's identity), diag = final + forget (so BWT < 0 when
    forget > 0); `joint`: no T1 score and no diagonal, as MTL. An epoch of T1 takes `t1_seconds`
    (also of CPU time when `cpu` is given), one of every later task `seconds` (CPU time `cpu`)."""
    spec = CellSpec(method, "synthetic", order, noise, seed, None, tuple(sorted((overrides or {}).items())))
    rng = np.random.default_rng(zlib.crc32((draw or f"{method}{order}{noise}{overrides}").encode()) + seed)
    names = list(TASKS) if noise is None else [*TASKS[:noise], "noise", *TASKS[noise:]]
    final, diag, packed = {}, {}, {}
    for t in TASKS:
        f = rng.binomial(COUNTS[t], np.clip(RATE[t] + lift, 0, 1)).astype(float)
        d = np.minimum(f + rng.binomial(1, forget, N_USERS), COUNTS[t])
        if joint and t == "T1":
            final[t] = None
            continue
        final[t], diag[t] = f.sum() / COUNTS[t].sum(), d.sum() / COUNTS[t].sum()
        packed[t] = pack_per_user("acc", IDS[t], COUNTS[t], f, None if joint else d)
    bwt = [None if joint or n == "noise" or i == len(names) - 1 else (final[n] - diag[n]) / diag[n] * 100
           for i, n in enumerate(names)]
    clocks = {"T1": (t1_seconds, None if cpu is None else t1_seconds)}
    fits = [{"task": n, "phase": "train",
             "epochs": [{"epoch": 0, "val": t1_val if n == "T1" else 0.2, "seconds": clocks.get(n, (seconds, cpu))[0],
                         "cpu_seconds": clocks.get(n, (seconds, cpu))[1]}]} for n in names]
    return {"spec": spec.as_dict(), "spec_hash": spec.hash, "dataset": {"base_fingerprint": "abc"},
            "tasks": [{"name": n, "metric": "acc"} for n in names], "final": {**final, **({} if noise is None else {"noise": 0.01})},
            "transfer": {"bwt": bwt}, "fits": fits, **({"per_user": packed} if per_user else {})}


def cold(init: str, seed: int, warm: float, cold_hr: float, after: str | None = "T2") -> dict:
    return {"kind": "cold-start", "dataset": {"fingerprint": "abc"},
            "spec": {"dataset": "synthetic", "preset": None, "overrides": {}, "holdout": "T3", "ncf": {},
                     "init": init, "after": None if init == "random" else after, "view": "latest", "seed": seed},
            "groups": {"warm": {"hr@10": warm}, "cold": {"hr@10": cold_hr}},
            "representation": None if init == "random" else {"cell_tasks": ["T1", "T2"]}}


SEEDS = (0, 1, 2)


def verdicts(results: list[dict]) -> dict[str, object]:
    return {v.claim: v for v in evaluate_claims(results)}


def test_no_results_give_no_data_for_every_claim():
    vs = evaluate_claims([])
    assert [v.claim for v in vs] == [c.id for c in CLAIMS] == list("abcdefghij")
    assert {v.verdict for v in vs} == {"no data"} and all(v.p is None for v in vs)
    table = claims_table(vs)
    assert [row[-1] for row in table.rows] == ["no data"] * len(vs)
    assert table.markdown().split("\n\n")[0].count("\n") == len(vs) + 1


def test_best_all_task_score_confirmed_and_refuted_per_user():
    board = [cell("teracon", s, lift=0.1) for s in SEEDS] + [cell(m, s) for m in ("conure", "hat") for s in SEEDS]
    board += [cell("mtl", s, joint=True) for s in SEEDS]
    a = verdicts(board)["a"]
    assert a.verdict == "confirmed" and a.p <= 0.05
    assert "sign-flip" in a.test and "Holm over 2" in a.test and "left out" in a.evidence and "mtl" in a.evidence
    beaten = [cell("teracon", s) for s in SEEDS] + [cell("conure", s, lift=0.1) for s in SEEDS]
    a = verdicts(beaten)["a"]
    assert a.verdict == "refuted" and a.p <= 0.05 and "-0.1" in a.statistic


def test_best_all_task_score_falls_back_to_seeds_without_per_user_scores():
    board = [cell("teracon", s, lift=0.0, per_user=False) for s in SEEDS] + [cell("hat", s, per_user=False)
                                                                              for s in SEEDS]
    a = verdicts(board)["a"]
    assert a.verdict == "not confirmed" and "t-test over 3 cells" in a.test


def test_ditto_over_teracon_paired_per_user():
    ahead = [cell("ditto", s, lift=0.1) for s in SEEDS] + [cell("teracon", s) for s in SEEDS]
    j = verdicts(ahead)["j"]
    assert j.verdict == "confirmed" and j.p <= 0.05 and "sign-flip" in j.test and "+0.1" in j.statistic
    behind = [cell("ditto", s) for s in SEEDS] + [cell("teracon", s, lift=0.1) for s in SEEDS]
    assert verdicts(behind)["j"].verdict == "refuted"
    same = [cell("ditto", s, draw="x") for s in SEEDS] + [cell("teracon", s, draw="x") for s in SEEDS]
    assert verdicts(same)["j"].verdict == "not confirmed"
    assert verdicts(ahead[:3])["j"].verdict == "no data"


def test_conure_bwt_exactly_zero():
    board = [cell("conure", s) for s in SEEDS] + [cell("conure", 0, order="reversed")]
    assert verdicts(board)["b"].verdict == "confirmed"
    leaky = board + [cell("conure", 1, order="reversed", forget=0.3)]
    b = verdicts(leaky)["b"]
    assert b.verdict == "refuted" and b.statistic.startswith("2 of 10 entries non-zero")


def test_teracon_bwt_interval_decides():
    steady = verdicts([cell("teracon", s) for s in SEEDS])["c"]
    assert steady.verdict == "confirmed" and "[+0.00, +0.00]" in steady.statistic and steady.p < 0.01  # BWT 0
    forgets = verdicts([cell("teracon", s, forget=0.3) for s in SEEDS])["c"]
    assert forgets.verdict == "refuted" and "bootstrap" in forgets.test and forgets.p < 0.05
    by_seed = verdicts([cell("teracon", s, forget=0.3, per_user=False) for s in SEEDS])["c"]
    assert by_seed.verdict == "refuted" and "t interval over 3 cells" in by_seed.test


def _zero_after(c: dict, task: str) -> dict:
    """The cell with a score of 0 on `task` right after learning it (a tiny test part can give
    that): its relative BWT is undefined, so the runner records None."""
    final = np.asarray(COUNTS[task] * RATE[task]).round()
    c["per_user"][task] = pack_per_user("acc", IDS[task], COUNTS[task], final, np.zeros(N_USERS))
    c["transfer"]["bwt"][TASKS.index(task)] = None
    return c


def test_teracon_bwt_leaves_out_a_seed_whose_score_right_after_the_task_is_zero():
    board = [cell("teracon", s, forget=0.3) for s in SEEDS]
    board[1] = _zero_after(board[1], "T1")
    c = verdicts(board)["c"]
    assert c.verdict == "refuted" and "T1, T2" in c.evidence and "undefined): T1 seed 1" in c.evidence
    assert np.isfinite(c.p)
    nothing = [_zero_after(_zero_after(cell("teracon", s), "T1"), "T2") for s in SEEDS]
    assert verdicts(nothing)["c"].verdict == "no data"


def test_noisy_task_hurts_teracon_less():
    clean = [cell(m, s) for m in ("teracon", "conure", "hat") for s in SEEDS]
    noisy = [cell("teracon", s, noise=2, draw="teracondefaultNoneNone") for s in SEEDS]  # the clean draws: no drop
    noisy += [cell(m, s, noise=2, lift=-0.1) for m in ("conure", "hat") for s in SEEDS]
    d = verdicts(clean + noisy)["d"]
    assert d.verdict == "confirmed" and "teracon +0.0000" in d.statistic
    only_conure = [c for c in clean + noisy if c["spec"]["method"] != "hat" or c["spec"]["noise"] is None]
    assert verdicts(only_conure)["d"].verdict == "not confirmed"  # HAT's part is missing
    worse = clean + [cell("teracon", s, noise=2, lift=-0.1) for s in SEEDS] + [
        cell(m, s, noise=2, draw=f"{m}defaultNoneNone") for m in ("conure", "hat") for s in SEEDS]
    assert verdicts(worse)["d"].verdict == "refuted"


def test_sampling_equivalence_and_speed():
    relation = [cell("teracon", s, order=o, seconds=1.0) for o in ("default", "reversed") for s in SEEDS]
    same = [cell("teracon", s, order=o, overrides={"teracon.sampling": "none"}, seconds=3.0 + 0.1 * s,
                 draw=f"teracon{o}NoneNone") for o in ("default", "reversed") for s in SEEDS]
    e = verdicts(relation + same)["e"]
    assert e.verdict == "confirmed" and "6 cells" in e.evidence and e.p <= 0.05
    slow = [cell("teracon", s, order=o, overrides={"teracon.sampling": "none"}, seconds=1.1,
                 draw=f"teracon{o}NoneNone") for o in ("default", "reversed") for s in SEEDS]
    assert verdicts(relation + slow)["e"].verdict == "refuted"  # same scores, but no 2x speed-up
    better = [cell("teracon", s, order=o, overrides={"teracon.sampling": "none"}, seconds=3.0, lift=0.1)
              for o in ("default", "reversed") for s in SEEDS]
    assert verdicts(relation + better)["e"].verdict == "refuted"  # rho = 1 scores far above the margin


def test_sampling_speed_is_measured_in_each_cells_own_t1_epochs():
    """rho = 1 cells computed on a machine 1.25x slower than the relation-aware ones: raw seconds
    would say 2.4x, but in units of each cell's own T1 epoch (the same work in both) it is 1.9x."""
    relation = [cell("teracon", s, order=o, seconds=0.8, t1_seconds=0.8) for o in ("default", "reversed") for s in SEEDS]
    full = [cell("teracon", s, order=o, overrides={"teracon.sampling": "none"}, seconds=1.85 + 0.05 * s,
                 draw=f"teracon{o}NoneNone") for o in ("default", "reversed") for s in SEEDS]
    e = verdicts(relation + full)["e"]
    assert e.verdict == "refuted" and "speed-up 1.90x" in e.statistic and "own T1" in e.test
    faster = [cell("teracon", s, order=o, overrides={"teracon.sampling": "none"}, seconds=2.85 + 0.05 * s,
                   draw=f"teracon{o}NoneNone") for o in ("default", "reversed") for s in SEEDS]
    assert verdicts(relation + faster)["e"].verdict == "confirmed"


def test_sampling_speed_reads_cpu_time_when_every_cell_has_it():
    """Relation-aware cells that shared the machine with more processes after their T1 stage:
    their wall time says 1.5x, their CPU time 3x. The claim reads CPU time when every compared cell
    recorded it, wall time otherwise."""
    relation = [cell("teracon", s, order=o, seconds=2.0, cpu=1.0) for o in ("default", "reversed") for s in SEEDS]
    full = [cell("teracon", s, order=o, overrides={"teracon.sampling": "none"}, seconds=3.0 + 0.1 * s,
                 cpu=3.0 + 0.1 * s, draw=f"teracon{o}NoneNone") for o in ("default", "reversed") for s in SEEDS]
    e = verdicts(relation + full)["e"]
    assert e.verdict == "confirmed" and "log(cpu time" in e.test and "wall-clock" not in e.evidence
    full[0] = cell("teracon", 0, overrides={"teracon.sampling": "none"}, seconds=3.0, draw="teracondefaultNoneNone")
    e = verdicts(relation + full)["e"]  # one cell without CPU time: every cell is read on the wall clock
    assert e.verdict == "refuted" and "log(wall time" in e.test and "wall-clock" in e.evidence


def test_order_robustness():
    orders = ("default", "reversed", "T1,T3,T2")
    shift = {"default": 0.0, "reversed": 0.08, "T1,T3,T2": -0.08}
    board = [cell("teracon", s, order=o, draw=f"t{s}") for o in orders for s in SEEDS]  # no order effect
    board += [cell("conure", s, order=o, lift=shift[o]) for o in orders for s in SEEDS]
    f = verdicts(board)["f"]
    assert f.verdict == "confirmed" and "3 task orders" in f.evidence
    swapped = [{**r, "spec": {**r["spec"], "method": {"teracon": "conure", "conure": "teracon"}[r["spec"]["method"]]}}
               for r in board]
    assert verdicts(swapped)["f"].verdict == "refuted"


def test_mtl_trails_sinmo_on_several_tasks():
    board = [cell("sinmo", s, lift=0.1) for s in SEEDS] + [cell("mtl", s, joint=True) for s in SEEDS]
    g = verdicts(board)["g"]
    assert g.verdict == "confirmed" and "worse on 2 of 2 tasks" in g.statistic and g.p <= 0.05
    ahead = [cell("sinmo", s) for s in SEEDS] + [cell("mtl", s, joint=True, lift=0.1) for s in SEEDS]
    assert verdicts(ahead)["g"].verdict == "refuted"


def test_text_init_raises_early_performance():
    board = [cell(m, s, t1_val=0.10 + 0.001 * s) for m in ("teracon", "conure") for s in SEEDS]
    board += [cell(m, s, t1_val=0.15 + 0.002 * s, overrides={"backbone.item_init": "text"}) for m in ("teracon", "conure")
              for s in SEEDS]
    h = verdicts(board)["h"]
    assert h.verdict == "confirmed" and "6 (method, seed) cells" in h.test


def test_cold_start_warm_and_cold():
    board = [cold("random", s, 0.60 + 0.01 * s, 0.50 + 0.01 * s) for s in SEEDS]
    board += [cold("teracon", s, 0.65 + 0.011 * s, 0.56 + 0.009 * s) for s in SEEDS]
    assert verdicts(board)["i"].verdict == "confirmed"
    mixed = board[:3] + [cold("teracon", s, 0.65 + 0.011 * s, 0.40 + 0.009 * s) for s in SEEDS]
    assert verdicts(mixed)["i"].verdict == "refuted"  # cold users lose
    assert verdicts(board[:3])["i"].verdict == "no data"


def test_claims_are_deterministic_and_refuse_mixed_settings():
    board = [cell("teracon", s, lift=0.02) for s in SEEDS] + [cell("hat", s) for s in SEEDS]
    first = claims_table(evaluate_claims(board)).markdown()
    assert first == claims_table(evaluate_claims(board)).markdown()
    assert {v.verdict for v in evaluate_claims(board)} <= set(VERDICTS)
    other = cell("hat", 0)
    other["dataset"] = {"base_fingerprint": "other data"}
    with pytest.raises(ValueError, match="one board's results"):
        evaluate_claims(board + [other])


def test_claims_section_lists_every_claim_with_no_data_where_results_are_missing():
    from curb.report import build_sections
    from curb.resultsets import Setting

    results = [cell("teracon", s, lift=0.1) for s in SEEDS] + [cell("hat", s) for s in SEEDS]
    for r in results:  # the report's other sections are not built here, but the setting holds what they read
        r["transfer"]["fwt"] = [None] * len(r["tasks"])
    (part,) = build_sections(Setting("synthetic", None, (), results), None, only=("claims",))
    (table,) = part.tables()
    assert [row[0].split(")")[0] for row in table.rows] == [f"({c.id}" for c in CLAIMS]
    verdict = {row[0][1]: row[-1] for row in table.rows}
    assert verdict["a"] == "confirmed"  # TERACON clearly ahead of HAT on every task
    assert all(verdict[c] == "no data" for c in "bdefghi")  # no CONURE, noise, sampling, orders, MTL, text, cold
    assert build_sections(Setting("synthetic", None, (), []), None, only=("claims",)) == []
