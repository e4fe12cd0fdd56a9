"""Shared helpers for the lattice tests."""

from __future__ import annotations

import pytest
import torch


def randomise_last_layer(core, std: float = 0.3, seed: int = 1) -> None:
    """Give the zero-initialised last layer random weights so the lattice does something."""
    g = torch.Generator().manual_seed(seed)
    cell = core.cell
    last = {"mlp": "fc2", "nca": "fc2", "gmlp": "out"}[cell.name]
    layer = getattr(cell, last)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * std)
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * std * 0.1)


@pytest.fixture
def randomise():
    return randomise_last_layer


@pytest.fixture
def make_core():
    from cellnet_lattice.cells import CELLS
    from cellnet_lattice.core import LatticeCore
    from cellnet_lattice.kernels import ReferenceKernel
    from cellnet_lattice.topology import Topology

    def make(shape=(4, 4, 4), channels=4, cell="mlp", hidden=16, neighbourhood="von-neumann",
             boundary="periodic", seed=0, **kw):
        torch.manual_seed(seed)
        topo = Topology(shape, neighbourhood, boundary)
        c = CELLS[cell](channels, topo.k, hidden)
        return LatticeCore(shape, channels, c, topo, ReferenceKernel(), **kw)

    return make
