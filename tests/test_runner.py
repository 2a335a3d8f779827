"""Runner, evaluator and the two foundation methods, checked through real (tiny) runs."""

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from curb.evaluator import Evaluator
from curb.method import Method, Setup, TaskData, TaskInfo, register
from curb.runner import CellSpec, Fitter, build_stream, resolve_config, run_cell
from curb.streams import SplitConfig


def _complete_lower_triangle(R):
    m = len(R)
    return all((R[j][i] is not None) == (i <= j) for j in range(m) for i in range(m))


def test_result_holds_R_fwt_bwt_config_and_reuses_t1(run_mini):
    sinmo = run_mini("sinmo")
    fine = run_mini("fineall")
    for r in (sinmo, fine):
        assert _complete_lower_triangle(r["R"])
        assert r["config"]["backbone"]["channels"] == 16 and r["spec"]["dataset"] == "synthetic-mini"
        assert set(r["metrics"][0][0]) == {"mrr@5", "hr@5", "ndcg@5"}
        assert set(r["metrics"][-1][3]) == {"acc"}
    # Separate per-task models: old tasks never change (BWT exactly 0).
    assert all(v == 0.0 for v in fine["transfer"]["bwt"][:-1])
    # FWT against the SinMo cell of the same seed/config that ran before it.
    diag_s = [sinmo["R"][i][i] for i in range(5)]
    expect = [(fine["R"][i][i] - diag_s[i]) / diag_s[i] * 100 for i in range(1, 5)]
    assert fine["transfer"]["fwt"][1:] == pytest.approx(expect)
    # Both start from the one cached pre-trained T1 model: identical T1 scores.
    assert fine["R"][0][0] == sinmo["R"][0][0]
    assert any(f["phase"] == "pretrained (cached)" for f in fine["fits"])


def test_result_env_names_the_cpu_instruction_set_its_kernels_used(run_mini):
    """Two machines of one CPU model name can differ in it, and with it the numbers (docs/scaling.md)."""
    import torch

    env = run_mini("sinmo")["env"]
    assert env["device"] == "cpu" and env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["cpu_capability"] in {"DEFAULT", "AVX2", "AVX512", "ZVECTOR", "VSX", "NEON", "SVE128", "SVE256"}


def test_fwt_reference_ignores_the_methods_own_overrides(run_mini):
    """A variant (teracon.sampling=none) finds SinMo; a shared override (train.epochs) must match."""
    sinmo = run_mini("sinmo", **{"train.epochs": "1"})
    variant = run_mini("teracon", **{"train.epochs": "1", "teracon.sampling": "none"})
    diag = [sinmo["R"][i][i] for i in range(5)]
    assert variant["transfer"]["fwt"][1:] == pytest.approx(
        [(variant["R"][i][i] - diag[i]) / diag[i] * 100 for i in range(1, 5)])
    other = run_mini("teracon", **{"train.epochs": "2", "teracon.sampling": "none"})  # no SinMo with 2 epochs
    assert all(v is None for v in other["transfer"]["fwt"])


def test_existing_valid_result_is_reused_not_recomputed(run_mini):
    a = run_mini("pop")
    b = run_mini("pop")
    assert a["created"] == b["created"] and a["checksum"] == b["checksum"]


def test_reversed_run_learns_in_reversed_order(run_mini):
    r = run_mini("pop", order="reversed")
    assert [t["name"] for t in r["tasks"]] == ["T1", "T5", "T4", "T3", "T2"]
    fwd = run_mini("pop")
    # Same split per task whatever the order: pop scores are identical per task.
    assert r["final"] == pytest.approx(fwd["final"])


def test_pop_scores_match_a_direct_count(tiny_stream):
    """pop's accuracy on a classify task = share of test labels equal to the train majority."""
    from curb.streams import split_task

    ev = Evaluator(tiny_stream, SplitConfig())
    cfg = resolve_config(CellSpec("pop", "synthetic-mini"))
    setup = Setup(tiny_stream.n_items, 12, cfg.backbone, cfg.train, None, torch.device("cpu"), 0)
    from curb.methods.pop import Pop

    pop = Pop(setup)
    pop.learn_task(ev.info("T4"), ev.train_data("T4"), ev.val_data("T4"), None)
    parts = split_task(tiny_stream.task("T4"), SplitConfig())
    counts = np.bincount(parts["train"].labels, minlength=4)
    assert len(np.flatnonzero(counts == counts.max())) == 1  # no tie on this stream
    expect = np.mean(parts["test"].labels == counts.argmax())
    assert ev.test(pop, "T4")["acc"] == pytest.approx(expect)


