"""Conversation context on the lattice: the last k turns on k z-planes, the next turn read from one.

``context-planes`` takes the turns' teacher embeddings concatenated, oldest first::

    x [B, k·D] = [e_1 | e_2 | … | e_k]        e_k: the latest turn (the question being answered)

and writes turn ``i`` onto z-plane ``planes[i]`` (default ``z = i``: turn 1 on ``z = 0`` … the latest
turn on ``z = k − 1``), every cell of the plane, through its own adapter ``A_i`` (``D → X·Y·C``).
The rest of the lattice starts at zero. ``from_state`` reads the plane of slot ``read`` (default: the
latest turn's) through the output adapter ``R`` (``X·Y·C → D``).

Initialisation makes an untrained lattice the "identity of the last turn" baseline: each ``A_i`` has
orthonormal columns (seeded per slot) and ``R = A_readᵀ``, so with the lattice's zero-initialised
cell ``from_state(core(to_field(x))) = A_readᵀ A_read e_read = e_read``. The other turns reach the
read plane only through the lattice's steps (one plane per step), so whatever the model learns from
the earlier turns, the lattice has to carry.

``adapter: exact`` has no adapter parameters: turn i's D dims fill its plane's ``X·Y·C`` slots in
order (``X·Y·C`` must equal D) and the read-out is the read plane itself; then every parameter
learned is the lattice's.

Short conversations: a turn that does not exist is a zero embedding; with bias-free adapters its
plane stays empty. ``to_field`` also accepts a single embedding ``[B, D]`` — the latest turn with no
history — so single-turn pairs (``cellnet eval``, ``mix: {dialogue: w}``) run through the same lattice.

Parameters: :meth:`ContextPlanesReshaper.param_split` counts the adapters' (``k·D·X·Y·C`` in,
``D·X·Y·C`` out for learned adapters; 0 for exact); the lattice's are the core's.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Sequence

import torch
from torch import nn

from cellnet_core.errors import ConfigError

log = logging.getLogger("cellnet_lattice")


def _orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    """``[rows, cols]`` with orthonormal columns (``rows ≥ cols``), seeded."""
    g = torch.Generator().manual_seed(int(seed))
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=g))
    return q


def default_planes(slots: int) -> list[int]:
    """Turn ``i`` (oldest first) on z-plane ``i``."""
    return list(range(int(slots)))


class ContextPlanesReshaper(nn.Module):
    """The last ``slots`` turns, one per z-plane; the next turn read from the plane of slot ``read``.

    Args:
        dim: D, the size of one turn's embedding.
        shape: lattice ``(X, Y, Z)``; every slot fills a whole ``X × Y`` plane.
        channels: C per cell.
        slots: k, turns per input (``to_field`` takes ``[B, k·D]``, oldest first).
        planes: z index of each slot (default ``0 … k−1``); distinct, inside ``0 … Z−1``.
        read: the slot whose plane is read (default ``k − 1``, the latest turn).
        adapter: ``learned`` (``Linear(D → X·Y·C)`` per slot, orthonormal init, output adapter the
            transpose of the read slot's) or ``exact`` (no parameters, ``X·Y·C == D``).
    """

    def __init__(self, dim: int, shape: Sequence[int], channels: int, slots: int = 3,
                 planes: Sequence[int] | None = None, read: int | None = None, adapter: str = "learned",
                 seed: int = 0):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.channels, self.dim, self.out_dim = int(channels), int(dim), int(dim)
        self.context_slots = int(slots)  #: turns per input; the pipeline packs [B, slots·D] by it
        k = self.context_slots
        self.planes = list(planes) if planes is not None else default_planes(k)
        self.read = k - 1 if read is None else int(read)
        check_planes(self.shape, k, self.planes, self.read, where="reshaper")
        self.adapter = adapter
        self.width = self.shape[0] * self.shape[1] * self.channels
        if adapter == "exact":
            if self.width != self.dim:
                raise ConfigError(f"reshaper.adapter: 'exact' needs X·Y·C = D; got {self.shape[0]}·{self.shape[1]}·"
                                  f"{self.channels} = {self.width} for D = {self.dim}")
            self.adapters_in = None
            self.adapter_out = None
        elif adapter == "learned":
            if self.width < self.dim:
                raise ConfigError(f"reshaper: a plane holds {self.width} values (X·Y·C), fewer than the "
                                  f"embedding's {self.dim}; enlarge the plane or the channels")
            self.adapters_in = nn.ModuleList(nn.Linear(self.dim, self.width, bias=False) for _ in range(k))
            self.adapter_out = nn.Linear(self.width, self.dim, bias=False)
            with torch.no_grad():
                for i, a in enumerate(self.adapters_in):
                    a.weight.copy_(_orthonormal(self.width, self.dim, seed + i))
                self.adapter_out.weight.copy_(self.adapters_in[self.read].weight.T)
        else:
            raise ConfigError(f"reshaper.adapter: unknown '{adapter}'; available: learned, exact")

    # -- layout -----------------------------------------------------------------------------
    def split_turns(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[B, k·D]`` (or ``[B, D]``: the latest turn alone) → k tensors ``[B, D]``, oldest first."""
        k, D = self.context_slots, self.dim
        if x.dim() != 2 or x.shape[1] not in (D, k * D):
            raise ValueError(f"reshaper 'context-planes' takes [B, {k}·{D}] (the last {k} turns, oldest first) "
                             f"or [B, {D}] (one turn); got {list(x.shape)}")
        if x.shape[1] == D:
            zero = x.new_zeros(x.shape)
            return [zero] * (k - 1) + [x]
        return list(x.split(D, dim=1))

    def to_field(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, k·D]`` → ``[B, X, Y, Z, C]``: turn i on plane ``planes[i]``, zero elsewhere."""
        B = x.shape[0]
        X, Y, Z = self.shape
        field = x.new_zeros(B, X, Y, Z, self.channels)
        for i, e in enumerate(self.split_turns(x)):
            vals = e if self.adapters_in is None else self.adapters_in[i](e)
            field[:, :, :, self.planes[i], :] = vals.reshape(B, X, Y, self.channels)
        return field

    def from_state(self, state: torch.Tensor) -> torch.Tensor:
        """``[B, X, Y, Z, C]`` → ``[B, D]`` from the read slot's plane."""
        plane = state[:, :, :, self.planes[self.read], :].reshape(state.shape[0], -1)
        return plane if self.adapter_out is None else self.adapter_out(plane)

    def param_split(self) -> dict[str, int]:
        """Trainable parameters of the adapters (in: one per slot; out); the lattice's are the core's."""
        ins = sum(p.numel() for p in self.adapters_in.parameters()) if self.adapters_in is not None else 0
        out = sum(p.numel() for p in self.adapter_out.parameters()) if self.adapter_out is not None else 0
        return {"adapters_in": ins, "adapter_out": out, "adapters": ins + out}

    def extra_repr(self) -> str:
        """Shape, slots, planes and the read plane, shown by ``repr(reshaper)``."""
        return (f"shape={list(self.shape)}, C={self.channels}, slots={self.context_slots}, "
                f"planes z={self.planes}, read slot {self.read} (z={self.planes[self.read]}), adapter={self.adapter}")


def check_planes(shape: Sequence[int], slots: int, planes: Sequence[int], read: int, where: str = "reshaper") -> None:
    """:class:`ConfigError` unless ``planes`` gives each of the ``slots`` turns its own z-plane
    inside the lattice's depth and ``read`` names a slot."""
    Z = int(shape[2])
    if len(planes) != slots:
        raise ConfigError(f"{where}.planes: {len(planes)} planes for {slots} slots; give one z index per slot")
    if slots > Z:
        raise ConfigError(f"{where}.shape: the lattice depth Z = {Z} holds fewer z-planes than the {slots} slots; "
                          f"give Z ≥ {slots}")
    bad = [p for p in planes if not 0 <= int(p) < Z]
    if bad:
        raise ConfigError(f"{where}.planes: {bad} outside the lattice's z-planes 0..{Z - 1}")
    if len(set(planes)) != len(planes):
        raise ConfigError(f"{where}.planes: {list(planes)} puts two slots on one plane; give distinct planes")
    if not 0 <= read < slots:
        raise ConfigError(f"{where}.read: slot {read} does not exist (slots 0..{slots - 1}; "
                          f"{slots - 1} is the latest turn)")


def steps_to_read(shape: Sequence[int], planes: Sequence[int], read: int, boundary: str = "walls") -> int:
    """Lattice steps until the farthest slot's plane can influence the read plane (one plane per
    step along z; with ``periodic`` boundaries the distance wraps around)."""
    Z = int(shape[2])
    target = planes[read]
    dists = []
    for p in planes:
        d = abs(int(p) - int(target))
        dists.append(min(d, Z - d) if boundary == "periodic" else d)
    return max(dists, default=0)


def build_context_planes(cfg: Any, ctx: Any) -> ContextPlanesReshaper:
    """Factory of the ``context-planes`` reshaper; warns when the lattice has too few steps for the
    oldest turn to reach the read plane."""
    r = ContextPlanesReshaper(ctx.embedding_dim, cfg.shape, cfg.channels, cfg.slots, cfg.planes, cfg.read,
                              cfg.adapter, seed=getattr(ctx, "seed", 0) or 0)
    core = getattr(getattr(ctx, "config", None), "core", None)
    steps = getattr(core, "steps", None)
    if steps is not None and getattr(core, "name", "") == "lattice":
        need = steps_to_read(r.shape, r.planes, r.read, getattr(core, "boundary", "walls"))
        if steps < need:
            msg = (f"core.steps: {steps} is below {need}, the steps the oldest turn's plane needs to reach the read "
                   f"plane z={r.planes[r.read]}; the earlier turns cannot change the answer")
            warnings.warn(msg, stacklevel=2)
            log.warning(msg)
    return r
