"""Every kernel against ``reference``: forward and gradients, for every cell type,
neighbourhood and boundary (tiny lattices), with and without an injected field and edge weights."""

from __future__ import annotations

import itertools

import pytest
import torch

from cellnet_lattice.kernels import ReferenceKernel

from cellnet_kernels.chunked import ChunkedKernel
from cellnet_kernels.fused import FusedKernel

CELLS = ("mlp", "gmlp", "nca")
NEIGHBOURHOODS = ("von-neumann", "18", "moore")
BOUNDARIES = ("periodic", "walls", "reflecting", "absorbing")
KERNELS = {
    "fused": lambda: FusedKernel(),
    "fused-blocked": lambda: FusedKernel(block_cells=5),  # 2 cells × batch 2 per block: many uneven blocks
    "fused-grad-slabs": lambda: FusedKernel(grad_slab_cells=7),  # with autograd: 1-plane slabs with halos
    "chunked": lambda: ChunkedKernel(slab=2),  # slabs of 2, 2, 1 planes: uneven last slab included
}


def _conftest():
    import importlib.util
    import pathlib
    import sys

    name = "cellnet_kernels_tests_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, pathlib.Path(__file__).with_name("conftest.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        sys.modules[name] = mod
    return sys.modules[name]


@pytest.mark.parametrize("kernel_name", list(KERNELS))
@pytest.mark.parametrize("cell_name,neighbourhood,boundary", list(itertools.product(CELLS, NEIGHBOURHOODS, BOUNDARIES)))
def test_forward_and_gradients_match_reference(kernel_name, cell_name, neighbourhood, boundary):
    h = _conftest()
    ref = ReferenceKernel()
    kernel = KERNELS[kernel_name]()
    # the variants rotate with the case so that every combination is covered without a 4x blow-up
    case = CELLS.index(cell_name) + NEIGHBOURHOODS.index(neighbourhood) + BOUNDARIES.index(boundary)
    edge = (None, "shared", "per-cell")[case % 3]
    with_field = case % 2 == 0
    state, field, cell, topo = h.make_problem(cell_name, neighbourhood, boundary, edge=edge, field=with_field,
                                              shape=(5, 3, 2))
    with torch.no_grad():
        want = ref.step(state, field, cell, topo)
        got = kernel.step(state, field, cell, topo)
        again = kernel.step(state, field, cell, topo)  # reused buffers give the same answer
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(again, want)
    out_ref, g_ref = h.step_and_grads(ref, state, field, cell, topo)
    out, g = h.step_and_grads(kernel, state, field, cell, topo)
    torch.testing.assert_close(out, out_ref)
    assert len(g) == len(g_ref)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("edge", [None, "shared", "per-cell"])
@pytest.mark.parametrize("with_field", [False, True])
@pytest.mark.parametrize("cell_name", CELLS)
def test_edge_weight_and_field_variants(cell_name, edge, with_field):
    h = _conftest()
    state, field, cell, topo = h.make_problem(cell_name, "18", "walls", edge=edge, field=with_field)
    ref = ReferenceKernel()
    out_ref, g_ref = h.step_and_grads(ref, state, field, cell, topo)
    with torch.no_grad():
        for kernel in (FusedKernel(reuse_buffers=False), ChunkedKernel(slab=1)):
            torch.testing.assert_close(kernel.step(state, field, cell, topo), out_ref)
    for kernel in (FusedKernel(), ChunkedKernel(slab=2)):
        out, g = h.step_and_grads(kernel, state, field, cell, topo)
        torch.testing.assert_close(out, out_ref)
        for a, b in zip(g, g_ref):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_chunked_matches_unchunked_over_many_steps(boundary):
    """A 10-step rollout: chunked (several slab sizes, auto included) equals fused equals reference."""
    h = _conftest()
    state, field, cell, topo = h.make_problem("nca", "moore", boundary, shape=(7, 4, 3), edge="per-cell",
                                              batch=1, channels=4, hidden=8)
    kernels = [ReferenceKernel(), FusedKernel(), ChunkedKernel(slab=2), ChunkedKernel(slab=3),
               ChunkedKernel(slab=0, slab_cells=13)]
    outs = []
    with torch.no_grad():
        for k in kernels:
            s = state
            for t in range(10):
                s = k.step(s, field if t == 0 else None, cell, topo)
            outs.append(s)
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0])