def test_pop_next_item_counts_every_training_target_and_scores_all_users_alike(tiny_stream):
    """pop on T1 counts each training user's next-item targets (every item after the first
    position, padding excluded) and gives every user those counts as scores."""
    from curb.methods.pop import Pop
    from curb.streams import split_task

    ev = Evaluator(tiny_stream, SplitConfig())
    cfg = resolve_config(CellSpec("pop", "synthetic-mini"))
    pop = Pop(Setup(tiny_stream.n_items, 12, cfg.backbone, cfg.train, None, torch.device("cpu"), 0))
    pop.learn_task(ev.info("T1"), ev.train_data("T1"), ev.val_data("T1"), None)
    users = split_task(tiny_stream.task("T1"), SplitConfig())["train"].users
    seqs = tiny_stream.sequences[users]
    assert (seqs[:, 1:] == 0).any()  # padding among the target positions, to be excluded
    targets = seqs[:, 1:][seqs[:, 1:] != 0]
    want = np.bincount(targets, minlength=tiny_stream.task("T1").n_labels)
    assert np.array_equal(pop.counts["T1"].numpy(), want)
    assert want[0] == 0 and want.sum() == len(targets)
    x = torch.from_numpy(seqs[:5])
    logits = pop.forward_logits("T1", x, train=False)
    assert logits.shape == (5, len(want)) and all(torch.equal(logits[0], row) for row in logits)


def _setup_for(spec, stream, pre):
    cfg = resolve_config(spec)
    from curb.methods.sinmo import SinMo

    return cfg, Setup(stream.n_items, stream.sequences.shape[1], cfg.backbone, cfg.train, SinMo.Config(),
                      torch.device("cpu"), 0, pretrained_t1=lambda: copy.deepcopy(pre))


@pytest.mark.parametrize("name,starts_from_t1", [("fineall", True), ("sinmo", False)])
def test_fineall_starts_from_t1_weights_and_sinmo_does_not(name, starts_from_t1):
    from curb.backbone import PlainModel
    from curb.method import get_method

    spec = CellSpec(name, "synthetic-mini")
    stream = build_stream(spec, None)
    torch.manual_seed(1)
    pre = PlainModel(stream.n_items, resolve_config(spec).backbone)
    pre.add_head("T1", stream.n_items)
    cfg, setup = _setup_for(spec, stream, pre)
    ev = Evaluator(stream, cfg.split)
    m = get_method(name)(setup)
    m.learn_task(ev.info("T1"), ev.train_data("T1"), ev.val_data("T1"), Fitter(cfg, lambda *_: None))
    m.tasks.append(ev.info("T2"))
    m.begin_task(ev.info("T2"))  # the T2 model before any training step
    new, t1 = m.models["T2"].backbone.state_dict(), pre.backbone.state_dict()
    if starts_from_t1:
        assert all(torch.equal(new[k], t1[k]) for k in t1)
    else:  # LayerNorms start at (1, 0) in any model; the learnable tensors must differ
        assert not any(torch.equal(new[k], t1[k]) for k in t1 if "conv" in k or "item_emb" in k)
    # T1's model is the pre-trained one, untouched.
    assert all(torch.equal(m.models["T1"].backbone.state_dict()[k], t1[k]) for k in t1)


@register("spy-test")
class Spy(Method):
    """Records everything the runner hands it; scores with a fixed random head."""

    seen: list = []

    def __init__(self, setup):
        super().__init__(setup)
        self.emb = torch.nn.Embedding(setup.n_items, 4)
        self.heads = torch.nn.ModuleDict()

    def learn_task(self, task, train, val, fit):
        Spy.seen.append((task, train, val, fit))
        self.tasks.append(task)
        self.heads[task.name] = torch.nn.Linear(4, task.n_labels)

    def forward_logits(self, task, x, *, train, all_positions=False, batch=None):
        Spy.seen.append(("score", task, x.shape))
        return self.heads[task](self.emb(x[:, -1]))

    def modules(self):
        return {"emb": self.emb, "heads": self.heads}


def test_methods_only_receive_train_and_val_never_test(tmp_path):
    Spy.seen = []
    spec = CellSpec("spy-test", "synthetic-mini")
    run_cell(spec, tmp_path, echo=lambda *_: None)
    stream = build_stream(spec, None)
    ev = Evaluator(stream, resolve_config(spec).split)
    learned = [s for s in Spy.seen if s[0] != "score"]
    assert [t.name for t, *_ in learned] == stream.task_names
    for task, train, val, fit in learned:
        assert isinstance(task, TaskInfo) and not hasattr(task, "targets")
        for got, want in ((train, ev.train_data(task.name)), (val, ev.val_data(task.name))):
            assert isinstance(got, TaskData)
            assert np.array_equal(got.inputs, want.inputs) and np.array_equal(got.labels, want.labels)
        # No test user's sequence is among the training or validation inputs (user-level split).
        test_rows = {r.tobytes() for r in stream.sequences[ev._splits[task.name]["test"].users]}
        train_rows = {r.tobytes() for r in np.concatenate([train.inputs, val.inputs])}
        assert len({r.tobytes() for r in stream.sequences}) == stream.n_users  # all sequences distinct
        assert not (test_rows & train_rows)
        # Nothing reachable from what the method received leads to the evaluator.
        reach = [fit, *vars(fit).values(), getattr(fit.validate, "func", None), *getattr(fit.validate, "keywords", {}).values()]
        assert not any(isinstance(o, Evaluator) or getattr(o, "__self__", None).__class__ is Evaluator for o in reach)


