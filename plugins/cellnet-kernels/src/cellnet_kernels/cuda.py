"""The ``cuda`` kernel: the fused maths on a GPU, with bf16/fp16 autocast and CUDA-graph replay.

- **Autocast** (``amp``): the matmuls run in bf16 (default) or fp16; the gather, the soft bound's
  input and the residual add stay float32 (the state never leaves float32, so long rollouts do
  not accumulate half-precision rounding in the state itself). ``amp: none`` is exact float32 and
  is what the parity tests compare against ``reference``.
- **CUDA graphs** (``cuda_graphs``): a small lattice step is a dozen tiny kernels whose launch
  overhead dominates. When no gradient is needed the step is captured once per (shape, dtype,
  cell, field present, edge-weight layout) with :class:`torch.cuda.CUDAGraph` and replayed: the
  inputs are copied into the graph's static tensors, the graph replays, and the output is cloned
  (callers may keep states across steps). Parameters are read from their own memory, so an
  optimiser's in-place update is seen by the next replay; a cell whose parameters are *replaced*
  (new tensors) gets a new capture (the key holds the parameters' data pointers). Third-party
  cells (``generic`` in :func:`cellnet_kernels.slots.cell_kind`) are never captured: the fused maths
  run eagerly for them; a cell without ``rowwise = True`` runs the reference step (logged once).
  Training steps (autograd on) run the fused maths eagerly under autocast.

Building this kernel on a machine without CUDA raises :class:`MissingDependencyError` (a
:class:`CellnetError`: one readable line, exit code 2 from the CLI).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import torch

from cellnet_core.errors import MissingDependencyError
from cellnet_kernels.fused import FusedKernel
from cellnet_kernels.slots import ReferenceFallback, cell_kind, functional_step, needs_grad

log = logging.getLogger("cellnet_kernels")

_AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cuda_unavailable_reason() -> str | None:
    """Why the ``cuda`` kernel cannot run here, or ``None`` when a CUDA device is available."""
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, but no device"
        return (f"kernel 'cuda' needs a CUDA GPU, and torch.cuda.is_available() is False here "
                f"(torch {torch.__version__}: {build}); use kernel: fused (or auto)")
    return None


class _Graph:
    """One captured step with its static input/output tensors."""

    def __init__(self, graph, state, field, weight, out):
        self.graph, self.state, self.field, self.weight, self.out = graph, state, field, weight, out

    def run(self, state, field, weight) -> torch.Tensor:
        self.state.copy_(state)
        if self.field is not None:
            self.field.copy_(field)
        if self.weight is not None:
            self.weight.copy_(weight)
        self.graph.replay()
        return self.out.clone()


class CudaKernel:
    """``state [B,X,Y,Z,C]`` on a CUDA device → ``state + delta`` (see module doc)."""

    name = "cuda"

    def __init__(self, amp: str = "bf16", cuda_graphs: bool = True, max_graphs: int = 8):
        reason = cuda_unavailable_reason()
        if reason is not None:
            raise MissingDependencyError(reason)
        self.amp, self.cuda_graphs, self.max_graphs = amp, bool(cuda_graphs), int(max_graphs)
        self.amp_dtype = _AMP[amp]
        if self.amp_dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
            log.warning("kernel 'cuda': this GPU has no bf16 support; using fp16 autocast instead")
            self.amp_dtype = torch.float16
        self._fused = FusedKernel()
        self._fallback = ReferenceFallback(self.name)
        self._graphs: OrderedDict[tuple, _Graph] = OrderedDict()

    # -- the maths ------------------------------------------------------------------------------
    def _eager(self, state, field, idx, k, kind, cell, weight) -> torch.Tensor:
        if self.amp_dtype is None:
            return functional_step(state, field, idx, k, kind, cell, weight)
        # cache_enabled=False: autocast's weight-cast cache must not outlive a graph capture
        with torch.autocast("cuda", dtype=self.amp_dtype, cache_enabled=False):
            out = functional_step(state, field, idx, k, kind, cell, weight)
        return out.to(state.dtype)

    def step(self, state: torch.Tensor, field: torch.Tensor | None, cell: Any, topology: Any) -> torch.Tensor:
        """One step on the GPU with autocast, replayed from a CUDA graph when no gradient is needed;
        a CPU state is a clear error."""
        if state.device.type != "cuda":
            raise MissingDependencyError(
                f"kernel 'cuda' got a state on '{state.device}'; put the pipeline on a GPU (device: cuda) "
                "or use kernel: fused")
        k = int(topology.offsets.shape[0])
        kind = cell_kind(cell, topology.edge_weight)
        if kind == "reference":  # a cell that only the reference step may run (logged once)
            return self._fallback.step(state, field, cell, topology)
        idx = self._fused.index(tuple(state.shape[1:4]), topology, state.device, has_field=field is not None)
        weight = topology.edge_weight
        # a third-party cell may hold host-side logic a captured graph would freeze: run it eagerly
        if not self.cuda_graphs or kind == "generic" or needs_grad(state, field, weight, cell=cell):
            return self._eager(state, field, idx, k, kind, cell, weight)
        key = (tuple(state.shape), state.dtype, state.device.index, field is not None,
               None if field is None else field.dtype, None if weight is None else tuple(weight.shape),
               id(cell), kind, k, tuple(p.data_ptr() for p in cell.parameters()), idx.data_ptr())
        g = self._graphs.get(key)
        if g is None:
            g = self._capture(state, field, idx, k, kind, cell, weight)
            self._graphs[key] = g
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        return g.run(state, field, weight)

    def _capture(self, state, field, idx, k, kind, cell, weight) -> _Graph:
        static_state = state.detach().clone()
        static_field = None if field is None else field.detach().clone()
        static_weight = None if weight is None else weight.detach().clone()
        side = torch.cuda.Stream(device=state.device)
        side.wait_stream(torch.cuda.current_stream(state.device))
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(2):  # warm-up: lazy inits and allocator pools outside the capture
                self._eager(static_state, static_field, idx, k, kind, cell, static_weight)
        torch.cuda.current_stream(state.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            static_out = self._eager(static_state, static_field, idx, k, kind, cell, static_weight)
        log.info("kernel 'cuda': captured a CUDA graph for state %s", list(state.shape))
        return _Graph(graph, static_state, static_field, static_weight, static_out)

    def __repr__(self) -> str:
        return f"CudaKernel(amp='{self.amp}', cuda_graphs={self.cuda_graphs})"


def build_cuda(cfg, ctx) -> CudaKernel:
    """Factory of the ``cuda`` kernel."""
    return CudaKernel(amp=cfg.amp, cuda_graphs=cfg.cuda_graphs, max_graphs=cfg.max_graphs)
