"""The ``chunked`` kernel: the fused step over X-slabs with a 1-cell halo exchange per step.

For a lattice too large for the whole-volume gather buffer (``[B, N, S, C]`` is ``S`` times the
state, plus the ``[B, N, H]`` hidden layer), the step is computed slab by slab: slab
``[x0, x1)`` reads the state planes ``x0-1 .. x1`` — the two halo planes chosen by the X
boundary rule (wrapped, mirrored, replicated or zero) — and writes ``state + delta`` for its own
planes into the output. Reads always come from the old state, so the result is the synchronous
step, identical to the unchunked one. Scratch memory is bounded by the slab, not the lattice:

    per slab: (sx+2)·Y·Z·C (source) + sx·Y·Z·(S·C + H + C) (buffer, hidden, delta) floats

With autograd on, every slab's buffers are kept for the backward pass, so chunking saves no
memory in training (use the lattice's ``checkpoint_steps`` there); the result and its gradients
are still exact.

Built on :mod:`cellnet_kernels.slots` (the slot maths); :mod:`cellnet_kernels.fused` hands its large
autograd steps to this kernel.
"""

from __future__ import annotations

from typing import Any

import torch

from cellnet_kernels.slots import (GMLP_BLOCK_DIVISOR, IndexCache, ReferenceFallback, cell_delta, cell_kind,
                                   gmlp_delta, map_axis, needs_grad)


def slab_planes(x: int, y: int, z: int, slab: int = 0, slab_cells: int = 262_144) -> int:
    """X-planes per slab: ``slab`` when set, else about ``slab_cells`` cells (at least one plane)."""
    if slab > 0:
        return min(slab, x)
    return max(1, min(x, slab_cells // max(1, y * z)))


class ChunkedKernel:
    """``state [B,X,Y,Z,C]`` → ``state + delta``, computed in X-slabs of ``slab`` planes."""

    name = "chunked"

    #: without gradients, gmlp slabs are processed in blocks of about this many cells / 32
    block_cells = 65536

    def __init__(self, slab: int = 0, slab_cells: int = 262_144):
        self.slab, self.slab_cells = int(slab), int(slab_cells)
        self._indices = IndexCache()
        self._fallback = ReferenceFallback(self.name)
        self._scratch: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _halo_planes(self, x0: int, x1: int, size: int, boundary: str) -> tuple[int | None, int | None]:
        lo, hi = map_axis(torch.tensor([x0 - 1, x1]), size, boundary).tolist()
        return (lo if lo >= 0 else None), (hi if hi >= 0 else None)

    def _scratch_for(self, bsz: int, rows: int, n_s: int, s: int, c: int, like: torch.Tensor):
        key = (bsz, rows, n_s, s, c, like.dtype, str(like.device))
        got = self._scratch.get(key)
        if got is None:
            if len(self._scratch) > 2:  # a full slab and the last (shorter) one
                self._scratch.clear()
            got = (like.new_empty(bsz, rows, c), like.new_empty(bsz, n_s * s, c))
            self._scratch[key] = got
        return got

    def step(self, state: torch.Tensor, field: torch.Tensor | None, cell: Any, topology: Any) -> torch.Tensor:
        """One synchronous step computed in X-slabs with a 1-plane halo; ``state [B, X, Y, Z, C]``
        in and out, equal to the fused step."""
        kind = cell_kind(cell, topology.edge_weight)
        if kind == "reference":
            return self._fallback.step(state, field, cell, topology)
        bsz, x, y, z, c = state.shape
        yz = y * z
        k = int(topology.offsets.shape[0])
        has_field = field is not None
        s = k + 2 if has_field else k + 1
        boundary = topology.boundary
        grad = needs_grad(state, field, topology.edge_weight, cell=cell)
        sx = slab_planes(x, y, z, self.slab, self.slab_cells)
        ew = topology.edge_weight
        ew_planes = ew.reshape(x, yz, k) if ew is not None and ew.dim() == 2 else None
        rows3 = state.reshape(bsz, x, yz, c)
        field3 = field.reshape(bsz, x, yz, c).to(state.dtype) if has_field else None
        out = None if grad else torch.empty_like(state)
        pieces = []
        for x0 in range(0, x, sx):
            x1 = min(x, x0 + sx)
            ns = (x1 - x0) * yz
            lo, hi = self._halo_planes(x0, x1, x, boundary)
            idx = self._indices.get((x1 - x0, y, z), topology, state.device, x_halo=True, has_field=has_field)
            n_state = (x1 - x0 + 2) * yz
            rows = n_state + (ns if has_field else 0) + 1
            if grad:
                zero_plane = state.new_zeros(bsz, yz, c)
                parts = [rows3[:, lo] if lo is not None else zero_plane,
                         rows3[:, x0:x1].reshape(bsz, ns, c),
                         rows3[:, hi] if hi is not None else zero_plane]
                if has_field:
                    parts.append(field3[:, x0:x1].reshape(bsz, ns, c))
                parts.append(state.new_zeros(bsz, 1, c))
                src = torch.cat(parts, dim=1)
            else:
                src, buf = self._scratch_for(bsz, rows, ns, s, c, state)
                src[:, :yz] = rows3[:, lo] if lo is not None else 0
                src[:, yz:n_state - yz] = rows3[:, x0:x1].reshape(bsz, ns, c)
                src[:, n_state - yz:n_state] = rows3[:, hi] if hi is not None else 0
                if has_field:
                    src[:, n_state:n_state + ns] = field3[:, x0:x1].reshape(bsz, ns, c)
                src[:, rows - 1] = 0
            if kind == "gmlp":
                blk = max(1, self.block_cells // GMLP_BLOCK_DIVISOR // bsz) if not grad else 0
                delta = gmlp_delta(src, idx, ns, k, has_field, n_state, cell, block=blk, inplace=not grad)
            else:
                if grad:
                    buf = src.index_select(1, idx)
                else:
                    torch.index_select(src, 1, idx, out=buf)
                slab_w = ew_planes[x0:x1].reshape(ns, k) if ew_planes is not None else ew
                delta = cell_delta(buf.view(bsz, ns, s, c), k, has_field, cell, slab_w, inplace=not grad, kind=kind)
            new = rows3[:, x0:x1].reshape(bsz, ns, c) + delta
            if grad:
                pieces.append(new.reshape(bsz, x1 - x0, y, z, c))
            else:
                out[:, x0:x1] = new.reshape(bsz, x1 - x0, y, z, c)
        return torch.cat(pieces, dim=1) if grad else out

    def clear(self) -> None:
        """Drop the cached indices and scratch buffers."""
        self._indices.clear()
        self._scratch.clear()

    def __repr__(self) -> str:
        return f"ChunkedKernel(slab={self.slab}, slab_cells={self.slab_cells})"


def build_chunked(cfg, ctx) -> ChunkedKernel:
    """Factory of the ``chunked`` kernel."""
    return ChunkedKernel(slab=cfg.slab, slab_cells=cfg.slab_cells)
