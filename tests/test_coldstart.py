"""Cold-start study (curb/coldstart.py): the held-out stream, Method.represent, the NCF protocol
(warm/cold split, candidates, metrics) and the end-to-end run on synthetic-mini."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from curb.backbone import PlainModel
from curb.coldstart import (NCFConfig, build_ncf, capture_representations, group_metrics, load_cold_start,
                            ncf_data, rank_metrics, ranks, run_cold_start, runs_dir, scale_representation,
                            score_candidates, training_negatives, user_representations)
from curb.method import Setup, get_method
from curb.records import cold_start_rows
from curb.results import load_result, load_sealed
from curb.runner import CellSpec, resolve_config, run_cell
from curb.streams import StreamError, Targets, Task

FAST = (("train.epochs", "1"), ("train.t1_epochs", "1"))


# ----------------------------------------------------------------------------------- stream
def test_without_drops_one_task_keeps_order_and_refuses_t1(tiny_stream):
    s = tiny_stream.without("T3")
    assert s.task_names == ["T1", "T2", "T4", "T5"]
    assert s.task("T4") is tiny_stream.task("T4")
    assert tiny_stream.task_names == ["T1", "T2", "T3", "T4", "T5"]  # not mutated
    assert s.fingerprint() != tiny_stream.fingerprint()
    assert s.without("T5").task_names == ["T1", "T2", "T4"]
    with pytest.raises(StreamError, match="next-item task must stay first"):
        tiny_stream.without("T1")
    with pytest.raises(StreamError, match="no task 'T9'"):
        tiny_stream.without("T9")


# ----------------------------------------------------------------------------------- represent
HEADS = {
    "sinmo": lambda m, t: m.models[t].heads[t],
    "fineall": lambda m, t: m.models[t].heads[t],
    "conure": lambda m, t: m.net.heads[t],
    "teracon": lambda m, t: m.net.heads[t],
    "hat": lambda m, t: m.net.heads[t],
    "piggyback": lambda m, t: m.model.heads[t],
    "peterrec": lambda m, t: m.adapters[t].head if t in m.adapters else m.base.heads[t],
    "mtl": lambda m, t: m.model.heads[t],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")  # shared: one pre-trained T1 model for every method


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_of_represent_is_forward_logits(name, runs):
    """After every task, every learned task's logits are its head applied to represent()."""
    seen, checked = [], []

    def check(method, task, stream):
        seen.append(task)
        x = torch.from_numpy(stream.sequences[:50])
        for t in method.tasks:
            rep = method.user_vectors(t.name, x)
            assert rep.shape == (50, method.setup.backbone.channels)
            with torch.no_grad():
                via_rep = HEADS[name](method, t.name)(rep)
            assert torch.allclose(via_rep, method.score(t.name, x), atol=1e-6, rtol=1e-5)
            checked.append(t.name)
        if name not in ("mtl", "piggyback") and len(method.tasks) > 2:  # one backbone, or masks may still be all ones
            views = [method.user_vectors(t.name, x) for t in method.tasks[1:]]
            assert not torch.allclose(views[0], views[-1], atol=1e-4), "represent ignores the task's view"
        # batched over users, row i is user i's own representation
        rows = user_representations(method, task, stream.sequences, method.device, chunk=64)
        for i in (0, 7, 399):
            single = method.user_vectors(task, torch.from_numpy(stream.sequences[i:i + 1]))[0].numpy()
            np.testing.assert_allclose(rows[i], single, atol=1e-5, rtol=1e-5)

    spec = CellSpec(name, "synthetic-mini", overrides=FAST)
    run_cell(spec, runs, echo=lambda *_: None, transform=lambda s: s.without("T3"), on_task_end=check)
    assert seen == (["T5"] if name == "mtl" else ["T1", "T2", "T4", "T5"])
    assert set(checked) >= {"T2", "T4", "T5"}


def test_represent_is_an_explicit_extension_point():
    cls = get_method("pop")
    cfg = resolve_config(CellSpec("pop", "synthetic-mini"))
    m = cls(Setup(61, 12, cfg.backbone, cfg.train, cfg.method, torch.device("cpu"), 0))
    with pytest.raises(NotImplementedError, match="'pop' exposes no user representation"):
        m.represent("T1", torch.zeros(2, 12, dtype=torch.long))


