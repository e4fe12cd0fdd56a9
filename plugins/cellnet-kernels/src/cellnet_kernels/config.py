"""Configs of the kernels (no torch import here: listing and validating stay cheap).

The lattice core builds its kernel by name (``core.kernel: fused``), so every option below has a
default that is right for that use; build a kernel with options through the registry
(``registry.build("kernel", {"name": "chunked", "slab": 8}, ctx)``) when driving it directly.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from cellnet_core.config import ComponentConfig


class FusedKernelConfig(ComponentConfig):
    """Channels-last fused step: one index gather into a reused buffer feeding one matmul."""

    name: Literal["fused"] = "fused"
    reuse_buffers: bool = Field(True, description="keep the gather buffers between steps when shapes match "
                                                  "and no gradient is needed")
    block_cells: int = Field(65536, ge=0, le=1 << 31,
                             description="without gradients, compute about this many cells (batch included) "
                                         "at a time so that the gather buffer and hidden layer stay in cache; "
                                         "0: the whole lattice at once (always so on a GPU)")
    grad_slab_cells: int = Field(32768, ge=0, le=1 << 31,
                                 description="with autograd on a CPU, a lattice of more cells than this (batch "
                                             "included) is computed in X-slabs of about this many cells with a "
                                             "1-plane halo, as `chunked` does (smaller working sets; same "
                                             "result); 0: never")


class ChunkedKernelConfig(ComponentConfig):
    """The fused step over X-slabs with a 1-cell halo: bounded scratch memory for huge lattices."""

    name: Literal["chunked"] = "chunked"
    slab: int = Field(0, ge=0, le=1_000_000,
                      description="X-planes per slab; 0: auto (about `slab_cells` cells per slab)")
    slab_cells: int = Field(262_144, ge=1, le=1 << 31,
                            description="target cells per slab when slab is 0 (auto)")


class CompiledKernelConfig(ComponentConfig):
    """The fused step under torch.compile; falls back to fused (with the reason logged) where
    compilation is not available."""

    name: Literal["compiled"] = "compiled"
    mode: Literal["default", "reduce-overhead", "max-autotune"] = Field(
        "default", description="torch.compile mode")
    dynamic: Optional[bool] = Field(
        None, description="dynamic shapes: null (torch's default: static first, dynamic after a shape "
                          "change), true (dynamic from the start) or false (one compile per shape)")
    recompile_limit: int = Field(64, ge=8, le=4096,
                                 description="raise dynamo's per-function recompile limit to at least this "
                                             "(each cell type, field present/absent and grad mode is a variant)")


class CudaKernelConfig(ComponentConfig):
    """GPU step: the fused maths under optional bf16/fp16 autocast, replayed from CUDA graphs in
    inference to remove per-step launch overhead."""

    name: Literal["cuda"] = "cuda"
    amp: Literal["none", "bf16", "fp16"] = Field(
        "bf16", description="autocast dtype of the matmuls (none: float32 throughout); the state stays float32")
    cuda_graphs: bool = Field(True, description="capture the step once per shape and replay it when no "
                                                "gradient is needed")
    max_graphs: int = Field(8, ge=1, le=1024, description="at most this many captured shapes are kept")
