"""`curb compare`: arms of one protocol knob, paired against a reference arm (curb/compare.py)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from curb import compare, stats
from curb.cli import main
from curb.errors import CurbError
from curb.results import canonical, pack_array, save_result

MINI = Path(__file__).parent / "data" / "mini-run" / "synthetic-mini"


def _load(method: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((MINI / method / "default").glob("*.json"))
            if not json.loads(p.read_text())["spec"]["overrides"]]


def _arm(results: list[dict], value, scale: float = 1.0) -> list[dict]:
    """Copies of `results` as if run with train.pairs_per_user=value, per-user sums (and the final
    scores they add up to) multiplied by `scale`."""
    out = []
    for r in results:
        r = copy.deepcopy(r)
        r["config"]["train"]["pairs_per_user"] = value
        if value is not None:
            r["spec"]["overrides"] = {"train.pairs_per_user": str(value)}
        for task, entry in r["per_user"].items():
            sums = stats.per_user(r, task).sums * scale
            entry["final"] = pack_array(sums, "<f8")
            r["final"][task] = float(sums.sum() / stats.per_user(r, task).counts.sum())
        out.append(r)
    return out


def _table(results: list[dict], reference: str = "none"):
    (group,) = compare.group_results(results, "train.pairs_per_user")
    return compare.compare_table(group, "train.pairs_per_user", reference, n_boot=300, n_perm=499)


def _rows(table, method: str, arm: str) -> list[list]:
    return [row for row in table.rows if row[0] == method and row[2] == arm]


def test_identical_arm_is_tied_and_a_shifted_arm_is_not():
    sinmo = _load("sinmo")
    results = [*_load("pop"), *sinmo, *_arm(sinmo, 8), *_arm(sinmo, 1, scale=1.5)]
    table = _table(results, reference="1")
    same = _rows(table, "sinmo", "8")  # arm 8 equals the unscaled default: 1/1.5 of the reference
    assert len(same) == 5 and all(row[7].startswith("-33.3%") for row in same)
    # T1 and T2 have 14 and 8 test users with a non-zero score: enough flips to reject
    assert all(row[9] == "▽ lower" for row in same if row[1].startswith(("T1", "T2")))
    for row in _rows(table, "sinmo", "none"):
        assert row[7].startswith("-33.3%")  # 1 / 1.5 - 1, for every task
    table = _table([*_load("pop"), *sinmo, *_arm(sinmo, 8)])
    for row in _rows(table, "sinmo", "8"):
        assert row[7].startswith("+0.0% [+0.0%, +0.0%]") and row[9] == "≈ tied" and float(row[8]) == 1.0
    assert {row[7] for row in _rows(table, "sinmo", "none")} == {"reference"}


def test_a_contrast_does_not_move_when_other_cells_land():
    """A doc quoting one interval must not see it change because another method's arm arrived."""
    sinmo = _load("sinmo")
    rng = np.random.default_rng(1)
    ref = _arm(sinmo, 1)
    for r in ref:  # per-user noise, so the intervals depend on which users a resample draws
        for task, entry in r["per_user"].items():
            sums = stats.per_user(r, task).sums * rng.uniform(0.5, 1.5, len(stats.per_user(r, task).sums))
            entry["final"] = pack_array(sums, "<f8")
    alone = [*_load("pop"), *sinmo, *ref]
    more = [*alone, *_arm(sinmo, 8, scale=0.9)]  # arm 8 is tested before arm none
    before, after = _rows(_table(alone, "1"), "sinmo", "none"), _rows(_table(more, "1"), "sinmo", "none")
    assert [r[7] for r in before] == [r[7] for r in after] and before[0][7] != ""


def test_lift_uses_pop_on_the_same_users_and_arms_on_other_users_are_not_paired():
    sinmo, pop = _load("sinmo"), _load("pop")
    other = _arm(sinmo, 8)
    for r in other:  # as if the arm had scored other test users (e.g. another split level)
        for entry in r["per_user"].values():
            entry["users"] = "0" * 64
    table = _table([*pop, *sinmo, *other])
    for row in _rows(table, "sinmo", "8"):
        assert row[7] == "not paired (different test users)" and row[5] == "-"
    for row in _rows(table, "sinmo", "none"):
        task = row[1].split()[0]
        expected = [r["final"][task] / np.mean([p["final"][task] for p in pop]) for r in sinmo]
        assert row[5] == pytest.approx(expected)
        ours = np.stack([stats.per_user(r, task).sums for r in sinmo])
        counts = stats.per_user(pop[0], task).counts
        base = np.broadcast_to(np.mean([stats.per_user(p, task).sums for p in pop], axis=0), ours.shape)
        assert row[6] == f"{stats.paired_z(ours, base, counts):+.1f}"
        pop_score = base.sum() / (len(sinmo) * counts.sum())
        assert (float(row[6]) > 0) == (np.mean([r["final"][task] for r in sinmo]) > pop_score)
    assert all(row[6] == "-" for row in _rows(table, "sinmo", "8"))  # pop scored other users


