"""Lattice topology: which cells are neighbours, and what lies beyond the lattice's faces.

A lattice has shape ``(X, Y, Z)`` and ``N = X*Y*Z`` cells, flattened in C order
(``flat = x*Y*Z + y*Z + z``). Every cell has the same ``K`` neighbour *offsets*
``(dx, dy, dz)``; :attr:`Topology.index` maps each (cell, offset) to the flat index of the
neighbour, with the boundary rule deciding what happens past a face (per axis, one-cell halo):

``periodic``
    wrap modulo the size (a torus).
``walls``
    outside is zero: the neighbour index is ``N``, a zero "ghost" row that :meth:`gather`
    appends to the flat state.
``reflecting``
    mirror without repeating the edge, like ``torch`` ``'reflect'`` padding: coordinate
    ``-1 → 1`` and ``size → size-2``. Needs ``size ≥ 2``; on a size-1 axis there is nothing to
    mirror and the axis behaves as ``absorbing``.
``absorbing``
    outside copies its inner neighbour, like ``'replicate'`` padding: ``-1 → 0`` and
    ``size → size-1``.

Offsets are the non-zero vectors of ``{-1, 0, 1}³`` whose L1 norm is 1 (``von-neumann``,
K=6), at most 2 (``18``, K=18) or at most 3 (``moore``, K=26), sorted lexicographically.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import torch

NEIGHBOURHOODS: dict[str, int] = {"von-neumann": 1, "18": 2, "moore": 3}
BOUNDARIES: tuple[str, ...] = ("periodic", "walls", "reflecting", "absorbing")


def neighbour_offsets(neighbourhood: str) -> torch.Tensor:
    """``LongTensor[K, 3]`` of ``(dx, dy, dz)``, sorted lexicographically."""
    if neighbourhood not in NEIGHBOURHOODS:
        raise ValueError(f"unknown neighbourhood '{neighbourhood}'; available: {', '.join(NEIGHBOURHOODS)}")
    radius = NEIGHBOURHOODS[neighbourhood]
    offs = [d for d in itertools.product((-1, 0, 1), repeat=3) if 0 < sum(abs(v) for v in d) <= radius]
    return torch.tensor(sorted(offs), dtype=torch.long)


def _axis_map(coord: torch.Tensor, size: int, boundary: str) -> torch.Tensor:
    """Map coordinates in ``[-1, size]`` onto ``[0, size)``; ``-1`` marks "outside" (walls)."""
    inside = (coord >= 0) & (coord < size)
    if boundary == "periodic":
        return coord % size
    if boundary == "walls":
        return torch.where(inside, coord, torch.full_like(coord, -1))
    if boundary == "reflecting" and size >= 2:
        return torch.where(coord < 0, -coord, torch.where(coord >= size, 2 * (size - 1) - coord, coord))
    # absorbing (and reflecting on a size-1 axis): replicate the edge cell
    return coord.clamp(0, size - 1)


class Topology:
    """Neighbour structure of an ``(X, Y, Z)`` lattice.

    Attributes:
        shape: ``(X, Y, Z)``.
        neighbourhood, boundary: the names it was built from.
        offsets: ``LongTensor[K, 3]``, fixed lexicographic order.
        index: ``LongTensor[N, K]`` flat neighbour index; ``N`` (the ghost row) for a ``walls``
            neighbour outside the lattice.
        edge_weight: ``None`` or a tensor ``[K]`` (shared) or ``[N, K]`` (per cell): the learned
            connection weights, set by the lattice core before each forward. :meth:`gather`
            multiplies each neighbour's state by its weight.

    A plain object (not an ``nn.Module``): it owns no parameters. :meth:`to` moves its index
    tensors; the lattice core calls it when the state's device changes.
    """

    def __init__(self, shape: Sequence[int], neighbourhood: str = "von-neumann", boundary: str = "periodic"):
        if len(shape) != 3 or any(int(s) < 1 for s in shape):
            raise ValueError(f"shape must be three positive sizes, got {list(shape)}")
        if boundary not in BOUNDARIES:
            raise ValueError(f"unknown boundary '{boundary}'; available: {', '.join(BOUNDARIES)}")
        self.shape: tuple[int, int, int] = tuple(int(s) for s in shape)  # type: ignore[assignment]
        self.neighbourhood = neighbourhood
        self.boundary = boundary
        self.offsets = neighbour_offsets(neighbourhood)
        self.edge_weight: torch.Tensor | None = None
        self._index: torch.Tensor | None = None
        self._device = torch.device("cpu")

    @property
    def index(self) -> torch.Tensor:
        """``LongTensor[N, K]``, built on first use: the fast kernels build their own gather
        indices, and at 13.5M cells this one alone would take ~3 GiB and 15 s to make."""
        if self._index is None:
            X, Y, Z = self.shape
            n = X * Y * Z
            grid = torch.stack(torch.meshgrid(torch.arange(X), torch.arange(Y), torch.arange(Z), indexing="ij"), -1)
            coords = grid.reshape(n, 1, 3) + self.offsets.detach().cpu().reshape(1, -1, 3)  # [N, K, 3]
            mapped = [_axis_map(coords[..., a], size, self.boundary) for a, size in enumerate(self.shape)]
            outside = (mapped[0] < 0) | (mapped[1] < 0) | (mapped[2] < 0)
            flat = mapped[0] * (Y * Z) + mapped[1] * Z + mapped[2]
            self._index = torch.where(outside, torch.full_like(flat, n), flat).contiguous().to(self._device)
        return self._index

    @index.setter
    def index(self, value: torch.Tensor) -> None:
        self._index = value

    # -- sizes ------------------------------------------------------------------------------
    @property
    def num_cells(self) -> int:
        """``N = X*Y*Z``."""
        return self.shape[0] * self.shape[1] * self.shape[2]

    @property
    def k(self) -> int:
        """Neighbours per cell ``K``."""
        return int(self.offsets.shape[0])

    @property
    def device(self) -> torch.device:
        """Device of the neighbour index tensors."""
        return self._device

    def to(self, device: torch.device | str) -> "Topology":
        """Move the index tensors (in place) and return ``self``."""
        self._device = torch.device(device)
        self.offsets = self.offsets.to(device)
        if self._index is not None:
            self._index = self._index.to(device)
        return self

    def neighbour_counts(self) -> torch.Tensor:
        """``LongTensor[N]``: neighbours of each cell that lie inside the lattice (walls excluded)."""
        return (self.index < self.num_cells).sum(-1)

    # -- the reference gather ---------------------------------------------------------------
    def gather(self, state: torch.Tensor) -> torch.Tensor:
        """``state [B, X, Y, Z, C]`` → neighbour states ``[B, X, Y, Z, K, C]``.

        Reference implementation: ``index_select`` on the flat state padded with one zero row,
        then multiplied by :attr:`edge_weight` when set.
        """
        B, C = state.shape[0], state.shape[-1]
        X, Y, Z = self.shape
        n, k = self.num_cells, self.k
        flat = state.reshape(B, n, C)
        padded = torch.cat([flat, flat.new_zeros(B, 1, C)], dim=1)  # ghost row for 'walls'
        idx = self.index if self.index.device == state.device else self.index.to(state.device)
        out = padded.index_select(1, idx.reshape(-1)).reshape(B, X, Y, Z, k, C)
        w = self.edge_weight
        if w is not None:
            if w.dim() == 1:  # [K]
                out = out * w.reshape(k, 1).to(out.dtype)
            else:  # [N, K]
                out = out * w.reshape(X, Y, Z, k, 1).to(out.dtype)
        return out

    def __repr__(self) -> str:
        return (f"Topology(shape={list(self.shape)}, neighbourhood='{self.neighbourhood}', "
                f"boundary='{self.boundary}', K={self.k})")
