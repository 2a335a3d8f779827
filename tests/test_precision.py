"""bf16 autocast and torch.compile are options of the shared loop; on CPU they must run and agree
with the fp32 eager path (the CUDA path is the same code with device_type="cuda")."""

import dataclasses
import math

import pytest
import torch

from curb.evaluator import Evaluator
from curb.method import Setup
from curb.methods.sinmo import SinMo
from curb.runner import CellSpec, build_stream, resolve_config
from curb.training import train_epoch


def _method(**train):
    spec = CellSpec("sinmo", "synthetic-mini")
    cfg = resolve_config(spec)
    stream = build_stream(spec, None)
    ev = Evaluator(stream, cfg.split)
    torch.manual_seed(0)
    m = SinMo(Setup(stream.n_items, 12, cfg.backbone, dataclasses.replace(cfg.train, **train), SinMo.Config(),
                    torch.device("cpu"), 0))
    info = ev.info("T2")
    m.tasks.append(info)
    m.begin_task(info)
    return m, info, ev.train_data("T2")


def test_bf16_autocast_computes_in_bf16_and_stays_close_to_fp32():
    m32, info, data = _method()
    m16, _, _ = _method(precision="bf16")
    x = torch.from_numpy(data.inputs[:8])
    with m16.autocast():
        assert m16.forward_logits("T2", x, train=True).dtype == torch.bfloat16
    s32, s16 = m32.score("T2", x), m16.score("T2", x)
    assert s16.dtype == torch.bfloat16 and torch.allclose(s16.float(), s32, atol=0.05)
    before = [p.detach().clone() for p in m16.trainable_parameters(info)]
    loss, steps = train_epoch(m16, info, data, m16.make_optimizer(info), 64)
    assert steps > 0 and math.isfinite(loss)
    after = list(m16.trainable_parameters(info))
    assert all(p.dtype == torch.float32 for p in after)  # autocast: the weights stay fp32
    assert any(not torch.equal(a, b) for a, b in zip(before, after))  # and they trained


def test_train_compile_flag_trains_like_eager():
    m, info, data = _method()
    mc, _, _ = _method(compile=True)
    eager = train_epoch(m, info, data, m.make_optimizer(info), 64)
    compiled = train_epoch(mc, info, data, mc.make_optimizer(info), 64)
    assert mc._compiled_loss is not None  # the flag really routed the loss through torch.compile
    assert compiled[1] == eager[1] and compiled[0] == pytest.approx(eager[0], rel=1e-4)