def test_results_of_other_data_are_never_reused(tmp_path, monkeypatch):
    """Same spec, different data behind the dataset name: refuse instead of returning stale numbers."""
    import curb.runner
    from curb.datasets import synthetic
    from curb.results import ResultError

    spec = CellSpec("pop", "synthetic-mini")
    first = run_cell(spec, tmp_path, echo=lambda *_: None)
    assert first["dataset"]["base_fingerprint"] == first["dataset"]["fingerprint"]
    monkeypatch.setattr(curb.runner, "build_stream", lambda spec, data_dir: synthetic.generate(400, 60, 12, seed=5))
    with pytest.raises(ResultError, match="different data"):
        run_cell(spec, tmp_path, echo=lambda *_: None)


@pytest.mark.parametrize("method", ["fineall", "mtl"])
def test_per_user_scores_round_trip_to_the_reported_scores(run_mini, method):
    """The per-user test sums stored in a result give back R's final row and diagonal exactly
    (pair-weighted means), and cover the same users in every result of the split."""
    from curb.results import unpack_array

    res = run_mini(method)
    other = run_mini("pop")
    names = [t["name"] for t in res["tasks"]]
    m = len(names)
    for i, name in enumerate(names):
        if res["R"][m - 1][i] is None:
            assert name not in res["per_user"]  # MTL has no T1 score
            continue
        block = res["per_user"][name]
        counts = unpack_array(block["counts"], "<u4")
        assert block["metric"] == res["tasks"][i]["metric"]
        assert len(counts) == res["tasks"][i]["split"]["test"]["users"]
        assert counts.sum() == res["tasks"][i]["split"]["test"]["pairs"]
        final = unpack_array(block["final"], "<f8")
        assert final.sum() / counts.sum() == pytest.approx(res["R"][m - 1][i], rel=1e-12, abs=1e-15)
        if method == "mtl":
            assert "diag" not in block
        else:
            diag = unpack_array(block["diag"], "<f8")
            assert diag.sum() / counts.sum() == pytest.approx(res["R"][i][i], rel=1e-12, abs=1e-15)
        assert other["per_user"][name]["users"] == block["users"]


def test_a_result_of_other_defaults_or_protocol_is_refused_not_reused(run_mini, tmp_path):
    """A result written under older defaults (or protocol) at this cell's path never passes for
    today's: reusing it would put old-protocol numbers on a new board."""
    from curb.results import ResultError, load_result, save_result

    res = run_mini("pop")
    path = tmp_path / "runs" / CellSpec(**{**res["spec"], "overrides": ()}).relpath()
    old = {k: v for k, v in load_result(path).items() if k not in ("schema", "checksum")}
    now = old["config"]["train"]["t1_epochs"]
    save_result(path, {**old, "config": {**old["config"], "train": {**old["config"]["train"], "t1_epochs": now + 7}}})
    with pytest.raises(ResultError, match=f"train.t1_epochs: {now + 7} -> {now}"):
        run_mini("pop")
    save_result(path, {**old, "protocol": 1})
    with pytest.raises(ResultError, match="protocol 1 -> 2"):
        run_mini("pop")
    save_result(path, {**old, "config": {**old["config"], "train": {k: v for k, v in old["config"]["train"].items()
                                                                     if k != "round_steps"}}})
    assert run_mini("pop")["final"] == res["final"]  # a knob added since is not a difference


@register("peek-test")
class Peek(Spy):
    """Test-only: a dishonest method that walks the call stack looking for the evaluator."""

    found: list = []

    def forward_logits(self, task, x, *, train, all_positions=False, batch=None):
        frame = sys._getframe()
        while frame is not None:
            Peek.found += [v for v in frame.f_locals.values() if isinstance(v, Evaluator)]
            frame = frame.f_back
        return super().forward_logits(task, x, train=train, all_positions=all_positions, batch=batch)


def test_isolation_holds_for_honest_methods_only_and_the_docs_say_so(tmp_path):
    """The interface keeps test labels from a method, not a method from the interpreter: a method
    walking the stack reaches the evaluator. The documentation must not promise more."""
    Peek.found = []
    run_cell(CellSpec("peek-test", "synthetic-mini"), tmp_path, echo=lambda *_: None)
    assert Peek.found  # the limit is real (no sandbox)
    doc = " ".join((Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text().split())
    assert "This isolation holds for **honest methods only**" in doc and "`sys._getframe()`" in doc
