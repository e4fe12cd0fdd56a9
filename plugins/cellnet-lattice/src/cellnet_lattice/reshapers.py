"""Reshapers that place an embedding ``[B, D]`` on the lattice ``[B, X, Y, Z, C]`` and read it back.

``surface``  learned ``Linear(D → P_in·C)`` onto P_in points of the input face (the rest of the
             lattice starts at zero); ``from_state`` reads P_out points of the output face through
             ``Linear(P_out·C → D')``. The signal has to cross the lattice to be read.
``volume``   learned ``Linear(D → X·Y·Z·C)`` and ``Linear(X·Y·Z·C → D')``.
``permuted`` no parameters: ``X·Y·Z·C == D`` slots, filled by a fixed permutation of the dims
             that puts the most important ones in chosen places; ``from_state`` is its exact inverse.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from cellnet_core.errors import ConfigError

_AXES = {"x": 0, "y": 1, "z": 2}


def _parse_face(face: str) -> tuple[int, int]:
    """``"z=0"`` → ``(2, 0)``; ``"z=-1"`` → ``(2, -1)`` (the last layer)."""
    axis, _, pos = face.partition("=")
    return _AXES[axis], int(pos)


def opposite_face(face: str) -> str:
    """``"z=0"`` → ``"z=-1"`` and back: the face across the lattice on the same axis."""
    axis, pos = face.split("=")
    return f"{axis}={'-1' if pos == '0' else '0'}"


def face_points(shape: Sequence[int], face: str, placement: str, fraction: float, seed: int = 0) -> torch.Tensor:
    """Flat cell indices (``x*Y*Z + y*Z + z``, sorted) of the I/O points on ``face``.

    ``full``: every cell of the face. ``proportional``: an even grid with stride
    ``round(1/sqrt(fraction))`` in both face directions. ``corners``: four square blocks at the
    face's corners, ``fraction`` of the face in all. ``random``: ``round(fraction·P·Q)`` cells
    drawn with ``seed``. Always at least one point.
    """
    X, Y, Z = (int(s) for s in shape)
    axis, pos = _parse_face(face)
    fixed = (shape[axis] - 1) if pos == -1 else 0
    others = [a for a in range(3) if a != axis]
    P, Q = shape[others[0]], shape[others[1]]
    pq = torch.stack(torch.meshgrid(torch.arange(P), torch.arange(Q), indexing="ij"), -1).reshape(-1, 2)
    if placement == "full":
        sel = torch.ones(P * Q, dtype=torch.bool)
    elif placement == "proportional":
        s = max(1, round(1.0 / math.sqrt(fraction)))
        op, oq = (s // 2 if s // 2 < P else 0), (s // 2 if s // 2 < Q else 0)  # centre the grid
        sel = (pq[:, 0] >= op) & ((pq[:, 0] - op) % s == 0) & (pq[:, 1] >= oq) & ((pq[:, 1] - oq) % s == 0)
    elif placement == "corners":
        m = max(1.0, fraction * P * Q / 4.0)
        bp = min(max(1, round(math.sqrt(m))), max(1, (P + 1) // 2))
        bq = min(max(1, round(m / bp)), max(1, (Q + 1) // 2))
        near_p = (pq[:, 0] < bp) | (pq[:, 0] >= P - bp)
        near_q = (pq[:, 1] < bq) | (pq[:, 1] >= Q - bq)
        sel = near_p & near_q
    elif placement == "random":
        g = torch.Generator().manual_seed(int(seed))
        count = max(1, round(fraction * P * Q))
        sel = torch.zeros(P * Q, dtype=torch.bool)
        sel[torch.randperm(P * Q, generator=g)[:count]] = True
    else:
        raise ConfigError(f"reshaper.placement: unknown '{placement}'")
    if not sel.any():
        sel[0] = True
    chosen = pq[sel]
    coords = torch.zeros(chosen.shape[0], 3, dtype=torch.long)
    coords[:, axis] = fixed
    coords[:, others[0]], coords[:, others[1]] = chosen[:, 0], chosen[:, 1]
    flat = coords[:, 0] * (Y * Z) + coords[:, 1] * Z + coords[:, 2]
    return flat.sort().values


class SurfaceReshaper(nn.Module):
    """Learned adapters between the embedding and two opposite faces of the lattice."""

    def __init__(self, dim: int, shape: Sequence[int], channels: int, placement: str = "full",
                 fraction: float = 0.25, in_face: str = "z=0", out_face: str | None = None,
                 out_dim: int | None = None, seed: int = 0, init: str = "default"):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.channels, self.dim = int(channels), int(dim)
        self.out_dim = int(out_dim or dim)
        if init == "inverse":
            out_face = out_face or in_face
        self.in_face, self.out_face = in_face, out_face or opposite_face(in_face)
        self.register_buffer("in_index", face_points(self.shape, self.in_face, placement, fraction, seed))
        if self.out_face == self.in_face:  # read back exactly the points written
            self.register_buffer("out_index", self.in_index.clone())
        else:
            self.register_buffer("out_index", face_points(self.shape, self.out_face, placement, fraction, seed + 1))
        self.adapter_in = nn.Linear(self.dim, len(self.in_index) * self.channels)
        self.adapter_out = nn.Linear(len(self.out_index) * self.channels, self.out_dim)
        if init == "inverse":
            self._init_inverse(seed)

    def _init_inverse(self, seed: int) -> None:
        """adapter_in = Q (orthonormal columns), adapter_out = Qᵀ, biases 0: from_state(to_field(e)) = e."""
        width = len(self.in_index) * self.channels
        if width < self.dim or self.out_dim != self.dim:
            from cellnet_core.errors import ConfigError

            raise ConfigError(f"reshaper.init: 'inverse' needs input points × channels ≥ D and out_dim = D; "
                              f"got {len(self.in_index)} × {self.channels} = {width} for D = {self.dim}")
        g = torch.Generator().manual_seed(int(seed))
        q, _ = torch.linalg.qr(torch.randn(width, self.dim, generator=g))
        with torch.no_grad():
            self.adapter_in.weight.copy_(q)
            self.adapter_in.bias.zero_()
            self.adapter_out.weight.copy_(q.T)
            self.adapter_out.bias.zero_()

    @property
    def num_cells(self) -> int:
        """X·Y·Z."""
        return self.shape[0] * self.shape[1] * self.shape[2]

    def to_field(self, emb: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` → ``[B, X, Y, Z, C]``: zero everywhere but the input points."""
        B = emb.shape[0]
        vals = self.adapter_in(emb).reshape(B, -1, self.channels)
        field = vals.new_zeros(B, self.num_cells, self.channels).index_copy(1, self.in_index, vals)
        return field.reshape(B, *self.shape, self.channels)

    def from_state(self, state: torch.Tensor) -> torch.Tensor:
        """``[B, X, Y, Z, C]`` → ``[B, D']`` from the output points."""
        B = state.shape[0]
        pts = state.reshape(B, self.num_cells, self.channels).index_select(1, self.out_index)
        return self.adapter_out(pts.reshape(B, -1))

    def extra_repr(self) -> str:
        """Shape, channels and the input/output faces with their point counts, shown by
        ``repr(reshaper)``."""
        return (f"shape={list(self.shape)}, C={self.channels}, in {self.in_face}: {len(self.in_index)} points, "
                f"out {self.out_face}: {len(self.out_index)} points")


