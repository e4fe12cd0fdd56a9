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
   the buffer. Any other cell (``gmlp``, third-party cells) is called on views of the buffer.
4. ReLU, second layer, soft bound and the residual add, in place when no gradient is needed.

The boundary rules and the slot index are built by :func:`build_index` from the topology's
``shape``, ``offsets`` and ``boundary`` (never its ``[N, K]`` index tensor), so the same code runs
on an X-slab of a large lattice (:mod:`cellnet_kernels.chunked`).

Why ``index_select`` rather than "pad, then K strided slices": on the reference machine (2-core
EPYC, AVX2) the K strided copies into ``[..., K, C]`` (64-byte runs at a 512-byte stride) ran at
~4 GB/s, the padding itself cost as much as the gather, and ``index_select`` of whole 64-byte rows
into a contiguous buffer was 3–5× faster for the same bytes (see docs/plugins/kernels.md). The
pad-and-slice gather is kept in :mod:`cellnet_kernels.gather` and tested against the topology.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

log = logging.getLogger("cellnet_kernels")

# --------------------------------------------------------------------------------------------
# index construction
# --------------------------------------------------------------------------------------------


def _map_axis(coord: torch.Tensor, size: int, boundary: str) -> torch.Tensor:
    """Coordinates in ``[-1, size]`` → ``[0, size)``; ``-1`` for "outside" (walls)."""
    if boundary == "periodic":
        return coord % size
    if boundary == "walls":
        return torch.where((coord >= 0) & (coord < size), coord, torch.full_like(coord, -1))
    if boundary == "reflecting" and size >= 2:
        return torch.where(coord < 0, -coord, torch.where(coord >= size, 2 * (size - 1) - coord, coord))
    if boundary in ("reflecting", "absorbing"):  # a size-1 reflecting axis replicates, as in the topology
        return coord.clamp(0, size - 1)
    raise ValueError(f"unknown boundary '{boundary}'")


def build_index(out_shape: tuple[int, int, int], offsets: torch.Tensor, boundary: str, *,
                x_halo: bool = False, has_field: bool = False) -> torch.Tensor:
    """Flat slot index ``LongTensor[n_out * S]`` into the source rows of a (slab of a) lattice.

    ``out_shape = (sx, Y, Z)`` are the cells computed. Source rows, in order: the state rows
    (``sx*Y*Z`` of them, or ``(sx+2)*Y*Z`` with ``x_halo`` — one extra plane on each X side that
    the caller fills by the boundary rule), then ``sx*Y*Z`` field rows when ``has_field``, then one
    ghost (zero) row. Slots per cell: K neighbours, own, [input]. With ``x_halo`` the X axis is
    not wrapped here (the halo planes already hold what the boundary rule says).
    """
    sx, y, z = (int(v) for v in out_shape)
    offs = offsets.detach().to("cpu", torch.long)
    k = offs.shape[0]
    n_out = sx * y * z
    px = sx + 2 if x_halo else sx
    n_state = px * y * z
    ghost = n_state + (n_out if has_field else 0)
    gx, gy, gz = torch.meshgrid(torch.arange(sx), torch.arange(y), torch.arange(z), indexing="ij")
    gx, gy, gz = (g.reshape(-1, 1) for g in (gx, gy, gz))
    nx = gx + offs[:, 0].view(1, k)
    ny = _map_axis(gy + offs[:, 1].view(1, k), y, boundary)
    nz = _map_axis(gz + offs[:, 2].view(1, k), z, boundary)
    if x_halo:
        nx = nx + 1
    else:
        nx = _map_axis(nx, sx, boundary)
    outside = (nx < 0) | (ny < 0) | (nz < 0)
    neigh = torch.where(outside, torch.full_like(nx, ghost), (nx * y + ny) * z + nz)
    own_x = gx + 1 if x_halo else gx
    slots = [neigh, (own_x * y + gy) * z + gz]
    if has_field:
        slots.append(n_state + torch.arange(n_out).view(-1, 1))
    return torch.cat(slots, dim=1).reshape(-1).contiguous()


