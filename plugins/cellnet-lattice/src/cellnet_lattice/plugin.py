"""Registers the lattice plugin's parts (no model code is imported here)."""

from __future__ import annotations

from cellnet_core import hookimpl
from cellnet_lattice import config as c

_PKG = "cellnet_lattice"


@hookimpl
def cellnet_register_components(registry) -> None:
    registry.add("core", "lattice", c.LatticeCoreConfig, f"{_PKG}.core:build_lattice",
                 summary="3D cellular lattice: T synchronous steps of a learned cell (mlp, gmlp, nca) "
                         "over a 6/18/26-neighbourhood")
    registry.add("kernel", "reference", c.ReferenceKernelConfig, f"{_PKG}.kernels:build_reference",
                 summary="reference lattice step: index_select gather + cell (clear, slow; parity baseline)")
    registry.add("reshaper", "surface", c.SurfaceReshaperConfig, f"{_PKG}.reshapers:build_surface",
                 summary="learned adapters: embedding onto points of one face, read back from the opposite face")
    registry.add("reshaper", "volume", c.VolumeReshaperConfig, f"{_PKG}.reshapers:build_volume",
                 summary="learned linear projection of the embedding onto every cell×channel and back")
    registry.add("reshaper", "permuted", c.PermutedReshaperConfig, f"{_PKG}.reshapers:build_permuted",
                 summary="importance-ordered placement of the embedding's dims (explicit permutation, exact inverse)")