class VolumeReshaper(nn.Module):
    """Learned ``Linear(D → X·Y·Z·C)`` and ``Linear(X·Y·Z·C → D')``."""

    def __init__(self, dim: int, shape: Sequence[int], channels: int, out_dim: int | None = None):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.channels, self.dim = int(channels), int(dim)
        self.out_dim = int(out_dim or dim)
        size = self.shape[0] * self.shape[1] * self.shape[2] * self.channels
        self.proj_in = nn.Linear(self.dim, size)
        self.proj_out = nn.Linear(size, self.out_dim)

    def to_field(self, emb: torch.Tensor) -> torch.Tensor:
        """``emb [B, D]`` → ``field [B, X, Y, Z, C]`` by one learned linear map."""
        return self.proj_in(emb).reshape(emb.shape[0], *self.shape, self.channels)

    def from_state(self, state: torch.Tensor) -> torch.Tensor:
        """``state [B, X, Y, Z, C]`` → ``[B, out_dim]`` by one learned linear map."""
        return self.proj_out(state.reshape(state.shape[0], -1))


def placement_order(shape: Sequence[int], channels: int, placement: str, seed: int = 0) -> torch.Tensor:
    """Slots ``0 .. N·C-1`` (flat ``[X, Y, Z, C]`` order) listed from the most to the least
    important place. ``centre``: cells by distance from the lattice centre (ties in flat order),
    channel 0 of every cell first; ``surface``: the reverse; ``random``: seeded; ``index``: identity."""
    X, Y, Z = (int(s) for s in shape)
    n, size = X * Y * Z, X * Y * Z * channels
    if placement == "index":
        return torch.arange(size)
    if placement == "random":
        return torch.randperm(size, generator=torch.Generator().manual_seed(int(seed)))
    grid = torch.stack(torch.meshgrid(torch.arange(X), torch.arange(Y), torch.arange(Z), indexing="ij"), -1)
    centre = torch.tensor([(X - 1) / 2, (Y - 1) / 2, (Z - 1) / 2])
    dist = (grid.reshape(n, 3).float() - centre).pow(2).sum(-1)
    # stable sort: equal distances keep flat order
    cells = torch.sort(dist, stable=True, descending=(placement == "surface")).indices
    # slot = cell*C + c; round-robin channels so the first N dims use channel 0 of every cell
    slots = (cells.unsqueeze(0) * channels + torch.arange(channels).unsqueeze(1)).reshape(-1)
    return slots


