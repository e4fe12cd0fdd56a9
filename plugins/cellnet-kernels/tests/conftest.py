"""Shared helpers for the kernel tests: tiny random lattice problems built from the real
``cellnet_lattice`` topology and cells."""

from __future__ import annotations

import pytest
import torch


def make_problem(cell_name: str, neighbourhood: str, boundary: str, *, shape=(4, 3, 2), channels: int = 3,
                 hidden: int = 5, batch: int = 2, edge: str | None = None, field: bool = True, seed: int = 0):
    """``(state, field, cell, topology)`` with a cell whose zero-initialised last layer is made
    random (otherwise every delta is 0 and parity would be trivial)."""
    from cellnet_lattice.cells import CELLS
    from cellnet_lattice.topology import Topology

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    topo = Topology(shape, neighbourhood, boundary)
    cell = CELLS[cell_name](channels, topo.k, hidden)
    last = cell.out if cell_name == "gmlp" else cell.fc2
    with torch.no_grad():
        last.weight.copy_(torch.randn(last.weight.shape, generator=g) * 0.3)
        last.bias.copy_(torch.randn(last.bias.shape, generator=g) * 0.03)
    n = topo.num_cells
    if edge == "shared":
        topo.edge_weight = torch.rand(topo.k, generator=g) + 0.5
    elif edge == "per-cell":
        topo.edge_weight = torch.rand(n, topo.k, generator=g) + 0.5
    state = torch.randn(batch, *shape, channels, generator=g)
    inp = torch.randn(batch, *shape, channels, generator=g) if field else None
    return state, inp, cell, topo


def step_and_grads(kernel, state, field, cell, topo):
    """One step with autograd: output and gradients of a fixed loss w.r.t. the state, the field,
    the edge weights (when set) and every cell parameter."""
    state = state.clone().requires_grad_(True)
    field = None if field is None else field.clone().requires_grad_(True)
    w = topo.edge_weight
    if w is not None:
        topo.edge_weight = w.detach().clone().requires_grad_(True)
    out = kernel.step(state, field, cell, topo)
    loss = (out * torch.linspace(-1, 1, out.shape[-1], device=out.device)).pow(2).sum()
    wrt = [state] + ([field] if field is not None else []) + ([topo.edge_weight] if w is not None else [])
    wrt += list(cell.parameters())
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    topo.edge_weight = w
    return out.detach(), [g if g is not None else torch.zeros_like(t) for g, t in zip(grads, wrt)]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny lattices: one thread is faster than two (and kinder to a shared machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def problem():
    return make_problem