# --------------------------------------------------------------------------------------------
# the cell maths on a gathered buffer
# --------------------------------------------------------------------------------------------


def _cell_kind(cell: Any) -> str:
    """``mlp`` / ``nca`` for the lattice's own cells (exact type: a subclass may change the maths)."""
    try:
        from cellnet_lattice.cells import MLPCell, NCACell
    except ImportError:  # pragma: no cover - the lattice plugin is a dependency
        return "generic"
    if type(cell) is MLPCell:
        return "mlp"
    if type(cell) is NCACell:
        return "nca"
    return "generic"


def first_layer(cell: Any, kind: str, k: int, c: int, has_field: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The first layer as ``(W [H, S, C], b [H])`` over the slot layout (neighbours, own, input)."""
    if kind == "mlp":
        w = cell.fc1.weight
        s = k + 2 if has_field else k + 1
        return w[:, :s * c].reshape(w.shape[0], s, c), cell.fc1.bias
    if kind == "nca":
        w1 = cell.fc1.weight  # [H, F*C + C]
        h = w1.shape[0]
        filt = cell.perception  # [F, K+1, C]; slot 0 = own
        nf = filt.shape[0]
        w_eff = torch.einsum("hfc,fsc->hsc", w1[:, :nf * c].reshape(h, nf, c), filt)  # [H, K+1, C]
        parts = [w_eff[:, 1:], w_eff[:, :1]]
        if has_field:
            parts.append(w1[:, nf * c:].reshape(h, 1, c))
        return torch.cat(parts, dim=1), cell.fc1.bias
    raise ValueError(kind)


def _slot_weight(edge_weight: torch.Tensor, slots: int, k: int) -> torch.Tensor:
    """Edge weights ``[K]`` / ``[n, K]`` padded with ones for the own/input slots → ``[S]`` / ``[n, S]``."""
    pad = edge_weight.new_ones(edge_weight.shape[:-1] + (slots - k,))
    return torch.cat([edge_weight, pad], dim=-1)


def cell_delta(buf: torch.Tensor, k: int, has_field: bool, cell: Any,
               edge_weight: torch.Tensor | None, inplace: bool, kind: str | None = None) -> torch.Tensor:
    """``buf [B, n, S, C]`` (gathered slots) → bounded ``delta [B, n, C]``.

    ``edge_weight`` is ``None``, ``[K]`` or ``[n, K]`` (rows of this buffer). ``inplace`` lets the
    function scale ``buf`` and transform intermediates in place (only when no gradient is needed).
    """
    bsz, n, s, c = buf.shape
    kind = _cell_kind(cell) if kind is None else kind
    if edge_weight is not None and edge_weight.dim() == 2:
        w = _slot_weight(edge_weight.to(buf.dtype), s, k).view(1, n, s, 1)
        buf = buf.mul_(w) if inplace else buf * w
        edge_weight = None
    if kind == "generic":
        neigh = buf[:, :, :k]
        if edge_weight is not None:
            neigh = neigh * edge_weight.to(buf.dtype).view(1, 1, k, 1)
        return cell(neigh, buf[:, :, k], buf[:, :, k + 1] if has_field else None)
    w1, b1 = first_layer(cell, kind, k, c, has_field)
    if edge_weight is not None:
        w1 = w1 * _slot_weight(edge_weight.to(w1.dtype), s, k).view(1, s, 1)
    h = torch.addmm(b1, buf.view(bsz * n, s * c), w1.reshape(w1.shape[0], s * c).t())
    h = torch.relu_(h) if inplace else torch.relu(h)
    raw = torch.addmm(cell.fc2.bias, h, cell.fc2.weight.t())
    if raw.dtype != buf.dtype:  # autocast: bound and residual in the state's precision
        raw = raw.to(buf.dtype)
    bound = cell.delta_bound
    if bound > 0:
        if inplace:
            raw = raw.div_(bound).tanh_().mul_(bound)
        else:
            raw = bound * torch.tanh(raw / bound)
    return raw.view(bsz, n, c)


def functional_step(state: torch.Tensor, field: torch.Tensor | None, index: torch.Tensor, k: int, kind: str,
                    cell: Any, edge_weight: torch.Tensor | None) -> torch.Tensor:
    """The fused step without cached buffers or in-place ops (what ``compiled`` and ``cuda`` trace).

    ``index`` comes from :func:`build_index` for the whole lattice; ``kind`` from ``_cell_kind``.
    """
    bsz, x, y, z, c = state.shape
    n = x * y * z
    has_field = field is not None
    s = k + 2 if has_field else k + 1
    rows = state.reshape(bsz, n, c)
    parts = [rows] + ([field.reshape(bsz, n, c).to(state.dtype)] if has_field else [])
    parts.append(rows.new_zeros(bsz, 1, c))
    buf = torch.cat(parts, dim=1).index_select(1, index).view(bsz, n, s, c)
    delta = cell_delta(buf, k, has_field, cell, edge_weight, inplace=False, kind=kind)
    return state + delta.reshape(state.shape)


# --------------------------------------------------------------------------------------------
# the kernel
# --------------------------------------------------------------------------------------------


def needs_grad(*tensors: torch.Tensor | None, cell: Any = None) -> bool:
    """True when autograd will record this step (so buffers must not be reused or overwritten)."""
    if not torch.is_grad_enabled():
        return False
    if any(t is not None and t.requires_grad for t in tensors):
        return True
    return cell is not None and any(p.requires_grad for p in cell.parameters())


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

    def __init__(self, reuse_buffers: bool = True, block_cells: int = 65536):
        self.reuse_buffers = reuse_buffers
        self.block_cells = int(block_cells)
        self._index: dict[tuple, torch.Tensor] = {}
        self._buffers: dict[tuple, _Buffers] = {}

    def index(self, out_shape, topology, device, *, x_halo: bool = False, has_field: bool = False) -> torch.Tensor:
        offs = topology.offsets.detach().to("cpu")
        key = (tuple(out_shape), tuple(map(tuple, offs.tolist())), topology.boundary, x_halo, has_field, str(device))
        idx = self._index.get(key)
        if idx is None:
            idx = build_index(out_shape, offs, topology.boundary, x_halo=x_halo, has_field=has_field).to(device)
            if len(self._index) > 16:
                self._index.clear()
            self._index[key] = idx
        return idx

    def step(self, state: torch.Tensor, field: torch.Tensor | None, cell: Any, topology: Any) -> torch.Tensor:
        bsz, x, y, z, c = state.shape
        n = x * y * z
        k = int(topology.offsets.shape[0])
        has_field = field is not None
        s = k + 2 if has_field else k + 1
        idx = self.index((x, y, z), topology, state.device, has_field=has_field)
        grad = needs_grad(state, field, topology.edge_weight, cell=cell)
        state_rows = state.reshape(bsz, n, c)
        kind = _cell_kind(cell)
        if grad or not self.reuse_buffers:
            parts = [state_rows] + ([field.reshape(bsz, n, c).to(state.dtype)] if has_field else [])
            parts.append(state_rows.new_zeros(bsz, 1, c))
            src = torch.cat(parts, dim=1)
            buf = src.index_select(1, idx).view(bsz, n, s, c)
            delta = cell_delta(buf, k, has_field, cell, topology.edge_weight, inplace=not grad, kind=kind)
            return state + delta.view_as(state)
        # no gradient: cell blocks of about block_cells, so the block's buffer and hidden layer stay in cache
        src = self._source(state_rows, field, n)
        # blocking is a CPU cache optimisation; on a GPU it would only multiply kernel launches
        blocked = self.block_cells > 0 and state.device.type == "cpu"
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
        self._index.clear()
        self._buffers.clear()

    def __repr__(self) -> str:
        return f"FusedKernel(reuse_buffers={self.reuse_buffers}, block_cells={self.block_cells})"


def build_fused(cfg, ctx) -> FusedKernel:
    return FusedKernel(reuse_buffers=cfg.reuse_buffers, block_cells=cfg.block_cells)