class PermutedReshaper(nn.Module):
    """Exact, parameter-free placement of the D dims onto ``X·Y·Z·C == D`` slots.

    ``perm [D]`` (a buffer, saved with the weights): ``field_flat[:, slot] = emb[:, perm[slot]]``;
    ``inverse [D]``: ``emb[:, d] = field_flat[:, inverse[d]]``. The dim of rank r in importance goes to
    the r-th slot of :func:`placement_order`. Importance is the dim index, or the per-dim variance
    on data after :meth:`fit`.
    """

    def __init__(self, dim: int, shape: Sequence[int] | None, channels: int, placement: str = "centre",
                 importance: str = "index", seed: int = 0):
        super().__init__()
        if shape is None:
            if dim % channels:
                raise ConfigError(f"reshaper.channels: {channels} does not divide the embedding size {dim}")
            shape = (dim // channels, 1, 1)
        self.shape = tuple(int(s) for s in shape)
        self.channels, self.dim, self.out_dim = int(channels), int(dim), int(dim)
        size = self.shape[0] * self.shape[1] * self.shape[2] * self.channels
        if size != dim:
            raise ConfigError(f"reshaper: shape {list(self.shape)} × channels {channels} = {size} slots, but the "
                              f"encoder gives {dim} dims; they must be equal for 'permuted'")
        self.placement, self.importance = placement, importance
        self.register_buffer("order", placement_order(self.shape, self.channels, placement, seed))
        self.register_buffer("perm", torch.empty(dim, dtype=torch.long))
        self.register_buffer("inverse", torch.empty(dim, dtype=torch.long))
        self._set_ranking(torch.arange(dim))

    def _set_ranking(self, dims_by_importance: torch.Tensor) -> None:
        perm = torch.empty_like(self.perm)
        perm[self.order] = dims_by_importance.to(perm.device)
        self.perm.copy_(perm)
        self.inverse.copy_(torch.argsort(perm))

    @torch.no_grad()
    def fit(self, embs: torch.Tensor) -> None:
        """With ``importance: variance``: rank dims by their variance over ``embs [M, D]``."""
        if self.importance == "variance":
            self._set_ranking(torch.argsort(embs.float().var(0), descending=True, stable=True))

    def to_field(self, emb: torch.Tensor) -> torch.Tensor:
        """``emb [B, D]`` → ``field [B, X, Y, Z, C]``: the dims placed by the fixed permutation."""
        return emb.index_select(1, self.perm).reshape(emb.shape[0], *self.shape, self.channels)

    def from_state(self, state: torch.Tensor) -> torch.Tensor:
        """``state [B, X, Y, Z, C]`` → ``[B, D]`` by the inverse permutation (exact)."""
        return state.reshape(state.shape[0], -1).index_select(1, self.inverse)


def build_surface(cfg, ctx) -> SurfaceReshaper:
    """Factory of the ``surface`` reshaper (D from the encoder)."""
    return SurfaceReshaper(ctx.embedding_dim, cfg.shape, cfg.channels, cfg.placement, cfg.fraction,
                           cfg.in_face, cfg.out_face, cfg.out_dim, seed=getattr(ctx, "seed", 0) or 0,
                           init=cfg.init)


def build_volume(cfg, ctx) -> VolumeReshaper:
    """Factory of the ``volume`` reshaper."""
    return VolumeReshaper(ctx.embedding_dim, cfg.shape, cfg.channels, cfg.out_dim)


def build_permuted(cfg, ctx) -> PermutedReshaper:
    """Factory of the ``permuted`` reshaper."""
    return PermutedReshaper(ctx.embedding_dim, cfg.shape, cfg.channels, cfg.placement, cfg.importance,
                            seed=getattr(ctx, "seed", 0) or 0)
