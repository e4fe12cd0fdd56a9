"""The lattice step's maths on gathered slots, shared by every fast kernel (the lowest layer of
this plugin: it imports no other kernel module).

- :func:`build_index`: the flat slot index of a (slab of a) lattice (boundary rules folded in);
- :class:`IndexCache`: those indices, cached per shape, topology, halo and field presence;
- :func:`cell_kind`: how a cell is evaluated (``mlp``, ``nca``, ``gmlp``, ``generic`` or
  ``reference``), and :class:`ReferenceFallback` for cells that only the reference step may run;
- :func:`cell_delta`, :func:`gmlp_delta`: the cell on a gathered buffer / on source rows;
- :func:`functional_step`: the whole step without caches (what ``compiled`` and ``cuda`` trace).

Layers: ``slots`` ← ``chunked`` (X-slabs) ← ``fused`` (which hands large autograd steps to
``chunked``) ← ``compiled``, ``cuda``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.nn import functional as F

from cellnet_lattice.cells import GatedMLPCell, MLPCell, NCACell
from cellnet_lattice.kernels import ReferenceKernel

log = logging.getLogger("cellnet_kernels")

GMLP_BLOCK_DIVISOR = 32  # gmlp blocks hold block_cells / 32 cells (2048 at the default: measured best)

# --------------------------------------------------------------------------------------------
# index construction
# --------------------------------------------------------------------------------------------


def map_axis(coord: torch.Tensor, size: int, boundary: str) -> torch.Tensor:
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
    ny = map_axis(gy + offs[:, 1].view(1, k), y, boundary)
    nz = map_axis(gz + offs[:, 2].view(1, k), z, boundary)
    if x_halo:
        nx = nx + 1
    else:
        nx = map_axis(nx, sx, boundary)
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


def cell_kind(cell: Any, edge_weight: torch.Tensor | None = None) -> str:
    """How the fast kernels evaluate ``cell``:

    - ``mlp`` / ``nca``: the lattice's own cells (exact type: a subclass may change the maths),
      first layer as one matmul over the slot buffer;
    - ``gmlp``: the gated MLP cell, projected before the gather (only without edge weights, which
      scale the neighbour *states*, before the projection's bias and GELU);
    - ``generic``: any other cell that declares ``rowwise = True`` (third-party cells built on
      :class:`cellnet_lattice.cells.Cell` do), called on views of the slot buffer;
    - ``reference``: a cell that does not declare ``rowwise`` (its update of one cell may depend on
      other cells, so blocks and slabs could change its numbers): the kernels run the reference
      step for it (:class:`ReferenceFallback`).
    """
    if type(cell) is MLPCell:
        return "mlp"
    if type(cell) is NCACell:
        return "nca"
    if type(cell) is GatedMLPCell and edge_weight is None:
        return "gmlp"
    return "generic" if getattr(cell, "rowwise", False) is True else "reference"


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
    kind = cell_kind(cell) if kind is None else kind
    if edge_weight is not None and edge_weight.dim() == 2:
        w = _slot_weight(edge_weight.to(buf.dtype), s, k).view(1, n, s, 1)
        buf = buf.mul_(w) if inplace else buf * w
        edge_weight = None
    if kind not in ("mlp", "nca"):
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
    return _bound(raw, cell.delta_bound, inplace).view(bsz, n, c)


def _bound(raw: torch.Tensor, bound: float, inplace: bool) -> torch.Tensor:
    if bound <= 0:
        return raw
    return raw.div_(bound).tanh_().mul_(bound) if inplace else bound * torch.tanh(raw / bound)


def gmlp_delta(src: torch.Tensor, index: torch.Tensor, n: int, k: int, has_field: bool, n_state: int, cell: Any,
               *, block: int = 0, inplace: bool = False) -> torch.Tensor:
    """The ``gmlp`` cell on source rows, projecting *before* gathering → bounded ``delta [B, n, C]``.

    The cell applies ``GELU(proj(·))`` to each of a cell's K neighbours, so every cell's projection
    is needed by K cells: computed once per source row here (``[R, B, 2H]``) and gathered, instead
    of K times on gathered states. The ghost row (a ``walls`` neighbour outside) projects to
    ``GELU(proj(0))``, exactly what the cell computes for the zeros it reads. Rows are laid out
    cell-major with the batch inside (``[R, B, ·]``) and gathered slot-major, so the K×K spatial
    mixing is one ``addmm`` over ``[K, m·B·H]`` with no transposing copy. ``src [B, R, C]`` and
    ``index`` as in :func:`build_index`; ``n_state`` state rows come first, the ghost row last.
    ``block`` > 0 processes that many cells at a time (CPU cache); 0: all at once.
    """
    bsz, rows, c = src.shape
    s = k + 2 if has_field else k + 1
    hid = cell.hidden
    src_t = src.transpose(0, 1).contiguous()  # [R, B, C]
    ghost = rows - 1
    proj_rows = src_t[:n_state + 1] if ghost == n_state else torch.cat([src_t[:n_state], src_t[ghost:]])
    w, b = cell.proj.weight, cell.proj.bias
    pu = F.gelu(F.linear(proj_rows, w[:hid], b[:hid]))  # [n_state + 1, B, H]
    pv = F.gelu(F.linear(proj_rows, w[hid:], b[hid:]))
    slots = index.view(n, s)
    neigh = torch.where(slots[:, :k] == ghost, n_state, slots[:, :k])
    w_own = cell.own_in.weight
    mix_bias = cell.mix_bias.view(k, 1)
    blk = n if block <= 0 else max(1, block)
    out = src_t.new_empty(n, bsz, c) if inplace else None
    pieces = []
    for r0 in range(0, n, blk):
        r1 = min(n, r0 + blk)
        m = r1 - r0
        ki = neigh[r0:r1].t().reshape(-1)  # slot-major: [K * m]
        u = pu.index_select(0, ki).view(k, m * bsz * hid)
        v = pv.index_select(0, ki).view(k, m * bsz * hid)
        mixed = torch.addmm(mix_bias, cell.mix, v)  # v'_j = sum_k mix[j, k] v_k + bias_j
        g = (mixed.mul_(u) if inplace else mixed * u).sum(0).view(m, bsz, hid) / k
        o = F.linear(src_t.index_select(0, slots[r0:r1, k]), w_own[:, :c], cell.own_in.bias)
        if has_field:
            o = o + F.linear(src_t.index_select(0, slots[r0:r1, k + 1]), w_own[:, c:])
        raw = F.linear(F.gelu(g + o), cell.out.weight, cell.out.bias)
        if raw.dtype != src.dtype:  # autocast: bound and residual in the state's precision
            raw = raw.to(src.dtype)
        raw = _bound(raw, cell.delta_bound, inplace)
        if out is not None:
            out[r0:r1] = raw
        else:
            pieces.append(raw)
    return (out if out is not None else torch.cat(pieces)).transpose(0, 1)


def source_rows(state_rows: torch.Tensor, field: torch.Tensor | None) -> torch.Tensor:
    """``src [B, R, C]``: the state rows, the field's rows (when given), one zero ghost row."""
    bsz, n, c = state_rows.shape
    parts = [state_rows] + ([field.reshape(bsz, n, c).to(state_rows.dtype)] if field is not None else [])
    return torch.cat(parts + [state_rows.new_zeros(bsz, 1, c)], dim=1)


def functional_step(state: torch.Tensor, field: torch.Tensor | None, index: torch.Tensor, k: int, kind: str,
                    cell: Any, edge_weight: torch.Tensor | None) -> torch.Tensor:
    """The fused step without cached buffers or in-place ops (what ``compiled`` and ``cuda`` trace).

    ``index`` comes from :func:`build_index` for the whole lattice; ``kind`` from :func:`cell_kind`
    (never ``reference``: the caller runs the reference step for those cells).
    """
    bsz, x, y, z, c = state.shape
    n = x * y * z
    has_field = field is not None
    s = k + 2 if has_field else k + 1
    rows = state.reshape(bsz, n, c)
    src = source_rows(rows, field)
    if kind == "gmlp" and edge_weight is None:
        return (rows + gmlp_delta(src, index, n, k, has_field, n, cell)).view(state.shape)
    buf = src.index_select(1, index).view(bsz, n, s, c)
    delta = cell_delta(buf, k, has_field, cell, edge_weight, inplace=False, kind=kind)
    return state + delta.reshape(state.shape)


def needs_grad(*tensors: torch.Tensor | None, cell: Any = None) -> bool:
    """True when autograd will record this step (so buffers must not be reused or overwritten)."""
    if not torch.is_grad_enabled():
        return False
    if any(t is not None and t.requires_grad for t in tensors):
        return True
    return cell is not None and any(p.requires_grad for p in cell.parameters())


class IndexCache:
    """The gather indices of :func:`build_index`, cached per (shape, offsets, boundary, halo, field
    present, device); at most 17 kept."""

    def __init__(self) -> None:
        self._index: dict[tuple, torch.Tensor] = {}

    def get(self, out_shape, topology, device, *, x_halo: bool = False, has_field: bool = False) -> torch.Tensor:
        """The index ``[N·S]`` for this (slab of a) lattice, built on first use."""
        offs = topology.offsets.detach().to("cpu")
        key = (tuple(out_shape), tuple(map(tuple, offs.tolist())), topology.boundary, x_halo, has_field, str(device))
        idx = self._index.get(key)
        if idx is None:
            idx = build_index(out_shape, offs, topology.boundary, x_halo=x_halo, has_field=has_field).to(device)
            if len(self._index) > 16:
                self._index.clear()
            self._index[key] = idx
        return idx

    def clear(self) -> None:
        """Drop every cached index."""
        self._index.clear()


class ReferenceFallback:
    """The ``reference`` step for cells a fast kernel must not evaluate in its own way (kind
    ``reference`` of :func:`cell_kind`), with one logged line per kernel and cell type."""

    def __init__(self, kernel: str):
        self.kernel = kernel
        self._reference = ReferenceKernel()
        self._told: set[type] = set()

    def step(self, state: torch.Tensor, field: torch.Tensor | None, cell: Any, topology: Any) -> torch.Tensor:
        """``state + cell(topology.gather(state), state, field)``, exactly the reference kernel."""
        if type(cell) not in self._told:
            self._told.add(type(cell))
            log.warning("kernel '%s': cell %s does not declare rowwise = True, so its update may depend on other "
                        "cells; running the reference step for it", self.kernel, type(cell).__name__)
        return self._reference.step(state, field, cell, topology)