# ----------------------------------------------------------------------------------- protocol
def _task(counts: list[int], n_items: int = 40, seed: int = 0) -> Task:
    """A recommend task whose user k (stream row 2k + 1) has counts[k] distinct items."""
    rng = np.random.default_rng(seed)
    users = np.repeat(2 * np.arange(len(counts)) + 1, counts)
    items = np.concatenate([rng.choice(n_items, c, replace=False) for c in counts])
    return Task("T3", "recommend", n_items, Targets.from_pairs(users, items))


def test_warm_cold_split_follows_the_threshold_exactly():
    counts = [1, 2, 3, 4, 5, 8, 2, 3, 6, 12] * 6
    task = _task(counts)
    cfg = NCFConfig(cold_threshold=3, cold_frac=0.25, cold_keep=1, eval_negatives=9)
    d = ncf_data(task, 2 * len(counts) + 1, cfg, seed=4)
    tg = task.targets
    # independent count of each test user's training interactions
    per_user = {int(u): 0 for u in d.test_users}
    for u in d.train_users:
        per_user[int(u)] += 1
    n_train = np.array([per_user[int(u)] for u in d.test_users])
    np.testing.assert_array_equal(n_train, d.train_counts)
    g = d.groups()
    np.testing.assert_array_equal(g["cold"], n_train < 3)
    np.testing.assert_array_equal(g["warm"], n_train >= 3)
    assert g["cold"].sum() + g["warm"].sum() == len(counts)
    # natural cold: fewer than threshold items once the test item is out; simulated: a seeded
    # quarter of the naturally warm users, truncated to their first item
    rest = np.array(counts) - 1
    np.testing.assert_array_equal(g["cold_natural"], rest < 3)
    assert d.simulated.sum() == round(0.25 * (rest >= 3).sum())
    assert np.all(n_train[d.simulated] == 1) and not np.any(d.simulated & (rest < 3))
    for k, u in enumerate(tg.users):  # test = last item in data order; train, val, test disjoint positives
        mine = tg.labels[tg.ptr[k]:tg.ptr[k + 1]]
        assert d.test_cands[k, 0] == mine[-1]
        train = d.train_items[d.train_users == u]
        if d.simulated[k]:
            np.testing.assert_array_equal(train, mine[:1])
        if u in d.val_users:
            v = d.val_cands[list(d.val_users).index(u), 0]
            assert v == mine[-2] and not d.simulated[k] and rest[k] >= 4
            assert v not in train
        assert mine[-1] not in train and set(train) <= set(mine)
    assert len(d.val_users) == ((rest >= 4) & ~d.simulated).sum()