def test_z_vs_pop_grows_with_the_lift():
    sinmo = _load("sinmo")
    table = _table([*_load("pop"), *sinmo, *_arm(sinmo, 8, scale=1.5)])
    for plain, scaled in zip(_rows(table, "sinmo", "none"), _rows(table, "sinmo", "8")):
        assert plain[1] == scaled[1] and float(scaled[6]) > float(plain[6])


def test_knob_values_come_from_the_resolved_config():
    r = _load("sinmo")[0]
    assert compare.knob_value(r, "train.pairs_per_user") == "none"
    assert compare.knob_value(r, "split.level") == r["config"]["split"]["level"]
    with pytest.raises(CurbError, match="known keys: .*train.batch"):
        compare.knob_value(r, "train.no_such_knob")


def test_cli_compares_a_run_folder_and_names_missing_arms(tmp_path, capsys):
    for r in [*_load("pop"), *_load("sinmo"), *_arm(_load("sinmo"), 8, scale=0.5)]:
        if r["spec"]["overrides"]:  # another cell: its own hash, named in its file name
            r["spec_hash"] = hashlib.sha256(canonical(r["spec"]).encode()).hexdigest()[:12]
        save_result(tmp_path / r["spec"]["method"] / f"seed{r['spec']['seed']}-{r['spec_hash']}.json", r)
    out = tmp_path.parent / "compare.md"
    assert main(["compare", str(tmp_path), "--by", "train.pairs_per_user", "--against", "none", "--out", str(out)]) == 0
    text = out.read_text()
    assert "▽ lower" in text and "-50.0%" in text and "reference" in text
    assert main(["compare", str(tmp_path), "--by", "train.pairs_per_user", "--against", "4"]) == 0
    assert "no train.pairs_per_user=4 cells (arms: 8, none)" in capsys.readouterr().out
    assert main(["compare", str(tmp_path), "--by", "split.level", "--against", "pair"]) == 2
    assert "split.level=pair or more than one value of split.level" in capsys.readouterr().err
    # The reference arm alone: its scores and lift over pop, nothing to test against.
    assert main(["compare", str(tmp_path), "--by", "split.level", "--against", "user", "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| sinmo")]
    assert rows and all("| user " in line and "reference" in line and "lower" not in line for line in rows)
    sinmo, pop = _load("sinmo"), _load("pop")
    lift = np.mean([s["final"]["T2"] / p["final"]["T2"] for s, p in zip(sinmo, pop)])
    t2 = next(line for line in rows if "| T2" in line)
    assert f"{lift:.2f} ±" in t2


def test_note_names_the_code_each_arm_ran_only_when_it_differs():
    sinmo = _load("sinmo")
    same = [*_load("pop"), *sinmo, *_arm(sinmo, 8)]
    for r in same:
        r["env"]["code"] = "aaaaaaaaaaaa"
    assert "different code" not in _table(same).note
    other = _arm(sinmo, 8)
    for r in other:
        r["env"]["code"] = "bbbbbbbbbbbb"
    note = _table([*same[: len(same) - len(other)], *other]).note
    n = len(sinmo)  # the none arm also holds pop's cells
    assert f"train.pairs_per_user=8: bbbbbbbbbbbb ({n} cells)" in note
    assert f"train.pairs_per_user=none: aaaaaaaaaaaa ({2 * n} cells)" in note


def test_a_result_records_the_digest_of_the_source_it_ran():
    from curb.runner import _env, source_digest

    digest = source_digest()
    assert len(digest) == 12 and int(digest, 16) >= 0
    assert _env(torch.device("cpu"))["code"] == digest


def test_a_result_written_before_a_knob_existed_counts_under_the_value_it_ran_with():
    (r,) = [x for x in _load("sinmo") if x["spec"]["seed"] == 0]
    old = copy.deepcopy(r)
    old["config"]["backbone"].pop("readout", None)
    assert compare.knob_value(old, "backbone.readout") == "last"
    new = copy.deepcopy(old)
    new["config"]["backbone"]["readout"] = "mean"
    assert compare.knob_value(new, "backbone.readout") == "mean"
    with pytest.raises(CurbError, match="not a config key"):
        compare.knob_value(old, "backbone.no_such_knob")
