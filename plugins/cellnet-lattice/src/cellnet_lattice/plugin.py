"""Registers the lattice plugin's parts and its ``viz`` command (no model code is imported here)."""

from __future__ import annotations

from cellnet_core import hookimpl
from cellnet_lattice import config as c

_PKG = "cellnet_lattice"


@hookimpl
def cellnet_register_components(registry) -> None:
    """Register the ``lattice`` core, its cells, the ``reference`` kernel, the reshapers and the pair
    scorers."""
    registry.add("core", "lattice", c.LatticeCoreConfig, f"{_PKG}.core:build_lattice",
                 summary="3D cellular lattice: T synchronous steps of a learned cell (any registered cell) "
                         "over a 6/18/26-neighbourhood")
    registry.add("cell", "mlp", c.MLPCellConfig, f"{_PKG}.cells:build_mlp",
                 summary="MLP over concat(neighbours, own, input) → hidden → C (last layer zero: starts as identity)")
    registry.add("cell", "gmlp", c.GatedMLPCellConfig, f"{_PKG}.cells:build_gmlp",
                 summary="gated MLP: neighbour tokens gated by a learned K×K spatial mixing (gMLP's gating unit)")
    registry.add("cell", "nca", c.NCACellConfig, f"{_PKG}.cells:build_nca",
                 summary="Growing-NCA style: learned depthwise perception filters over the neighbourhood, then an MLP")
    registry.add("kernel", "reference", c.ReferenceKernelConfig, f"{_PKG}.kernels:build_reference",
                 summary="reference lattice step: index_select gather + cell (clear, slow; parity baseline)")
    registry.add("reshaper", "surface", c.SurfaceReshaperConfig, f"{_PKG}.reshapers:build_surface",
                 summary="learned adapters: embedding onto points of one face, read back from the opposite face")
    registry.add("reshaper", "volume", c.VolumeReshaperConfig, f"{_PKG}.reshapers:build_volume",
                 summary="learned linear projection of the embedding onto every cell×channel and back")
    registry.add("reshaper", "permuted", c.PermutedReshaperConfig, f"{_PKG}.reshapers:build_permuted",
                 summary="importance-ordered placement of the embedding's dims (explicit permutation, exact inverse)")
    registry.add("reshaper", "pair-faces", c.PairFacesReshaperConfig, f"{_PKG}.pair:build_pair_faces",
                 summary="pair scorer: question embedding on one face, candidate on the opposite face, "
                         "score read from the lattice (starts at the identity cosine)")
    registry.add("reshaper", "interaction-grid", c.InteractionGridReshaperConfig,
                 f"{_PKG}.pair:build_interaction_grid",
                 summary="pair scorer on token states: question × candidate token grid (cosine, exact match) "
                         "on a plane; the lattice grows phrase matches")
    registry.add("reshaper", "pair-mlp", c.PairMLPReshaperConfig, f"{_PKG}.pair:build_pair_mlp",
                 summary="baseline pair scorer without a lattice (core: identity): cos + MLP([q, c, q⊙c, |q−c|])")
    registry.add("core", "conv-grid", c.ConvGridCoreConfig, f"{_PKG}.pair:build_conv_grid",
                 summary="baseline core for interaction-grid: residual 2D convolutions of the lattice cell's size")
    registry.add("reshaper", "context-planes", c.ContextPlanesReshaperConfig,
                 f"{_PKG}.context:build_context_planes",
                 summary="conversation context: the last k turns on k z-planes (an adapter each), the next "
                         "turn read from the latest turn's plane (starts at the identity of the last turn)")


@hookimpl
def cellnet_register_commands(cli) -> None:
    """Add ``cellnet viz`` (pictures of a lattice run's state)."""
    from cellnet_lattice.commands import EXAMPLES, HELP, configure_viz, run_viz

    cli.add_command("viz", help=HELP, configure=configure_viz, run=run_viz, examples=EXAMPLES)
