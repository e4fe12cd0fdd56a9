"""Channels-last neighbour gather: pad once with the boundary rule, then K strided slices.

Shapes: ``state [B, X, Y, Z, C]``; the halo-padded copy is ``[B, X+2, Y+2, Z+2, C]``; the gathered
buffer is ``[B, X, Y, Z, K, C]`` (optionally with extra slots after the K neighbours, see
:func:`gather_into`). Offsets are in ``{-1, 0, 1}³`` (a 1-cell halo).

Boundary rules, per axis (same as ``cellnet_lattice.topology``):

- ``periodic``  : index -1 → size-1, size → 0            (torch ``circular`` padding)
- ``walls``     : outside reads 0                        (``constant`` padding with 0)
- ``reflecting``: -1 → 1, size → size-2                  (``reflect`` padding)
- ``absorbing`` : -1 → 0, size → size-1                  (``replicate`` padding)

Multi-axis padding with these rules is separable, so the halo is filled one axis after the other,
each axis over the full extent of the axes already filled (corners come out right).
"""

from __future__ import annotations

from typing import Sequence

import torch

#: boundary name → the torch padding mode with the same index map
PAD_MODE = {"periodic": "circular", "walls": "constant", "reflecting": "reflect", "absorbing": "replicate"}


def halo_sources(size: int, boundary: str) -> tuple[int | None, int | None]:
    """Padded-coordinate source of the low (index 0) and high (index size+1) halo plane.

    ``None`` means the plane is zero (``walls``). Padded coordinate p holds original index p-1.
    """
    if boundary == "walls":
        return None, None
    if boundary == "periodic":
        return size, 1
    if boundary == "reflecting":
        if size < 2:  # nothing to reflect from: a single plane mirrors itself
            return 1, size
        return 2, size - 1
    if boundary == "absorbing":
        return 1, size
    raise ValueError(f"unknown boundary '{boundary}'; expected one of {', '.join(PAD_MODE)}")


def _axis_slice(ndim: int, axis: int, index) -> tuple:
    sl = [slice(None)] * ndim
    sl[axis] = index
    return tuple(sl)


def fill_halo(padded: torch.Tensor, boundary: str, axes: Sequence[int] = (1, 2, 3)) -> torch.Tensor:
    """Fill the 1-cell halo planes of ``padded`` along ``axes`` in place from its interior.

    ``padded`` is ``[B, X+2, Y+2, Z+2, C]`` (or a slab of it) whose interior is already written.
    """
    nd = padded.dim()
    for axis in axes:
        size = padded.shape[axis] - 2
        lo, hi = halo_sources(size, boundary)
        if lo is None:
            padded[_axis_slice(nd, axis, 0)] = 0
            padded[_axis_slice(nd, axis, size + 1)] = 0
        else:
            padded[_axis_slice(nd, axis, 0)] = padded[_axis_slice(nd, axis, lo)]
            padded[_axis_slice(nd, axis, size + 1)] = padded[_axis_slice(nd, axis, hi)]
    return padded


def pad_state(state: torch.Tensor, boundary: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, X, Y, Z, C]`` → halo-padded ``[B, X+2, Y+2, Z+2, C]`` (into ``out`` when given)."""
    b, x, y, z, c = state.shape
    if out is None:
        out = state.new_empty((b, x + 2, y + 2, z + 2, c))
    out[:, 1:x + 1, 1:y + 1, 1:z + 1] = state
    return fill_halo(out, boundary)


def gather_into(padded: torch.Tensor, offsets: Sequence[tuple[int, int, int]], out: torch.Tensor,
                shape: tuple[int, int, int]) -> torch.Tensor:
    """Write the K neighbour views of ``padded`` into slots ``0..K-1`` of ``out``.

    ``padded`` is ``[B, X+2, Y+2, Z+2, C]``; ``out`` is ``[B, X, Y, Z, S, C]`` with ``S >= K``
    (the extra slots are left alone: the fused kernels put the cell's own state and its input
    there so that one matrix multiply covers the cell's whole first layer).
    """
    x, y, z = shape
    for k, (dx, dy, dz) in enumerate(offsets):
        out[:, :, :, :, k] = padded[:, 1 + dx:1 + dx + x, 1 + dy:1 + dy + y, 1 + dz:1 + dz + z]
    return out


def gather(state: torch.Tensor, offsets: Sequence[tuple[int, int, int]], boundary: str,
           edge_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Functional gather: ``[B, X, Y, Z, C]`` → ``[B, X, Y, Z, K, C]`` (times ``edge_weight``)."""
    b, x, y, z, c = state.shape
    padded = pad_state(state, boundary)
    out = state.new_empty((b, x, y, z, len(offsets), c))
    gather_into(padded, offsets, out, (x, y, z))
    if edge_weight is not None:
        out = out * edge_weight_view(edge_weight, (x, y, z), out.dtype)
    return out


def edge_weight_view(edge_weight: torch.Tensor, shape: tuple[int, int, int], dtype=None) -> torch.Tensor:
    """``[K]`` or ``[X*Y*Z, K]`` edge weights as a tensor broadcasting over ``[B, X, Y, Z, K, C]``."""
    w = edge_weight if dtype is None else edge_weight.to(dtype)
    if w.dim() == 1:
        return w.view(1, 1, 1, 1, -1, 1)
    x, y, z = shape
    return w.reshape(1, x, y, z, -1, 1)
