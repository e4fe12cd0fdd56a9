"""The ``compiled`` kernel: the fused step (:func:`cellnet_kernels.slots.functional_step`) under
``torch.compile``. A cell that does not declare ``rowwise = True`` runs the reference step (logged
once).

Where compilation is not available — no C/C++ compiler for the CPU backend, no ``triton`` for
CUDA, a Python version dynamo does not support, or the first compile fails — the kernel logs the
reason once, records it in ``fallback_reason`` and runs the ``fused`` step instead (same maths).
An error that the fused step raises too (bad shapes, say) is raised, not hidden.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from typing import Any

import torch

from cellnet_kernels.fused import FusedKernel
from cellnet_kernels.slots import ReferenceFallback, cell_kind, functional_step

log = logging.getLogger("cellnet_kernels")


def compile_unavailable_reason(device_type: str = "cpu") -> str | None:
    """Why ``torch.compile`` cannot be used here (``None`` when it can)."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    try:
        import torch._dynamo as dynamo

        if hasattr(dynamo, "is_dynamo_supported") and not dynamo.is_dynamo_supported():
            return "torch.compile (dynamo) does not support this Python/platform"
    except Exception as exc:  # pragma: no cover - broken installs
        return f"torch._dynamo cannot be imported: {exc}"
    if device_type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "the CUDA inductor backend needs triton, which is not installed"
        return None
    candidates = [os.environ.get("CXX"), "g++", "clang++", "c++", "cl"]
    if not any(c and shutil.which(c) for c in candidates):
        return "no C++ compiler found (looked for $CXX, g++, clang++, c++, cl); inductor needs one on CPU"
    return None


def _raise_recompile_limit(limit: int) -> None:
    """Every (cell type, field present, grad mode, shape) is a separate compiled variant of the one
    ``functional_step``; past dynamo's limit (8 by default) it silently runs eagerly."""
    import torch._dynamo.config as dcfg

    for attr in ("recompile_limit", "cache_size_limit"):  # the name changed across torch versions
        if hasattr(dcfg, attr):
            if getattr(dcfg, attr) < limit:
                setattr(dcfg, attr, limit)
            return


class CompiledKernel:
    """``state [B,X,Y,Z,C]``, ``field | None`` → ``state + delta`` via a compiled fused step."""

    name = "compiled"

    def __init__(self, mode: str = "default", dynamic: bool | None = None, recompile_limit: int = 64):
        self.mode, self.dynamic, self.recompile_limit = mode, dynamic, int(recompile_limit)
        self.fallback_reason: str | None = None
        self._fused = FusedKernel()
        self._fallback = ReferenceFallback(self.name)
        self._fn = None
        self._checked: set[str] = set()

    def _compiled_for(self, device_type: str):
        if self.fallback_reason is not None:
            return None
        if device_type not in self._checked:
            self._checked.add(device_type)
            reason = compile_unavailable_reason(device_type)
            if reason is not None:
                self._fall_back(reason)
                return None
        if self._fn is None:
            _raise_recompile_limit(self.recompile_limit)
            mode = None if self.mode == "default" else self.mode
            self._fn = torch.compile(functional_step, mode=mode, dynamic=self.dynamic)
        return self._fn

    def _fall_back(self, reason: str) -> None:
        self.fallback_reason = reason
        self._fn = None
        log.warning("kernel 'compiled': %s; running the 'fused' kernel instead", reason)

    def step(self, state: torch.Tensor, field: torch.Tensor | None, cell: Any, topology: Any) -> torch.Tensor:
        """One step through the compiled function, or through ``fused`` where compiling is not
        possible (reason logged once)."""
        kind = cell_kind(cell, topology.edge_weight)
        if kind == "reference":  # a cell that only the reference step may run (logged once)
            return self._fallback.step(state, field, cell, topology)
        fn = self._compiled_for(state.device.type)
        if fn is None:
            return self._fused.step(state, field, cell, topology)
        k = int(topology.offsets.shape[0])
        idx = self._fused.index(tuple(state.shape[1:4]), topology, state.device, has_field=field is not None)
        try:
            return fn(state, field, idx, k, kind, cell, topology.edge_weight)
        except Exception as exc:
            out = self._fused.step(state, field, cell, topology)  # raises too when the inputs are at fault
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            self._fall_back(f"torch.compile failed ({type(exc).__name__}: {first})")
            return out

    def __repr__(self) -> str:
        return f"CompiledKernel(mode='{self.mode}', dynamic={self.dynamic}, fallback={self.fallback_reason!r})"


def build_compiled(cfg, ctx) -> CompiledKernel:
    """Factory of the ``compiled`` kernel."""
    return CompiledKernel(mode=cfg.mode, dynamic=cfg.dynamic, recompile_limit=cfg.recompile_limit)
