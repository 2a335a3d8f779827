"""HAT (docs/protocol.md §6.6; Serra et al., ICML 2018): hard attention to the task, on the TCN.

Each task t has an embedding e^t ∈ R^{blocks×2×f}: one row per gated sublayer output (h1, h2 of
every block, the places TERACON gates). The gate σ(s·e) multiplies the sublayer after its ReLU;
s is annealed per batch (docs/protocol.md §4.6) while training and is smax at inference, so trained gates are
near-binary. After each task the cumulative mask A = max(A, σ(smax·e^t)) records the units old
tasks use; later tasks may not change the weights feeding into them (gradients scaled by
1 − A, see `grad_factors`), and the attention regulariser makes a task pay for claiming units
that are still free, so capacity is left for later tasks. HAT trains its own (gated) T1 stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from curb.backbone import Hooks, NextItNet, make_head
from curb.method import Batch, Knob, Method, Setup, TaskInfo, anneal, register
from curb.metrics import mask_similarity


class HatNet(nn.Module):
    """Backbone, one head and one gate embedding per task, and the cumulative mask A."""

    def __init__(self, setup: Setup):
        super().__init__()
        self.backbone = NextItNet(setup.n_items, setup.backbone)
        self.heads = nn.ModuleDict()
        self.emb = nn.ParameterDict()
        cfg = setup.backbone
        self.register_buffer("cum", torch.zeros(len(cfg.dilations), 2, cfg.channels))


@register("hat")
class Hat(Method):
    summary = "hard attention to the task: annealed unit gates per task, gradients masked by past gates"
    benchmark = True  # one of the `--methods all` set
    grows_items = True  # item embeddings are ungated and stay trainable: new rows simply join them

    tune_space = {"hat.lam": Knob("log", 0.1, 4.0), "hat.emb_init": Knob("choice", choices=("uniform", "normal"))}

    @dataclass
    class Config:
        smax: float = 50.0  # TERACON setting ([R]/[O]); the HAT paper uses 400
        lam: float = 0.75  # λ of the attention regulariser
        emb_init: Literal["uniform", "normal"] = "uniform"  # U(0, 2) (TERACON setting) or [H]'s N(0, 1)
        clamp: float = 6.0  # task embeddings clamped to ±clamp after every step
        grad_comp: bool = True  # embedding-gradient compensation (UNSURE: docs/protocol.md §6.6)
        freeze_item_emb_after_t1: bool = False  # HAT's rule leaves ungated parameters trainable
        # T1 stage: "hat" (regulariser and compensation, as in every stage) or "teracon" (neither,
        # exactly TERACON's T1 stage), so a HAT-vs-TERACON BWT comparison starts from the same T1 recipe
        t1_stage: Literal["hat", "teracon"] = "hat"

        def __post_init__(self) -> None:
            if not self.smax > 0 or self.lam < 0 or not self.clamp > 0:
                raise ValueError(f"need smax > 0, lam >= 0, clamp > 0; got {self}")

    def __init__(self, setup: Setup):
        super().__init__(setup)
        self.net = HatNet(setup).to(self.device)
        self._s = self.cfg.smax  # temperature of the last training forward (for compensation)
        self._factors: list[tuple[Tensor, Tensor]] | None = None  # gradient scales; derived from A

    # ------------------------------------------------------------------ gates
    def gates(self, task: str, s: float) -> Tensor:
        """σ(s · e^task): [blocks, 2, f]."""
        return torch.sigmoid(s * self.net.emb[task])

    def regulariser(self, gates: Tensor) -> Tensor:
        """Σ a(1 − A) / Σ (1 − A): the share of still-free units the task claims (mean gate at T1)."""
        free = 1.0 - self.net.cum
        return (gates * free).sum() / free.sum().clamp_min(torch.finfo(free.dtype).eps)

    def grad_factors(self) -> list[tuple[Tensor, Tensor]]:
        """Per conv i, (kernel scale, out-unit scale [out]) from the cumulative mask; the kernel is
        stored as [k * in, out] (`CausalConv`), so a scale is [1, out] or [k * in, out].

        conv1 of a block reads the ungated residual stream: output unit o scaled by 1 − A(h1)_o only.
        conv2 reads the gated h1: entry (input i, output o) scaled by 1 − min(A(h2)_o, A(h1)_i), the
        same at every shift.
        Biases and the LayerNorm after conv i share its out-unit scale 1 − A(out).
        """
        if self._factors is None:
            a, shifts = self.net.cum, self.setup.backbone.kernel
            out = []
            for k in range(a.shape[0]):
                out.append(((1 - a[k, 0])[None, :], 1 - a[k, 0]))
                out.append(((1 - torch.minimum(a[k, 0][:, None], a[k, 1][None, :])).repeat(shifts, 1), 1 - a[k, 1]))
            self._factors = out
        return self._factors

    # ------------------------------------------------------------------ lifecycle
    def begin_task(self, task: TaskInfo) -> None:
        f, shape = self.setup.backbone.channels, self.net.cum.shape
        self.net.heads[task.name] = make_head(f, task.n_labels).to(self.device)
        e = torch.empty(shape, device=self.device)
        nn.init.uniform_(e, 0.0, 2.0) if self.cfg.emb_init == "uniform" else nn.init.normal_(e, 0.0, 1.0)
        self.net.emb[task.name] = nn.Parameter(e)
        self._factors = None

    def end_task(self, task: TaskInfo) -> None:
        with torch.no_grad():
            self.net.cum.copy_(torch.maximum(self.net.cum, self.gates(task.name, self.cfg.smax)))
        self._factors = None

    def grow_items(self, n_new: int) -> None:
        self.net.backbone.grow_items(n_new)

    def trainable_parameters(self, task: TaskInfo):
        bb = self.net.backbone
        shared = [p for n, p in bb.named_parameters()
                  if not (n.startswith("item_emb") and self.cfg.freeze_item_emb_after_t1 and len(self.tasks) > 1)]
        return [*shared, *self.net.heads[task.name].parameters(), self.net.emb[task.name]]

    def loss(self, task: TaskInfo, batch: Batch) -> Tensor:
        self._s = anneal(batch.index, batch.n_batches, self.cfg.smax)
        g = self.gates(task.name, self._s)
        ce = self.head_loss(task, self._represent(batch.x, g, all_positions=batch.rows is None), batch)
        return ce if self._plain_t1_stage() else ce + self.cfg.lam * self.regulariser(g)

    def _plain_t1_stage(self) -> bool:
        return self.cfg.t1_stage == "teracon" and len(self.tasks) == 1

    def before_step(self, task: TaskInfo) -> None:
        """Protect old tasks' units; compensate the annealing in the embedding gradient."""
        if len(self.tasks) > 1:
            for (wf, bf), conv, ln in zip(self.grad_factors(), self.net.backbone.convs(), self._norms()):
                for p, fac in ((conv.weight, wf), (conv.bias, bf), (ln.weight, bf), (ln.bias, bf)):
                    if p.grad is not None:
                        p.grad.mul_(fac)
        e = self.net.emb[task.name]
        if self.cfg.grad_comp and e.grad is not None and not self._plain_t1_stage():
            s, smax = self._s, self.cfg.smax
            with torch.no_grad():
                e.grad.mul_(smax / s * (torch.cosh(torch.clamp(s * e, -50, 50)) + 1) / (torch.cosh(e) + 1))

    def after_step(self, task: TaskInfo) -> None:
        with torch.no_grad():
            self.net.emb[task.name].clamp_(-self.cfg.clamp, self.cfg.clamp)

    # ------------------------------------------------------------------ forward
    def head(self, task: str) -> nn.Linear:
        return self.net.heads[task]

    def represent(self, task: str, x: Tensor, *, train: bool = False, all_positions: bool = False,
                  batch: Batch | None = None) -> Tensor:
        s = anneal(batch.index, batch.n_batches, self.cfg.smax) if train and batch is not None else self.cfg.smax
        return self._represent(x, self.gates(task, s), all_positions)

    def _represent(self, x: Tensor, gates: Tensor, all_positions: bool) -> Tensor:
        return self.net.backbone.read(x, Hooks(gates=[(g[0], g[1]) for g in gates]), all_positions)

    def _norms(self) -> list[nn.LayerNorm]:
        return [ln for b in self.net.backbone.blocks for ln in (b.ln1, b.ln2)]

    # ------------------------------------------------------------------ state
    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def load_extra_state(self, state: dict) -> None:
        for t in self.tasks:  # recreate per-task heads and embeddings for the checkpoint to fill
            if t.name not in self.net.heads:
                self.net.heads[t.name] = make_head(self.setup.backbone.channels, t.n_labels).to(self.device)
                self.net.emb[t.name] = nn.Parameter(torch.zeros_like(self.net.cum))
        self._factors = None

    def report(self) -> dict:
        """Capacity used: share of units whose cumulative gate is above 0.5 after each task."""
        used, a = {}, torch.zeros_like(self.net.cum)
        with torch.no_grad():
            for t in self.tasks:
                a = torch.maximum(a, self.gates(t.name, self.cfg.smax))
                used[t.name] = float((a > 0.5).float().mean())
            masks = {t.name: self.gates(t.name, self.cfg.smax) for t in self.tasks}
        return {"units_used": used, "mask_similarity": mask_similarity(masks)}
