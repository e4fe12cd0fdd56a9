"""The ``fused`` kernel: one gather into a preallocated channels-last buffer feeding one matmul.

One lattice step is ``state + cell(gather(state), state, field)`` (the ``reference`` kernel). The
fused step computes the same thing with far fewer passes over memory:

1. **Source rows.** ``src [B, R, C]`` holds the state rows, then the injected field's rows (when a
   field is given), then one zero "ghost" row (what a ``walls`` neighbour outside reads).
2. **Gather.** One ``index_select`` with a precomputed index writes every cell's slots into
   ``buf [B, N, S, C]``: slots ``0..K-1`` are the K neighbours (the boundary rule is folded into
   the index), slot ``K`` the cell's own state, slot ``K+1`` its input (only with a field). The
   index and (when no gradient is needed) ``src`` and ``buf`` are cached and reused between steps.
3. **First layer as one matmul.** For ``mlp`` the slot layout *is* ``fc1``'s input layout
   (``concat(neigh K*C, own C, inp C)``), so ``buf.view(B*N, S*C) @ W1ᵀ`` is the first layer with
   no concatenation. For ``nca`` the depthwise perception is linear, so it is folded into
   ``fc1``: ``W_eff[h, s, c] = Σ_f W1[h, f*C + c] · P[f, s, c]`` and the cell becomes the same one
   matmul (gradients reach ``perception`` and ``fc1`` through ``W_eff``). Shared (``[K]``) edge
   weights are folded into the neighbour columns of the weight; per-cell (``[N, K]``) ones scale
   the buffer. ``gmlp`` is projected before the gather (:func:`~cellnet_kernels.slots.gmlp_delta`);
   any other cell that declares ``rowwise = True`` (third-party cells included) is called on
   views of the buffer, and a cell that does not is run by the reference step (one logged line).
4. ReLU, second layer, soft bound and the residual add, in place when no gradient is needed.

The boundary rules and the slot index are built by :func:`build_index` from the topology's
``shape``, ``offsets`` and ``boundary`` (never its ``[N, K]`` index tensor), so the same code runs
on an X-slab of a large lattice (:mod:`cellnet_kernels.chunked`). The maths on gathered slots lives
in :mod:`cellnet_kernels.slots`, which both kernels build on; with autograd on a CPU a large
lattice is handed to :class:`~cellnet_kernels.chunked.ChunkedKernel` (slab by slab).

Why ``index_select`` rather than "pad, then K strided slices": on the reference machine (2-core
EPYC, AVX2) the K strided copies into ``[..., K, C]`` (64-byte runs at a 512-byte stride) ran at
~4 GB/s, the padding itself cost as much as the gather, and ``index_select`` of whole 64-byte rows
into a contiguous buffer was 3–5× faster for the same bytes (see docs/plugins/kernels.md). The
pad-and-slice gather is kept in :mod:`cellnet_kernels.gather` and tested against the topology.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from cellnet_kernels.chunked import ChunkedKernel
# the slot maths, importable from here as well (``from cellnet_kernels.fused import build_index``)
from cellnet_kernels.slots import (GMLP_BLOCK_DIVISOR, IndexCache, ReferenceFallback, build_index, cell_delta,
                                   cell_kind, first_layer, functional_step, gmlp_delta, needs_grad, source_rows)

__all__ = ["FusedKernel", "build_fused", "build_index", "cell_delta", "cell_kind", "first_layer",
           "functional_step", "gmlp_delta", "needs_grad", "source_rows"]


@dataclass
class _Buffers:
    src: torch.Tensor
    buf: torch.Tensor
    field_ref: torch.Tensor | None = None  # held so its memory cannot be reused by another tensor
    field_version: int = -1


class FusedKernel:
    """``state [B,X,Y,Z,C]``, ``field [B,X,Y,Z,C] | None`` → ``state + delta`` (see module doc).

    ``reuse_buffers``: keep the source and gather buffers between steps when shapes match and no
    gradient is needed (a field unchanged since the last step is not even copied again).
    """

    name = "fused"

    def __init__(self, reuse_buffers: bool = True, block_cells: int = 65536, grad_slab_cells: int = 32768):
        self.reuse_buffers = reuse_buffers
        self.block_cells = int(block_cells)
        self.grad_slab_cells = int(grad_slab_cells)
        self._slabs: ChunkedKernel | None = None  # made on first use
        self._indices = IndexCache()
        self._fallback = ReferenceFallback(self.name)
        self._buffers: dict[tuple, _Buffers] = {}

    def index(self, out_shape, topology, device, *, x_halo: bool = False, has_field: bool = False) -> torch.Tensor:
        """The cached gather index ``[N·S]`` for this lattice shape, topology, halo and field
        presence."""
        return self._indices.get(out_shape, topology, device, x_halo=x_halo, has_field=has_field)

    def step(self, state: torch.Tensor, field: torch.Tensor | None, cell: Any, topology: Any) -> torch.Tensor:
        """One synchronous step: one index gather into a channels-last buffer, the cell's first
        layer as one matmul; ``[B, X, Y, Z, C]`` in and out."""
        kind = cell_kind(cell, topology.edge_weight)
        if kind == "reference":
            return self._fallback.step(state, field, cell, topology)
        bsz, x, y, z, c = state.shape
        n = x * y * z
        k = int(topology.offsets.shape[0])
        has_field = field is not None
        s = k + 2 if has_field else k + 1
        idx = self.index((x, y, z), topology, state.device, has_field=has_field)
        grad = needs_grad(state, field, topology.edge_weight, cell=cell)
        # blocking is a CPU cache optimisation; on a GPU it would only multiply kernel launches
        blocked = self.block_cells > 0 and state.device.type == "cpu"
        if grad and state.device.type == "cpu" and 0 < self.grad_slab_cells < bsz * n and x > 1:
            return self._slabbed(bsz).step(state, field, cell, topology)
        state_rows = state.reshape(bsz, n, c)
        if kind == "gmlp":
            src = source_rows(state_rows, field)
            # a gmlp cell's working set (K gathered 2H-rows) is ~30x an mlp cell's: smaller blocks
            blk = max(1, self.block_cells // GMLP_BLOCK_DIVISOR // bsz) if blocked and not grad else 0
            delta = gmlp_delta(src, idx, n, k, has_field, n, cell, block=blk, inplace=not grad)
            return (state_rows + delta).view_as(state)
        if grad or not self.reuse_buffers:
            buf = source_rows(state_rows, field).index_select(1, idx).view(bsz, n, s, c)
            delta = cell_delta(buf, k, has_field, cell, topology.edge_weight, inplace=not grad, kind=kind)
            return state + delta.view_as(state)
        # no gradient: cell blocks of about block_cells, so the block's buffer and hidden layer stay in cache
        src = self._source(state_rows, field, n)
        blk = max(1, self.block_cells // bsz) if blocked else n
        ew = topology.edge_weight
        out = torch.empty_like(state_rows)
        for r0 in range(0, n, blk):
            r1 = min(n, r0 + blk)
            buf = self._block_buffer(bsz, (r1 - r0) * s, c, state)
            torch.index_select(src, 1, idx[r0 * s:r1 * s], out=buf)
            w = ew[r0:r1] if ew is not None and ew.dim() == 2 else ew
            delta = cell_delta(buf.view(bsz, r1 - r0, s, c), k, has_field, cell, w, inplace=True, kind=kind)
            if kind == "generic" or delta.dtype != state.dtype:  # a generic cell's delta may alias buf
                delta = state_rows[:, r0:r1] + delta
            else:
                delta = delta.add_(state_rows[:, r0:r1])
            out[:, r0:r1] = delta
        return out.view_as(state)

    def _slabbed(self, bsz: int):
        """With autograd on a CPU, large lattices go slab by slab (each slab's gather, matmuls and
        their backward touch only that slab): measured 1.5x faster forward+backward at 32³×4."""
        if self._slabs is None:
            self._slabs = ChunkedKernel()
        self._slabs.slab_cells = max(1, self.grad_slab_cells // bsz)
        return self._slabs

    def _source(self, state_rows, field, n) -> torch.Tensor:
        """``src [B, R, C]`` (state rows, field rows, ghost row), kept between steps."""
        bsz, _, c = state_rows.shape
        has_field = field is not None
        rows = n * (2 if has_field else 1) + 1
        key = ("src", bsz, rows, c, state_rows.dtype, str(state_rows.device))
        b = self._buffers.get(key)
        if b is None:
            for old in [kk for kk in self._buffers if kk[0] == "src"]:
                del self._buffers[old]  # one shape at a time: never hold stale big buffers
            src = state_rows.new_empty(bsz, rows, c)
            src[:, rows - 1].zero_()
            b = _Buffers(src, src)
            self._buffers[key] = b
        b.src[:, :n].copy_(state_rows)
        if has_field:
            if field is not b.field_ref or field._version != b.field_version:
                b.src[:, n:2 * n].copy_(field.reshape(bsz, n, c))
                b.field_ref, b.field_version = field, field._version
        return b.src

    def _block_buffer(self, bsz: int, rows: int, c: int, like: torch.Tensor) -> torch.Tensor:
        key = ("buf", bsz, rows, c, like.dtype, str(like.device))
        b = self._buffers.get(key)
        if b is None:
            if sum(kk[0] == "buf" for kk in self._buffers) >= 4:
                for old in [kk for kk in self._buffers if kk[0] == "buf"]:
                    del self._buffers[old]
            buf = like.new_empty(bsz, rows, c)
            b = _Buffers(buf, buf)
            self._buffers[key] = b
        return b.buf

    def clear(self) -> None:
        """Drop cached indices and buffers (e.g. before a much larger lattice)."""
        self._indices.clear()
        self._buffers.clear()
        if self._slabs is not None:
            self._slabs.clear()

    def __repr__(self) -> str:
        return (f"FusedKernel(reuse_buffers={self.reuse_buffers}, block_cells={self.block_cells}, "
                f"grad_slab_cells={self.grad_slab_cells})")


def build_fused(cfg, ctx) -> FusedKernel:
    """Factory of the ``fused`` kernel."""
    return FusedKernel(reuse_buffers=cfg.reuse_buffers, block_cells=cfg.block_cells,
                       grad_slab_cells=cfg.grad_slab_cells)
