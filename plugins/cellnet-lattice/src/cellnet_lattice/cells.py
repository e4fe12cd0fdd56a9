"""Cell update rules: ``delta = cell(neigh [..., K, C], own [..., C], inp [..., C] | None)``.

Every cell works on any leading dims (``[B, X, Y, Z]`` in the lattice, ``[M]`` in a fused kernel).
Its last layer is zero-initialised, so ``delta == 0`` and an untrained lattice is the identity.
The raw update is soft-bounded: ``delta = b * tanh(raw / b)`` with ``b = delta_bound``
(``0`` turns the bound off). Near zero this is the identity, so training starts unaffected,
and no single step can move a channel by more than ``b`` — long rollouts cannot explode.

``inp is None`` means "no input injected at this step" and is exactly the same as passing zeros
(the input's columns of the first layer are skipped instead of multiplied by zeros).

Cells are registered components (kind ``cell``): the lattice's ``core.cell: {name: nca, hidden:
64}`` names one, and a plugin adds its own through ``cellnet_register_components`` with
``registry.add("cell", NAME, ConfigCls, factory)``. ``factory(config, ctx)`` gets a
:class:`CellContext` (``ctx.channels`` C, ``ctx.k`` K) and returns an ``nn.Module`` with the call
above, usually a :class:`Cell` subclass. A cell whose update of one cell depends on anything but
that cell's own ``(neigh, own, inp)`` row (statistics over the batch or the lattice, say) sets
``rowwise = False``: the fast kernels, which evaluate cells in blocks and slabs, then run the
``reference`` step for it.

Cells:

``mlp``
    ``x = concat(neigh.flatten(-2) [K*C], own [C], inp [C])`` → ``fc1`` (``K*C+2C → H``) → ReLU →
    ``fc2`` (``H → C``, zero init).
``gmlp``
    gated MLP whose spatial gating unit mixes the K neighbour states: per neighbour
    ``u, v = split(GELU(proj(neigh)))`` (``C → 2H``), ``v' = mix(v)`` along the neighbour axis
    (a learned ``K×K`` matrix, init 0, plus a per-neighbour bias, init 1, as in gMLP), gated
    ``g = mean_K(u * v')``; plus ``own_in(concat(own, inp))`` (``2C → H``); GELU → ``out``
    (``H → C``, zero init).
``nca``
    Growing-NCA style perception: ``F`` learned depthwise filters over ``(own, neigh_1..K)``
    (weights ``[F, K+1, C]``; filter 0 starts as the identity, filter 1 as the neighbour mean,
    the others random), then ``concat(perception [F*C], inp [C])`` → ``fc1`` (``→ H``) → ReLU →
    ``fc2`` (``H → C``, zero init).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F


class Cell(nn.Module):
    """Base class: ``channels`` C, ``k`` K neighbours, ``hidden`` H."""

    name = "cell"
    #: the update of each cell depends only on its own ``(neigh, own, inp)`` row, so a kernel may
    #: evaluate any subset of cells, in any layout, and get the same numbers (checked by
    #: ``CellContract``); False makes the fast kernels run the reference step instead
    rowwise: ClassVar[bool] = True

    def __init__(self, channels: int, k: int, hidden: int, delta_bound: float = 1.0):
        super().__init__()
        self.channels, self.k, self.hidden = int(channels), int(k), int(hidden)
        self.delta_bound = float(delta_bound)

    def num_params(self) -> int:
        """Number of learned scalars."""
        return sum(p.numel() for p in self.parameters())

    def bound(self, raw: torch.Tensor) -> torch.Tensor:
        """Soft bound ``b * tanh(raw / b)``; identity when ``delta_bound == 0``."""
        b = self.delta_bound
        return b * torch.tanh(raw / b) if b > 0 else raw

    def raw_delta(self, neigh: torch.Tensor, own: torch.Tensor, inp: torch.Tensor | None) -> torch.Tensor:
        """The unbounded update ``[..., C]`` from ``neigh [..., K, C]``, ``own [..., C]`` and ``inp
        [..., C] | None``; subclasses implement it."""
        raise NotImplementedError

    def forward(self, neigh: torch.Tensor, own: torch.Tensor, inp: torch.Tensor | None = None) -> torch.Tensor:
        """``neigh [..., K, C]``, ``own [..., C]``, ``inp [..., C] | None`` → ``delta [..., C]``."""
        return self.bound(self.raw_delta(neigh, own, inp))

    def extra_repr(self) -> str:
        """Sizes shown by ``repr(cell)``."""
        return f"C={self.channels}, K={self.k}, H={self.hidden}, delta_bound={self.delta_bound}"


def _linear_without_tail(layer: nn.Linear, x: torch.Tensor, used: int) -> torch.Tensor:
    """``layer`` applied to ``concat(x, zeros)``: only the first ``used`` input columns."""
    return F.linear(x, layer.weight[:, :used], layer.bias)


class MLPCell(Cell):
    """``concat(neigh K*C, own C, inp C) → H → C``."""

    name = "mlp"

    def __init__(self, channels: int, k: int, hidden: int = 64, delta_bound: float = 1.0):
        super().__init__(channels, k, hidden, delta_bound)
        self.fc1 = nn.Linear(k * channels + 2 * channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def raw_delta(self, neigh, own, inp):
        """``fc2(relu(fc1(concat(neigh, own, inp))))``; without ``inp`` its input columns are
        skipped."""
        x = torch.cat([neigh.flatten(-2), own] + ([inp] if inp is not None else []), dim=-1)
        h = self.fc1(x) if inp is not None else _linear_without_tail(self.fc1, x, x.shape[-1])
        return self.fc2(torch.relu(h))


class GatedMLPCell(Cell):
    """gMLP-style cell: neighbour tokens gated by a learned K×K spatial mixing."""

    name = "gmlp"

    def __init__(self, channels: int, k: int, hidden: int = 32, delta_bound: float = 1.0):
        super().__init__(channels, k, hidden, delta_bound)
        self.proj = nn.Linear(channels, 2 * hidden)
        self.mix = nn.Parameter(torch.zeros(k, k))  # spatial gating unit: v'_j = sum_k mix[j,k] v_k + bias_j
        self.mix_bias = nn.Parameter(torch.ones(k))
        self.own_in = nn.Linear(2 * channels, hidden)
        self.out = nn.Linear(hidden, channels)
        nn.init.normal_(self.mix, std=1e-2 / math.sqrt(k))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def raw_delta(self, neigh, own, inp):
        """Project each neighbour, mix the K neighbours' gates spatially, average over K, add the
        own/input projection; ``[..., C]``."""
        u, v = F.gelu(self.proj(neigh)).chunk(2, dim=-1)  # [..., K, H] each
        v = torch.einsum("jk,...kh->...jh", self.mix, v) + self.mix_bias.unsqueeze(-1)
        g = (u * v).mean(dim=-2)  # [..., H]
        if inp is not None:
            o = self.own_in(torch.cat([own, inp], dim=-1))
        else:
            o = _linear_without_tail(self.own_in, own, self.channels)
        return self.out(F.gelu(g + o))


class NCACell(Cell):
    """Learned depthwise perception filters over the neighbourhood, then a small MLP."""

    name = "nca"

    def __init__(self, channels: int, k: int, hidden: int = 64, filters: int = 3, delta_bound: float = 1.0):
        super().__init__(channels, k, hidden, delta_bound)
        self.filters = int(filters)
        w = torch.randn(filters, k + 1, channels) / math.sqrt(k + 1)
        w[0] = 0.0
        w[0, 0] = 1.0  # identity
        if filters > 1:
            w[1] = 0.0
            w[1, 1:] = 1.0 / k  # neighbour mean
        self.perception = nn.Parameter(w)  # [F, K+1, C]; index 0 = own cell
        self.fc1 = nn.Linear(filters * channels + channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def perceive(self, neigh: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        """``[..., K, C]``, ``[..., C]`` → ``[..., F*C]`` (depthwise: each channel on its own)."""
        w = self.perception
        p = own.unsqueeze(-2) * w[:, 0] + torch.einsum("...kc,fkc->...fc", neigh, w[:, 1:])
        return p.flatten(-2)

    def raw_delta(self, neigh, own, inp):
        """Depthwise perception of the neighbourhood, then ``fc2(relu(fc1(concat(perception,
        inp))))``."""
        p = self.perceive(neigh, own)
        if inp is not None:
            h = self.fc1(torch.cat([p, inp], dim=-1))
        else:
            h = _linear_without_tail(self.fc1, p, p.shape[-1])
        return self.fc2(torch.relu(h))

    def extra_repr(self) -> str:
        """Sizes shown by ``repr(cell)``, with the number of perception filters."""
        return super().extra_repr() + f", filters={self.filters}"


#: the lattice plugin's own cells (registered as ``cell`` components by its plugin module)
CELLS: dict[str, type[Cell]] = {"mlp": MLPCell, "gmlp": GatedMLPCell, "nca": NCACell}


@dataclass
class CellContext:
    """What a cell factory gets besides its config: the lattice's ``channels`` C and ``k`` K
    neighbours per cell (both fixed by the reshaper and the neighbourhood), plus the registry,
    device and seed of the build."""

    channels: int
    k: int
    registry: Any = None
    device: Any = None
    seed: int = 0


def build_mlp(cfg, ctx: CellContext) -> MLPCell:
    """Factory of the ``mlp`` cell."""
    return MLPCell(ctx.channels, ctx.k, cfg.hidden, delta_bound=cfg.delta_bound)


def build_gmlp(cfg, ctx: CellContext) -> GatedMLPCell:
    """Factory of the ``gmlp`` cell."""
    return GatedMLPCell(ctx.channels, ctx.k, cfg.hidden, delta_bound=cfg.delta_bound)


def build_nca(cfg, ctx: CellContext) -> NCACell:
    """Factory of the ``nca`` cell."""
    return NCACell(ctx.channels, ctx.k, cfg.hidden, filters=cfg.filters, delta_bound=cfg.delta_bound)


_BUILTIN = {"mlp": build_mlp, "gmlp": build_gmlp, "nca": build_nca}


def build_cell(cfg, channels: int, k: int, registry: Any = None, *, device: Any = None, seed: int = 0) -> nn.Module:
    """Build the cell ``cfg`` names through the registry (any registered cell, third-party ones
    included); without a registry only the built-in ``mlp``, ``gmlp`` and ``nca`` exist."""
    ctx = CellContext(int(channels), int(k), registry, device, seed)
    if registry is not None:
        cell = registry.build("cell", cfg, ctx)
    else:
        cell = _BUILTIN[cfg.name](cfg, ctx)
    if not isinstance(cell, nn.Module):
        plugin = registry.get("cell", cfg.name).plugin if registry is not None else "cellnet-lattice"
        raise TypeError(f"cell '{cfg.name}' (plugin '{plugin}') built a {type(cell).__name__}, not a "
                        "torch.nn.Module: a cell factory returns a module called as cell(neigh, own, inp)")
    return cell
