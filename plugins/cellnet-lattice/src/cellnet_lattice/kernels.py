"""The ``reference`` kernel: one synchronous lattice step, written for clarity.

``step(state, field, cell, topology) = state + cell(topology.gather(state), state, field)``

Fast kernels (plugin ``cellnet-kernels``) must give the same result (parity-tested against this).
"""

from __future__ import annotations

import torch


class ReferenceKernel:
    """``state [B,X,Y,Z,C]``, ``field [B,X,Y,Z,C] | None`` → ``state + delta``."""

    name = "reference"

    def step(self, state: torch.Tensor, field: torch.Tensor | None, cell, topology) -> torch.Tensor:
        """``state + cell(topology.gather(state), state, field)``: one synchronous step, ``[B, X, Y,
        Z, C]`` in and out."""
        return state + cell(topology.gather(state), state, field)

    def __repr__(self) -> str:
        return "ReferenceKernel()"


def build_reference(cfg, ctx) -> ReferenceKernel:
    """Factory of the ``reference`` kernel."""
    return ReferenceKernel()
