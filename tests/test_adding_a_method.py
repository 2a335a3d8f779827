"""The example in docs/adding-a-method.md is real: extract it, run it end to end, check it."""

import re
from pathlib import Path

import pytest
import torch

from curb.method import available_methods

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-method.md"


@pytest.fixture(scope="module")
def probe_cls():
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    ns: dict = {}
    exec(compile(code, str(DOC), "exec"), ns)
    yield ns["LinearProbe"]


def test_example_registers_and_runs_end_to_end(probe_cls, run_mini):
    assert available_methods()["linear-probe"] is probe_cls
    res = run_mini("linear-probe")
    names = [t["name"] for t in res["tasks"]]
    m = len(names)
    assert all(res["R"][j][i] is not None for j in range(m) for i in range(j + 1))
    # The backbone is frozen and heads are per task: nothing learned later changes an old task.
    assert all(res["R"][m - 1][i] == res["R"][i][i] for i in range(m))
    assert res["transfer"]["bwt_mean"] == 0.0


def test_example_trains_only_its_heads(probe_cls, run_mini, tmp_path):
    from curb.evaluator import Evaluator
    from curb.runner import CellSpec, build_stream, resolve_config, Fitter
    from curb.method import Setup

    spec = CellSpec("linear-probe", "synthetic-mini")
    cfg = resolve_config(spec)
    stream = build_stream(spec, None)
    ev = Evaluator(stream, cfg.split)
    torch.manual_seed(0)
    from curb.backbone import PlainModel

    pre = PlainModel(stream.n_items, cfg.backbone)
    pre.add_head("T1", stream.n_items)
    setup = Setup(stream.n_items, 12, cfg.backbone, cfg.train, None, torch.device("cpu"), 0,
                  pretrained_t1=lambda: __import__("copy").deepcopy(pre))
    m = probe_cls(setup)
    fit = Fitter(cfg, echo=lambda *_: None)
    for name in ("T1", "T2"):
        m.learn_task(ev.info(name), ev.train_data(name), ev.val_data(name), fit)
    for k, v in pre.backbone.state_dict().items():
        assert torch.equal(v, m.model.backbone.state_dict()[k]), k
    assert not torch.equal(m.model.heads["T2"].bias, torch.full_like(m.model.heads["T2"].bias, 0.1))


def test_forward_logits_defaults_to_head_of_represent_and_says_what_is_missing():
    """A method may write `represent` and `head` instead of `forward_logits`; one with neither
    is told which to write, not handed a bare NotImplementedError."""
    from torch import nn

    from curb.method import Method

    class Views(Method):
        def __init__(self):  # no Setup needed: only the views are exercised
            self.lin = nn.Linear(3, 4)

        def represent(self, task, x, *, train=False, all_positions=False, batch=None):
            return x * 2.0

        def head(self, task):
            return self.lin

    x = torch.randn(5, 3)
    v = Views()
    assert torch.equal(v.forward_logits("T2", x, train=False), v.lin(x * 2.0))

    class Nothing(Method):
        name = "nothing"

        def __init__(self):
            pass

    with pytest.raises(NotImplementedError, match=r"implement them .*or override Method\.forward_logits"):
        Nothing().forward_logits("T2", x, train=False)
