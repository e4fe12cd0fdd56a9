"""The core's contract test classes, for the lattice core (each cell, several options), each
reshaper and the reference kernel — found through real entry-point discovery."""

from __future__ import annotations

import torch

from cellnet_core.testing.contracts import CoreContract, KernelContract, ReshaperContract


class TestLatticeMLP(CoreContract):
    name = "lattice"
    config = {"cell": {"name": "mlp", "hidden": 16}, "steps": 3, "kernel": "reference"}


class TestLatticeGatedMLP(CoreContract):
    name = "lattice"
    config = {"cell": {"name": "gmlp", "hidden": 8}, "steps": 3, "neighbourhood": "18", "boundary": "walls",
              "kernel": "reference"}


class TestLatticeNCA(CoreContract):
    name = "lattice"
    config = {"cell": {"name": "nca", "hidden": 16, "filters": 4}, "steps": 3, "neighbourhood": "moore",
              "boundary": "reflecting", "kernel": "reference"}


class TestLatticeAllOptions(CoreContract):
    name = "lattice"
    config = {"cell": "mlp", "steps": 4, "boundary": "absorbing", "injection": "every",
              "edge_weights": "per-cell", "fire_rate": 0.5, "tol": 1e-6, "patience": 2,
              "checkpoint_steps": True, "state_clip": 5.0,
              "plasticity": {"rule": "bcm", "rate": 0.01, "normalise": True}}


class TestLatticeAutoKernel(CoreContract):
    name = "lattice"
    config = {"cell": {"name": "mlp", "hidden": 8}, "steps": 2, "kernel": "auto", "edge_weights": "shared",
              "plasticity": {"rule": "hebbian"}}


class TestSurfaceReshaper(ReshaperContract):
    name = "surface"
    config = {"shape": [4, 4, 3], "channels": 3, "placement": "proportional", "fraction": 0.5}


class TestSurfaceReshaperRandomCustomFaces(ReshaperContract):
    name = "surface"
    config = {"shape": [5, 4, 3], "channels": 2, "placement": "random", "fraction": 0.3, "in_face": "x=0",
              "out_face": "y=-1", "out_dim": 20}


class TestVolumeReshaper(ReshaperContract):
    name = "volume"
    config = {"shape": [3, 3, 2], "channels": 2}


class TestPermutedReshaper(ReshaperContract):
    name = "permuted"
    config = {"shape": [4, 4, 3], "channels": 1, "placement": "centre"}


class TestReferenceKernel(KernelContract):
    name = "reference"

    def make_step_inputs(self, registry):
        from cellnet_lattice.cells import NCACell
        from cellnet_lattice.topology import Topology

        torch.manual_seed(0)
        topo = Topology((4, 3, 2), "moore", "walls")
        cell = NCACell(3, topo.k, 8)
        state = torch.randn(2, 4, 3, 2, 3)
        return state, state.clone(), cell, topo
