"""NextItNet-style causal dilated CNN (docs/protocol.md §3) with extension points for every method.

Block k (dilation d), post-LN:   h1 = ReLU(LN1(conv_d(E)));  h2 = ReLU(LN2(conv_2d(h1)));  E' = E + h2

Extension points, all passed per call through `Hooks` so one backbone serves every method:
- `gates[k] = (g1, g2)`: multiply h1 / h2 after the ReLU (HAT, TERACON task masks); [f] or [B, f].
- `conv_weight(i, W)`: effective kernel of conv i (0..2*blocks-1) (Piggyback, CONURE masks); W is
  stored in the matmul's layout [k * in, out] (`CausalConv`).
- `conv_bias(i, b)`: effective bias of conv i (CONURE keeps biases at zero).
- `patch(i, z, x)`: post-conv transform of conv i's output z given its input x (PeterRec patches).
- `norms[k] = (ln1, ln2)`: replacement LayerNorm modules for block k (PeterRec's per-task LN2).
- `embed(x, W)`: input embeddings [B, n, f] of ids x given the item-embedding matrix W
  (Piggyback's optional embedding masks; a callable so a mask can be gathered per row).

Item-embedding init (`BackboneConfig.item_init`): `random` (uniform, below) or `text`, where the
config carries `ItemRows` computed from item texts (curb/text.py) and every NextItNet built from
that config writes them over its random table: no method builds its model differently.

The causal convolution is computed as ONE matmul over the three dilated time shifts
([B, n, 3f] @ [3f, f]): no loops over positions, no transposes around the LayerNorms.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class BackboneConfig:
    channels: int = 256
    kernel: int = 3
    dilations: tuple[int, ...] = (1, 4, 1, 4, 1, 4, 1, 4)
    ln_eps: float = 1e-8
    item_init: Literal["random", "text"] = "random"  # text: item rows from title embeddings (curb/text.py)
    text_proj: Literal["pca", "random"] = "pca"  # text -> width f: PCA, or a fixed Gaussian projection
    # What a later task's head reads: the last position (the paper's), or the mean of the hidden
    # states over the positions that hold an item (a diagnostic, docs/protocol.md §4.8.3).
    readout: Literal["last", "mean"] = "last"

    def __post_init__(self) -> None:
        if self.channels < 1 or self.kernel < 1 or not self.dilations or min(self.dilations) < 1 or not self.ln_eps > 0:
            raise ValueError(f"invalid backbone config {self}: channels, kernel, dilations and ln_eps must be positive")
        if self.item_init not in ("random", "text") or self.text_proj not in ("pca", "random"):
            raise ValueError(f"invalid backbone config {self}: item_init must be random|text, text_proj pca|random")
        if self.readout not in ("last", "mean"):
            raise ValueError(f"invalid backbone config {self}: readout must be last|mean")

    def with_item_rows(self, rows: "ItemRows") -> "BackboneConfig":
        """A copy carrying the text-derived item rows. They are data, not a config value: kept out of
        the dataclass fields (so `asdict`, equality and the result's config are unchanged) and
        recorded by the runner in the result's `item_init`."""
        cfg = dataclasses.replace(self)
        object.__setattr__(cfg, "_item_rows", rows)
        return cfg

    @property
    def item_rows(self) -> "ItemRows | None":
        return self.__dict__.get("_item_rows")

    def model_key(self) -> dict:
        """What a model built from this config depends on (the pre-trained T1 cache key). The
        text-init knobs appear only when they matter, so random-init keys match those written
        before the knobs existed; the read-out never does (T1 reads every position)."""
        key = dataclasses.asdict(self)
        del key["readout"]
        if self.item_init == "random":
            del key["item_init"], key["text_proj"]
        else:
            key["item_rows"] = self.item_rows.digest if self.item_rows is not None else None
        return key

    @property
    def n_convs(self) -> int:
        return 2 * len(self.dilations)

    def receptive_field(self) -> int:
        return 1 + (self.kernel - 1) * sum(d + 2 * d for d in self.dilations)


@dataclass
class Hooks:
    gates: Sequence[tuple[Tensor | None, Tensor | None]] | None = None
    conv_weight: Callable[[int, Tensor], Tensor] | None = None
    conv_bias: Callable[[int, Tensor], Tensor] | None = None
    patch: Callable[[int, Tensor, Tensor], Tensor] | None = None
    norms: Sequence[tuple[nn.Module | None, nn.Module | None]] | None = None
    embed: Callable[[Tensor, Tensor], Tensor] | None = None


NO_HOOKS = Hooks()


def item_init_bound(n_items: int) -> float:
    """The random item-embedding init is U(-b, b), b = 1/sqrt(n_items) (per-entry std b/sqrt(3))."""
    return 1 / math.sqrt(n_items)


@dataclass(frozen=True, eq=False)
class ItemRows:
    """Initial values for the first `values.shape[1]` columns of the item rows `items`; every
    other entry keeps the random init (items without text, columns beyond the text's rank)."""

    items: Tensor  # [m] int64 item ids (never the padding id 0)
    values: Tensor  # [m, k] float32, k <= channels
    n_items: int

    @property
    def digest(self) -> str:
        h = hashlib.sha256(self.items.numpy().tobytes())
        h.update(self.values.numpy().tobytes())
        return h.hexdigest()[:16]

    def write(self, weight: Tensor, start: int = 0) -> None:
        """Write the rows of ids in [start, rows of `weight`): a time-aware stream's table holds the
        first periods' items only, and rows of items that enter later are written when they do."""
        n, f = weight.shape
        if n > self.n_items or self.values.shape[1] > f:
            raise ValueError(f"item rows for {self.n_items} items x {self.values.shape[1]} columns do not fit an "
                             f"item table of {n} x {f}")
        keep = (self.items >= start) & (self.items < n)
        with torch.no_grad():
            weight[self.items[keep], : self.values.shape[1]] = self.values[keep].to(weight.dtype)


class CausalConv(nn.Module):
    """1-D causal dilated convolution. The kernel is stored in the matmul's layout [k * in, out]
    (row j * in + c: input channel c at shift j), not nn.Conv1d's [out, in, k]: relaying the
    kernel out on every forward (and its gradient back on every backward) cost more than the
    matmul itself on small batches. Every hook sees this layout; `conv1d_layout` converts."""

    def __init__(self, channels: int, kernel: int, dilation: int):
        super().__init__()
        self.kernel, self.dilation = kernel, dilation
        # nn.Conv1d's default init drawn in its layout, so results match a Conv1d-based
        # implementation in law (and the draws of the RNG stream are those of such a layer).
        w = torch.empty(channels, channels, kernel)
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        self.weight = nn.Parameter(w.permute(2, 1, 0).reshape(kernel * channels, channels).contiguous())
        self.bias = nn.Parameter(torch.empty(channels))
        bound = 1 / math.sqrt(channels * kernel)
        nn.init.uniform_(self.bias, -bound, bound)

    def conv1d_layout(self, weight: Tensor) -> Tensor:
        """A kernel in this layout [k * in, out] as nn.Conv1d's [out, in, k] (a view)."""
        return weight.view(self.kernel, -1, weight.shape[1]).permute(2, 1, 0)

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """x: [B, n, f] -> [B, n, f]; output t sees inputs t, t-d, ..., t-(k-1)d only."""
        n = x.shape[1]
        xp = F.pad(x, (0, 0, (self.kernel - 1) * self.dilation, 0))
        shifted = torch.cat([xp[:, j * self.dilation : j * self.dilation + n] for j in range(self.kernel)], dim=-1)
        return torch.addmm(bias, shifted.reshape(-1, shifted.shape[-1]), weight).view(x.shape[0], n, -1)

    def at(self, x: Tensor, index: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
        """The outputs at chosen positions only: x [B, m, f] holds some positions of the input,
        `index` [k, q] says where output q's k shifted inputs are in x (1 + row, 0 for the causal
        padding), in `forward`'s shift order. Returns (outputs [B, q, f], x at the outputs' own
        positions [B, q, f]): the same arithmetic as `forward` on fewer rows."""
        b, q = x.shape[0], index.shape[1]
        xs = F.pad(x, (0, 0, 1, 0))  # row 0: the zero padding
        shifted = xs[:, index.reshape(-1)].view(b, self.kernel, q, -1).transpose(1, 2).reshape(b, q, -1)
        z = torch.addmm(bias, shifted.reshape(-1, shifted.shape[-1]), weight).view(b, q, -1)
        return z, xs[:, index[-1]]


class ResidualBlock(nn.Module):
    def __init__(self, cfg: BackboneConfig, dilation: int):
        super().__init__()
        f = cfg.channels
        self.conv1 = CausalConv(f, cfg.kernel, dilation)
        self.ln1 = nn.LayerNorm(f, eps=cfg.ln_eps)
        self.conv2 = CausalConv(f, cfg.kernel, 2 * dilation)
        self.ln2 = nn.LayerNorm(f, eps=cfg.ln_eps)


class NextItNet(nn.Module):
    """Item embedding + residual blocks; `forward` returns hidden states [B, n, f]."""

    def __init__(self, n_items: int, cfg: BackboneConfig = BackboneConfig()):
        super().__init__()
        self.cfg = cfg
        self.n_items = n_items
        self.item_emb = nn.Embedding(n_items, cfg.channels)
        bound = item_init_bound(n_items)
        nn.init.uniform_(self.item_emb.weight, -bound, bound)
        if cfg.item_init == "text":  # after the random draw, so the RNG stream (other weights) is the same
            if cfg.item_rows is None:
                raise ValueError("backbone.item_init=text, but the config carries no item rows: the runner adds "
                                 "them (curb.text.prepare) from the dataset's item texts")
            cfg.item_rows.write(self.item_emb.weight)
        self.blocks = nn.ModuleList(ResidualBlock(cfg, d) for d in cfg.dilations)

    def grow_items(self, n_new: int) -> None:
        """Append `n_new` item rows (the next ids), drawn like a fresh table of the new size (U(-b, b),
        b = 1/sqrt(new vocabulary); text rows where the config carries them). Existing rows are
        copied bit for bit; the row parameter is a new tensor, so an optimiser must be created after
        growth (the shared fit loop creates one per phase). `requires_grad` is kept."""
        old = self.item_emb.weight
        n = self.n_items + n_new
        new = torch.empty(n, old.shape[1], dtype=old.dtype, device=old.device)
        bound = item_init_bound(n)
        with torch.no_grad():
            new[self.n_items:].uniform_(-bound, bound)
            if self.cfg.item_init == "text":
                self.cfg.item_rows.write(new, start=self.n_items)
            new[: self.n_items] = old
        self.item_emb = nn.Embedding(n, old.shape[1], _weight=new).requires_grad_(old.requires_grad)
        self.n_items = n

    def convs(self) -> list[CausalConv]:
        """The convolutions in forward order (index i used by the hooks)."""
        return [c for b in self.blocks for c in (b.conv1, b.conv2)]

    def forward(self, x: Tensor, hooks: Hooks = NO_HOOKS, out: int | None = None) -> Tensor:
        """Hidden states [B, n, f]; with `out`, only the last `out` positions [B, out, f], and only
        the positions they depend on are computed (a later task reads one position: the top
        convolutions then compute a handful of positions instead of n, `Cone`)."""
        return self.segments(x, ((x.shape[0], out),), hooks)[0]

    def segments(self, x: Tensor, parts: Sequence[tuple[int, int | None]], hooks: Hooks = NO_HOOKS) -> list[Tensor]:
        """`forward` for consecutive row groups of x that read different positions: group g holds
        parts[g] = (rows, out) and gets [rows, out, f] (out None: every position), computed through
        its own `Cone` (TERACON: the batch reads one position, the retained rows of a past next-item
        task two). The groups share one tensor, and one matmul per convolution, through the blocks
        where every group needs every position; above, each group computes only its own positions.
        Per-row gates [B, f] are split by group."""
        n = x.shape[1]
        rows = [r for r, _ in parts]
        if sum(rows) != x.shape[0]:
            raise ValueError(f"row groups {rows} do not add up to the {x.shape[0]} rows of x")
        cones = [None if out is None or out >= n else Cone.of(n, out, self.cfg, x.device) for _, out in parts]
        h = self.item_emb(x) if hooks.embed is None else hooks.embed(x, self.item_emb.weight)
        hs, groups = [h], [(0, x.shape[0])]  # one tensor for all groups while no group has a cone yet
        for k, block in enumerate(self.blocks):
            steps = [None if c is None else c.blocks[k] for c in cones]
            if len(hs) == 1 and len(parts) > 1 and any(st is not None for st in steps):
                groups = [(sum(rows[:g]), r) for g, r in enumerate(rows)]
                hs = list(hs[0].split(rows))
            if len(hs) == 1:
                steps = steps[:1]  # one group, or groups that all still compute every position
            out = []
            for hg, st, (start, count) in zip(hs, steps, groups):
                inp = hg
                for r, (conv, ln) in enumerate(((block.conv1, block.ln1), (block.conv2, block.ln2))):
                    i = 2 * k + r
                    w = conv.weight if hooks.conv_weight is None else hooks.conv_weight(i, conv.weight)
                    b = conv.bias if hooks.conv_bias is None else hooks.conv_bias(i, conv.bias)
                    if st is None:
                        z, x_at = conv(inp, w, b), inp
                    else:
                        z, x_at = conv.at(inp, st.convs[r], w, b)
                    if hooks.patch is not None:
                        z = hooks.patch(i, z, x_at)
                    if hooks.norms is not None and hooks.norms[k][r] is not None:
                        ln = hooks.norms[k][r]
                    inp = F.relu(ln(z))
                    if hooks.gates is not None and (g := hooks.gates[k][r]) is not None:
                        if g.dim() == 2:
                            g = (g if count == g.shape[0] else g[start:start + count]).unsqueeze(1)
                        inp = inp * g
                out.append((hg if st is None else hg[:, st.residual]) + inp)
            hs = out
        return hs if len(hs) == len(parts) else list(hs[0].split(rows))

    def read(self, x: Tensor, hooks: Hooks = NO_HOOKS, all_positions: bool = False) -> Tensor:
        """What a head reads: every position [B, n, f], or one vector per user [B, f]: the last
        position, or with `readout="mean"` the mean over the positions holding an item.

        In training mode the last position is computed through its `Cone` (fewer rows, the same
        values to float round-off). In eval mode every position is computed: a user's scores then
        do not depend on which users share its evaluation chunk (the cone's smaller matmuls would
        round differently with the chunk's size)."""
        if all_positions:
            return self(x, hooks)
        if self.cfg.readout == "mean":
            real = (x != 0).unsqueeze(-1)  # id 0 is the padding
            h = self(x, hooks)
            return (h * real).sum(1) / real.sum(1).clamp(min=1).to(h.dtype)
        return self(x, hooks, out=1 if self.training else None)[:, -1]


@dataclass(frozen=True)
class ConeBlock:
    """Index tensors of one block computed at a subset of positions: per conv, where each output's
    shifted inputs are among the positions held (1 + row; 0 = causal padding), and where the
    block's output positions are among its input positions (the residual)."""

    convs: tuple[Tensor, Tensor]
    residual: Tensor


@dataclass(frozen=True)
class Cone:
    """Which positions each block must compute so that the last `out` outputs are exact: output
    t of a conv with dilation d reads t, t-d, t-2d, so walking back from the last positions the
    needed set grows by the dilations until it covers the sequence; blocks below that point run
    whole (`blocks[k]` None). A last-position read-out with the `paper` preset's dilations skips
    about a fifth of the convolution rows, with the `small` preset's about two fifths."""

    blocks: tuple[ConeBlock | None, ...]

    _cache: ClassVar[dict] = {}  # (n, out, kernel, dilations, device) -> Cone: built once per shape

    @staticmethod
    def of(n: int, out: int, cfg: "BackboneConfig", device: torch.device) -> "Cone":
        key = (n, out, cfg.kernel, tuple(cfg.dilations), str(device))
        if key not in Cone._cache:
            Cone._cache[key] = Cone._build(n, out, cfg.kernel, tuple(cfg.dilations), device)
        return Cone._cache[key]

    @staticmethod
    def _build(n: int, out: int, kernel: int, dilations: tuple[int, ...], device: torch.device) -> "Cone":
        def reads(positions: list[int], d: int) -> list[int]:
            return sorted({p - j * d for p in positions for j in range(kernel) if p - j * d >= 0})

        def index(outputs: list[int], held: list[int], d: int) -> Tensor:
            row = {p: i + 1 for i, p in enumerate(held)}  # 0: the padding row
            return torch.tensor([[row.get(t - (kernel - 1 - j) * d, 0) for t in outputs] for j in range(kernel)],
                                dtype=torch.long, device=device)

        blocks: list[ConeBlock | None] = []
        need = list(range(n - out, n))  # positions of the block's output that are read
        for d in reversed(dilations):  # block k: conv1 with dilation d, conv2 with 2d
            mid = reads(need, 2 * d)
            held = reads(mid, d)
            if len(held) == n and len(mid) == n and len(need) == n:
                blocks += [None] * (len(dilations) - len(blocks))
                break
            row = {p: i for i, p in enumerate(held)}
            blocks.append(ConeBlock((index(mid, held, d), index(need, mid, 2 * d)),
                                    torch.tensor([row[p] for p in need], dtype=torch.long, device=device)))
            need = held
        blocks += [None] * (len(dilations) - len(blocks))
        return Cone(tuple(reversed(blocks)))


class OwnedItemRows:
    """Time-aware streams, for methods whose backbone is frozen after T1 (PeterRec, Piggyback,
    CONURE): the item rows a task brings belong to that task. They are trained while it is
    learned (the gradient of every older row is zeroed, so Adam leaves those rows bit-identical)
    and frozen afterwards, so no task ever changes what an older task reads."""

    def __init__(self) -> None:
        self.start: int | None = None  # first row the task being learned owns; None: it owns none

    def grow(self, net: NextItNet, n_new: int) -> None:
        """Append `n_new` rows to `net`'s table; the next task owns them."""
        if self.start is None:
            self.start = net.n_items
        net.grow_items(n_new)

    @property
    def owned(self) -> bool:
        return self.start is not None

    def mask_grad(self, net: NextItNet) -> None:
        """After backward: only the owned rows keep a gradient."""
        g = net.item_emb.weight.grad
        if self.start is not None and g is not None:
            g[: self.start] = 0

    def release(self) -> None:
        """At the end of the task: its rows are frozen from now on."""
        self.start = None


def make_head(channels: int, n_labels: int) -> nn.Linear:
    """Task head G: Linear(f, |Y|), weight N(0, 0.01^2), bias 0.1 (docs/protocol.md §3.3)."""
    head = nn.Linear(channels, n_labels)
    nn.init.normal_(head.weight, 0.0, 0.01)
    nn.init.constant_(head.bias, 0.1)
    return head


@dataclass(frozen=True)
class Preset:
    name: str
    backbone: BackboneConfig
    note: str = ""


PRESETS: dict[str, Preset] = {
    "paper": Preset("paper", BackboneConfig(), "256 channels, 8 blocks (docs/protocol.md §3.4)"),
    "small": Preset(
        "small",
        BackboneConfig(channels=64, dilations=(1, 4, 1, 4)),
        "64 channels, 4 blocks: CPU-friendly; receptive field 61",
    ),
}


class PlainModel(nn.Module):
    """A backbone with one head per task: the plain NextItNet user model of SinMo and FineAll,
    and the pre-trained T1 model other methods start from."""

    def __init__(self, n_items: int, cfg: BackboneConfig = BackboneConfig()):
        super().__init__()
        self.backbone = NextItNet(n_items, cfg)
        self.heads = nn.ModuleDict()

    def add_head(self, task: str, n_labels: int) -> nn.Linear:
        self.heads[task] = make_head(self.backbone.cfg.channels, n_labels).to(self.backbone.item_emb.weight.device)
        return self.heads[task]

    def logits(self, task: str, x: Tensor, hooks: Hooks = NO_HOOKS, all_positions: bool = False) -> Tensor:
        return self.heads[task](self.backbone.read(x, hooks, all_positions))