def test_candidates_avoid_positives_and_are_fixed_by_the_seed():
    task = _task([1, 3, 7, 20, 30, 5] * 10, n_items=60, seed=1)
    cfg = NCFConfig(eval_negatives=25, cold_frac=0.2)
    a, b = ncf_data(task, 200, cfg, seed=0), ncf_data(task, 200, cfg, seed=0)
    tg = task.targets
    for d in (a,):
        for cands, users in ((d.test_cands, d.test_users), (d.val_cands, d.val_users)):
            for row, u in zip(cands, users):
                k = np.searchsorted(tg.users, u)
                pos = set(tg.labels[tg.ptr[k]:tg.ptr[k + 1]].tolist())
                assert row[0] in pos and not (set(row[1:].tolist()) & pos)
                assert len(set(row[1:].tolist())) == 25  # distinct
    for f in ("test_cands", "val_cands", "train_users", "train_items", "simulated"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    other = ncf_data(task, 200, cfg, seed=1)
    assert not np.array_equal(other.test_cands[:, 1:], a.test_cands[:, 1:])
    with pytest.raises(ValueError, match="fewer than 45 negatives"):
        ncf_data(task, 200, NCFConfig(eval_negatives=45), seed=0)  # a user owns 30 of 60 items
    # training negatives: never one of the user's training positives, reproducible per epoch
    keys = np.unique(a.train_users * a.n_items + a.train_items)
    neg = training_negatives(a.train_users, a.n_items, 4, keys, np.random.default_rng([0, 1]))
    assert neg.shape == (len(a.train_users), 4)
    assert not np.isin(np.repeat(a.train_users, 4) * a.n_items + neg.ravel(), keys).any()
    again = training_negatives(a.train_users, a.n_items, 4, keys, np.random.default_rng([0, 1]))
    np.testing.assert_array_equal(neg, again)


def _brute(scores: np.ndarray) -> dict[str, list[float]]:
    out = {"hr@1": [], "hr@5": [], "hr@10": [], "ndcg@10": []}
    for row in scores:
        above = sum(1 for s in row[1:] if s > row[0])
        tied = sum(1 for s in row[1:] if s == row[0])
        r = 1 + above + tied / 2
        for k in (1, 5, 10):
            out[f"hr@{k}"].append(1.0 if r <= k else 0.0)
        out["ndcg@10"].append(1 / math.log2(r + 1) if r <= 10 else 0.0)
    return out


def test_metrics_match_brute_force_on_a_hand_made_case():
    rng = np.random.default_rng(0)
    s = np.round(rng.normal(size=(8, 100)), 1)  # coarse values: many ties
    s[0, 0] = 9.0  # best: rank 1
    s[1, [0, 5]] = 9.0  # tied for first: rank 1.5, no HR@1
    s[2] = 0.0  # constant scorer: rank 50.5
    s[3, 0] = -9.0  # worst: rank 100
    s[4] = np.where(np.arange(100) < 11, 1.0, -1.0)  # tied with 10 others above the rest: rank 6
    rank = ranks(torch.from_numpy(s))
    assert rank[:5].tolist() == [1.0, 1.5, 50.5, 100.0, 6.0]
    brute = _brute(s)
    got = rank_metrics(rank)
    for k, v in brute.items():
        np.testing.assert_allclose(got[k].numpy(), v)
    groups = {"a": np.array([1, 1, 0, 0, 1, 0, 0, 1], bool), "none": np.zeros(8, bool)}
    m = group_metrics(rank, groups)
    assert m["a"]["n_users"] == 4 and m["none"] == {"n_users": 0, **dict.fromkeys(brute)}
    for k, v in brute.items():
        assert m["a"][k] == pytest.approx(np.mean(np.array(v)[groups["a"]]))
    assert m["a"]["hr@1"] == pytest.approx(0.25)  # only row 0 is a top-1 hit


def test_representation_init_copies_scaled_rows_into_both_user_tables():
    task = _task([2, 3, 4, 5] * 5, n_items=30)
    d = ncf_data(task, 45, NCFConfig(eval_negatives=9), seed=0)
    rng = np.random.default_rng(3)
    reps = (rng.normal(size=(45, 8)) * rng.uniform(0.5, 20, size=8) + 5).astype(np.float32)
    reps[d.test_users, 3] = 1.0  # constant over the task's users (not over the others): becomes 0 everywhere
    scaled = scale_representation(reps, d.test_users, 0.01)
    sub = reps[d.test_users].astype(np.float64)
    want = (reps - sub.mean(0)) / np.where(sub.std(0) > 0, sub.std(0), 1) * 0.01
    want[:, 3] = 0
    np.testing.assert_allclose(scaled, want, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(scaled[d.test_users].std(0)[[0, 1, 2, 4]], 0.01, rtol=1e-4)
    cfg = NCFConfig(eval_negatives=9)
    rand, init = build_ncf(d, cfg, 8, 0, None), build_ncf(d, cfg, 8, 0, scaled)
    for table in (init.user_gmf, init.user_mlp):
        np.testing.assert_array_equal(table.weight.detach().numpy(), scaled)  # row i = user i
    np.testing.assert_allclose(rand.user_gmf.weight.detach().std().item(), 0.01, rtol=0.2)
    for (k, p), (_, q) in zip(rand.state_dict().items(), init.state_dict().items()):
        if not k.startswith("user_"):  # everything else is the same draw in every variant
            assert torch.equal(p, q), k
    # scoring is aligned with users and candidates
    users, cands = d.test_users[:3], d.test_cands[:3]
    sc = score_candidates(init, users, cands, torch.device("cpu"), chunk=2)
    with torch.no_grad():
        for r, u in enumerate(users):
            for c in (0, 4):
                one = init(torch.tensor([u]), torch.tensor([cands[r, c]]))
                assert sc[r, c].item() == pytest.approx(one.item(), abs=1e-6)


# ----------------------------------------------------------------------------------- end to end
def test_captured_rows_are_each_users_representation(tmp_path):
    """FineAll after T1 read through T1 is the shared pre-trained model: recompute from its cache."""
    spec = CellSpec("fineall", "synthetic-mini", overrides=FAST)
    runs = runs_dir(tmp_path, "synthetic-mini", "T3")
    paths = capture_representations(spec, "T3", runs, ["T1", "T2"], "latest", None, echo=lambda *_: None)
    _, blob = load_sealed(paths["T1"])
    reps = blob["vectors"].numpy()
    (cache,) = (runs / ".cache" / "t1").glob("*.pt")
    state = load_sealed(cache)[1]["state"]
    from curb.runner import build_stream

    stream = build_stream(spec, None)
    model = PlainModel(stream.n_items, resolve_config(spec).backbone)
    model.add_head("T1", stream.task("T1").n_labels)
    model.load_state_dict(state)
    with torch.no_grad():
        want = model.backbone(torch.from_numpy(stream.sequences))[:, -1].numpy()
    np.testing.assert_allclose(reps, want, atol=1e-5, rtol=1e-5)
    assert not np.allclose(load_sealed(paths["T2"])[1]["vectors"].numpy(), want, atol=1e-3)  # T2's own model
    result = load_result(runs / spec.relpath())
    assert [t["name"] for t in result["tasks"]] == ["T1", "T2", "T4", "T5"]  # T3 never learned


def test_seeds_run_in_parallel_give_the_numbers_of_the_serial_study(tmp_path):
    """`jobs=2` runs each seed (its continual cell and NCF runs) in a worker process: same files,
    same numbers as one seed after the other in this process."""
    ov = {"ncf.eval_negatives": "19", "ncf.epochs": "2", "train.epochs": "1", "train.t1_epochs": "1"}
    runs, echoed = {}, {}
    for jobs in (1, 2):
        echoed[jobs] = []
        paths = run_cold_start("synthetic-mini", ("fineall",), (0, 1), ("T2",), tmp_path / f"jobs{jobs}",
                               echo=echoed[jobs].append, overrides=ov, jobs=jobs)
        runs[jobs] = {p.relative_to(tmp_path / f"jobs{jobs}"): load_result(p) for p in paths}
    assert echoed[1] and echoed[2] == []  # the workers print to stdout: no seed ran in this process
    assert list(runs[1]) == list(runs[2]) and len(runs[1]) == 2 * 2  # random and fineall-after-T2, per seed
    for path, serial in runs[1].items():
        parallel = runs[2][path]
        assert parallel["groups"] == serial["groups"]
        assert [e["loss"] for e in parallel["fit"]["epochs"]] == [e["loss"] for e in serial["fit"]["epochs"]]
        assert parallel["representation"] == serial["representation"]
    seeds = {path: r["spec"]["seed"] for path, r in runs[1].items()}
    assert sorted(seeds.values()) == [0, 0, 1, 1]
    assert runs[1][next(p for p, s in seeds.items() if s == 0)]["groups"] != \
        runs[1][next(p for p, s in seeds.items() if s == 1)]["groups"]  # the seeds really differ


def test_run_cold_start_end_to_end_writes_and_reuses_results(tmp_path):
    ov = {"ncf.eval_negatives": "19", "ncf.epochs": "2", "train.epochs": "1", "train.t1_epochs": "1"}
    paths = run_cold_start("synthetic-mini", ("fineall",), (0,), None, tmp_path, echo=lambda *_: None, overrides=ov)
    assert [p.parent.name for p in paths] == ["random", "fineall-after-T2", "fineall-after-T5"]
    results = [load_result(p) for p in paths]
    for r in results:
        assert r["kind"] == "cold-start" and r["dataset"]["stream_tasks"] == ["T1", "T2", "T4", "T5"]
        g = r["groups"]
        assert g["warm"]["n_users"] + g["cold"]["n_users"] == g["all"]["n_users"] == 100
        assert g["cold"]["n_users"] == r["data"]["cold_users"] > 0 and len(r["fit"]["epochs"]) <= 2
    assert results[0]["groups"]["cold"]["n_users"] == results[1]["groups"]["cold"]["n_users"]
    assert results[1]["representation"]["after"] == "T2" and results[0]["representation"] is None
    assert results[1]["groups"] != results[0]["groups"]  # the init changed the model
    mtimes = [p.stat().st_mtime_ns for p in paths]
    again = run_cold_start("synthetic-mini", ("fineall",), (0,), None, tmp_path, echo=lambda *_: None, overrides=ov)
    assert again == paths and [p.stat().st_mtime_ns for p in paths] == mtimes
    rows = cold_start_rows(load_cold_start(tmp_path))
    assert len(rows) == 3 * 5 and {r["source"] for r in rows} == {p.parent.name for p in paths}
    assert {r["group"] for r in rows} == {"all", "warm", "cold", "cold_natural", "cold_simulated"}
    # the continual cells are hidden from report/leaderboard scans
    assert all(r["kind"] == "cold-start" for r in load_cold_start(tmp_path))
    assert list(tmp_path.glob("synthetic-mini/fineall")) == []