def test_size_one_axes_and_single_slab():
    """Degenerate shapes: size-1 axes (reflecting behaves as absorbing there) and one slab."""
    h = _conftest()
    for shape in [(1, 1, 1), (1, 3, 1), (2, 1, 3)]:
        for boundary in BOUNDARIES:
            state, field, cell, topo = h.make_problem("mlp", "moore", boundary, shape=shape)
            with torch.no_grad():
                want = ReferenceKernel().step(state, field, cell, topo)
                for k in (FusedKernel(), ChunkedKernel(slab=1), ChunkedKernel(slab=5)):
                    torch.testing.assert_close(k.step(state, field, cell, topo), want)


def test_generic_cell_falls_back_to_calling_the_cell():
    """A cell subclass with its own maths must not take the mlp fast path."""
    from cellnet_lattice.cells import MLPCell

    class DoubledMLP(MLPCell):
        def raw_delta(self, neigh, own, inp):
            return 2 * super().raw_delta(neigh, own, inp)

    h = _conftest()
    state, field, base, topo = h.make_problem("mlp", "von-neumann", "periodic", edge="shared")
    cell = DoubledMLP(base.channels, base.k, base.hidden)
    cell.load_state_dict(base.state_dict())
    with torch.no_grad():
        want = ReferenceKernel().step(state, field, cell, topo)
        torch.testing.assert_close(FusedKernel().step(state, field, cell, topo), want)
        torch.testing.assert_close(ChunkedKernel(slab=2).step(state, field, cell, topo), want)
        assert not torch.allclose(want, ReferenceKernel().step(state, field, base, topo))


def test_reused_buffers_do_not_alias_outputs():
    """States returned by earlier steps stay intact when later steps reuse the buffers, and an
    in-place change of the field is seen by the next step."""
    h = _conftest()
    state, field, cell, topo = h.make_problem("gmlp", "von-neumann", "periodic")
    k = FusedKernel()
    with torch.no_grad():
        a = k.step(state, field, cell, topo)
        a_copy = a.clone()
        b = k.step(a, field, cell, topo)
        torch.testing.assert_close(a, a_copy)
        field.mul_(-1)  # same tensor, new contents
        torch.testing.assert_close(k.step(b, field, cell, topo), ReferenceKernel().step(b, field, cell, topo))


@pytest.mark.parametrize("boundary", ["walls", "periodic"])
@pytest.mark.parametrize("with_field", [False, True])
def test_gmlp_projects_before_gathering(boundary, with_field):
    """Without edge weights the gmlp cell takes the project-then-gather path (the cell's own
    ``raw_delta`` is never called) and still equals ``reference``, forward and gradients, over a
    5-step rollout; ``walls`` puts the ghost row (projected as GELU(proj(0))) behind the field rows."""
    h = _conftest()
    state, field, cell, topo = h.make_problem("gmlp", "moore", boundary, shape=(5, 4, 3), field=with_field)
    with torch.no_grad():
        cell.mix.normal_(0, 0.5)  # a mixing far from its near-zero init
    ref = ReferenceKernel()

    def rollout(kernel, s):
        for t in range(5):
            s = kernel.step(s, field if t == 0 else None, cell, topo)
        return s

    with torch.no_grad():
        want = rollout(ref, state)
    out_ref, g_ref = h.step_and_grads(ref, state, field, cell, topo)
    cell.raw_delta = lambda *a: (_ for _ in ()).throw(AssertionError("gmlp fast path not taken"))
    for kernel in (FusedKernel(), FusedKernel(block_cells=40), FusedKernel(reuse_buffers=False), ChunkedKernel(slab=2)):
        with torch.no_grad():
            torch.testing.assert_close(rollout(kernel, state), want)
        out, g = h.step_and_grads(kernel, state, field, cell, topo)
        torch.testing.assert_close(out, out_ref)
        for a, b in zip(g, g_ref):
            torch.testing.assert_close(a, b)
