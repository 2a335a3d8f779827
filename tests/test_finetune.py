"""FineTune and the per-task-model baselines (SinMo, FineAll): where each task's model starts, and
what learning a later task may and may not change."""

from __future__ import annotations

import pytest
import torch

from harness import Harness


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_finetune_starts_from_the_pretrained_model_and_forgets():
    """T1 is the shared pre-trained model as is; a later task trains the shared backbone (T1's
    scores move: nothing protects them) but never T1's own head."""
    h = Harness("finetune", **{"train.epochs": 1})
    m = h.learn("T1")
    pre = h.pretrained()
    assert _equal(_state(m.model), _state(pre))
    t1_head = _state(m.model.heads["T1"])
    before = h.scores(m)["T1"]
    h.learn("T2")
    assert _equal(_state(m.model.heads["T1"]), t1_head)
    assert not _equal(_state(m.model.backbone), _state(pre.backbone))
    assert not torch.equal(h.scores(m)["T1"], before)
    assert set(m.model.heads) == {"T1", "T2"}


@pytest.mark.parametrize("name", ["fineall", "sinmo"])
def test_a_later_task_model_starts_from_t1_for_fineall_and_fresh_for_sinmo(name):
    """FineAll copies T1's backbone for every later task (T3 too, not the T2 model it just
    trained); SinMo starts each from fresh weights. Neither touches a past task's model."""
    h = Harness(name, **{"train.epochs": 1})
    m = h.learn("T1", "T2")
    t1, t2 = _state(m.models["T1"].backbone), _state(m.models["T2"].backbone)
    assert not _equal(t1, t2)  # T2 trained its own copy
    t3 = h.ev.info("T3")
    m.tasks.append(t3)
    m.begin_task(t3)
    new = _state(m.models["T3"].backbone)
    learnable = [k for k in t1 if "conv" in k or "item_emb" in k]
    if name == "fineall":
        assert _equal(new, t1)
    else:  # LayerNorms start at (1, 0) in any model; the learnable tensors must differ
        assert not any(torch.equal(new[k], t1[k]) or torch.equal(new[k], t2[k]) for k in learnable)
    m.tasks.pop()
    del m.models["T3"]
    h.learn("T3")
    assert _equal(_state(m.models["T1"].backbone), t1) and _equal(_state(m.models["T2"].backbone), t2)
