"""Registers the kernels (no torch or model code is imported here)."""

from __future__ import annotations

from cellnet_core import hookimpl
from cellnet_kernels import config as c

_PKG = "cellnet_kernels"


@hookimpl
def cellnet_register_components(registry) -> None:
    """Register the ``fused``, ``chunked``, ``compiled`` and ``cuda`` kernels."""
    registry.add("kernel", "fused", c.FusedKernelConfig, f"{_PKG}.fused:build_fused",
                 summary="channels-last fused step: one index gather into a reused buffer, first layer "
                         "as one matmul (CPU and GPU)")
    registry.add("kernel", "chunked", c.ChunkedKernelConfig, f"{_PKG}.chunked:build_chunked",
                 summary="fused step over X-slabs with a 1-cell halo: bounded memory for huge lattices")
    registry.add("kernel", "compiled", c.CompiledKernelConfig, f"{_PKG}.compiled:build_compiled",
                 summary="fused step under torch.compile (falls back to fused, logged, where unsupported)")
    registry.add("kernel", "cuda", c.CudaKernelConfig, f"{_PKG}.cuda:build_cuda",
                 summary="GPU step: fused maths, bf16/fp16 autocast, CUDA-graph replay in inference")
