"""The kernels as registered components: contracts (real entry-point discovery), the gather
helpers against the topology, the compiled kernel's fallback, the cuda kernel's error without a
GPU, and the lattice core choosing ``fused`` for ``kernel: auto`` on CPU."""

from __future__ import annotations

import logging

import pytest
import torch

from cellnet_core.testing.contracts import KernelContract


class _StepInputs:
    def make_step_inputs(self, registry):
        from cellnet_lattice.cells import NCACell
        from cellnet_lattice.topology import Topology

        torch.manual_seed(0)
        x, y, z = self.lattice_shape
        topo = Topology(self.lattice_shape, "18", "reflecting")
        cell = NCACell(self.lattice_channels, topo.k, 8)
        state = torch.randn(2, x, y, z, self.lattice_channels)
        return state, torch.randn_like(state), cell, topo


class TestFusedContract(_StepInputs, KernelContract):
    name = "fused"
    config = {"reuse_buffers": False}


class TestChunkedContract(_StepInputs, KernelContract):
    name = "chunked"
    config = {"slab": 2}


class TestCompiledContract(_StepInputs, KernelContract):
    name = "compiled"
    config = {"mode": "default"}

    @pytest.mark.slow
    def test_step_shape(self, registry):  # compiling takes a minute or more on 2 cores
        super().test_step_shape(registry)


@pytest.mark.gpu
class TestCudaContract(_StepInputs, KernelContract):
    name = "cuda"
    config = {"amp": "none"}

    @pytest.fixture(autouse=True)
    def _needs_cuda(self):
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device")

    def make_step_inputs(self, registry):
        state, field, cell, topo = super().make_step_inputs(registry)
        return state.cuda(), field.cuda(), cell.cuda(), topo.to("cuda")


def test_all_kernels_registered(registry):
    assert {"fused", "chunked", "compiled", "cuda", "reference"} <= set(registry.names("kernel"))
    for name in ("fused", "chunked", "compiled", "cuda"):
        assert registry.get("kernel", name).plugin != "?"


def test_config_bounds(registry):
    from cellnet_core.errors import ConfigError

    with pytest.raises(ConfigError, match="slab"):
        registry.config_for("kernel", {"name": "chunked", "slab": -1})
    with pytest.raises(ConfigError, match="amp"):
        registry.config_for("kernel", {"name": "cuda", "amp": "fp8"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_kernel_without_gpu_is_a_clear_user_error(registry):
    from cellnet_core.errors import CellnetError, MissingDependencyError

    with pytest.raises(MissingDependencyError, match=r"kernel 'cuda' needs a CUDA GPU.*use kernel: fused") as info:
        registry.build("kernel", {"name": "cuda"})
    assert isinstance(info.value, CellnetError) and "\n" not in str(info.value)


@pytest.mark.parametrize("neighbourhood", ["von-neumann", "18", "moore"])
@pytest.mark.parametrize("boundary", ["periodic", "walls", "reflecting", "absorbing"])
def test_index_and_pad_gather_match_topology(neighbourhood, boundary):
    """``build_index`` equals the topology's neighbour index, and the pad-and-slice gather of
    :mod:`cellnet_kernels.gather` equals the topology's reference gather."""
    from cellnet_lattice.topology import Topology

    from cellnet_kernels.fused import build_index
    from cellnet_kernels.gather import gather

    for shape in [(3, 4, 2), (1, 2, 5), (2, 1, 1)]:
        topo = Topology(shape, neighbourhood, boundary)
        n, k = topo.num_cells, topo.k
        idx = build_index(shape, topo.offsets, boundary).view(n, k + 1)
        assert torch.equal(idx[:, :k], topo.index)
        assert torch.equal(idx[:, k], torch.arange(n))
        state = torch.randn(2, *shape, 3)
        topo.edge_weight = torch.rand(n, k)
        torch.testing.assert_close(gather(state, topo.offsets.tolist(), boundary, topo.edge_weight),
                                   topo.gather(state))


def test_compiled_falls_back_to_fused_with_a_logged_reason(monkeypatch, caplog):
    from cellnet_lattice.kernels import ReferenceKernel

    import cellnet_kernels.compiled as compiled
    from cellnet_kernels.compiled import CompiledKernel

    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    state, field, cell, topo = _StepInputs().make_step_inputs.__func__(
        type("P", (), {"lattice_shape": (3, 3, 2), "lattice_channels": 4})(), None)
    kernel = CompiledKernel()
    with caplog.at_level(logging.WARNING, logger="cellnet_kernels"), torch.no_grad():
        out = kernel.step(state, field, cell, topo)
    assert "no C++ compiler" in kernel.fallback_reason
    assert "running the 'fused' kernel instead" in caplog.text
    torch.testing.assert_close(out, ReferenceKernel().step(state, field, cell, topo))


def test_compiled_failure_falls_back_but_input_errors_still_raise(monkeypatch):
    from cellnet_kernels.compiled import CompiledKernel

    state, field, cell, topo = _StepInputs().make_step_inputs.__func__(
        type("P", (), {"lattice_shape": (3, 3, 2), "lattice_channels": 4})(), None)
    kernel = CompiledKernel()

    def broken(*a, **k):
        raise RuntimeError("inductor exploded\nlong trace")

    monkeypatch.setattr(kernel, "_compiled_for", lambda device_type: broken)
    with torch.no_grad():
        kernel.step(state, field, cell, topo)
    assert kernel.fallback_reason == "torch.compile failed (RuntimeError: inductor exploded)"
    kernel2 = CompiledKernel()
    monkeypatch.setattr(kernel2, "_compiled_for", lambda device_type: broken)
    with pytest.raises(RuntimeError):
        kernel2.step(state[..., :2], field, cell, topo)  # wrong channel count: fused fails too


@pytest.mark.slow
def test_compiled_matches_reference_forward_and_backward():
    from cellnet_lattice.kernels import ReferenceKernel

    from cellnet_kernels.compiled import CompiledKernel, compile_unavailable_reason

    if compile_unavailable_reason("cpu"):
        pytest.skip(compile_unavailable_reason("cpu"))
    import importlib.util
    import pathlib

    spec = importlib.util.spec_from_file_location("kc", pathlib.Path(__file__).with_name("conftest.py"))
    h = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(h)
    state, field, cell, topo = h.make_problem("mlp", "von-neumann", "walls", edge="shared")
    kernel = CompiledKernel()
    out_ref, g_ref = h.step_and_grads(ReferenceKernel(), state, field, cell, topo)
    out, g = h.step_and_grads(kernel, state, field, cell, topo)
    assert kernel.fallback_reason is None
    torch.testing.assert_close(out, out_ref)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("amp", ["none", "bf16"])
@pytest.mark.parametrize("cell_name,edge", [("nca", "per-cell"), ("gmlp", None), ("mlp", "shared")])
def test_cuda_kernel_matches_reference(amp, cell_name, edge):
    from cellnet_lattice.kernels import ReferenceKernel

    from cellnet_kernels.cuda import CudaKernel

    import importlib.util
    import pathlib

    spec = importlib.util.spec_from_file_location("kc", pathlib.Path(__file__).with_name("conftest.py"))
    h = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(h)
    state, field, cell, topo = h.make_problem(cell_name, "moore", "reflecting", edge=edge)
    state, field, cell, topo = state.cuda(), field.cuda(), cell.cuda(), topo.to("cuda")
    if topo.edge_weight is not None:
        topo.edge_weight = topo.edge_weight.cuda()
    kernel = CudaKernel(amp=amp)
    tol = {} if amp == "none" else {"rtol": 2e-2, "atol": 2e-2}
    with torch.no_grad():
        want = ReferenceKernel().step(state, field, cell, topo)
        for _ in range(3):  # capture, then replays
            torch.testing.assert_close(kernel.step(state, field, cell, topo), want, **tol)
    out_ref, g_ref = h.step_and_grads(ReferenceKernel(), state, field, cell, topo)
    out, g = h.step_and_grads(kernel, state, field, cell, topo)
    torch.testing.assert_close(out, out_ref, **tol)


def test_lattice_auto_picks_fused_on_cpu_and_the_manifest_records_it(registry, tmp_path, monkeypatch):
    """Through the lattice core and the pipeline: ``kernel: auto`` → ``fused`` on CPU, recorded as
    ``core.kernel_name`` and in the run manifest; the result equals the reference kernel's."""
    import json

    from cellnet_core.config import validate_run_config
    from cellnet_core.pipeline import Pipeline

    monkeypatch.setenv("CELLNET_CACHE_DIR", str(tmp_path / "cache"))
    # the data section is required by the run config but not used here; any dataset that needs no
    # arguments will do (building the pipeline does not load it)
    no_args = [n for n in ("greetings", "chatterbot") if n in registry.names("dataset")]
    if not no_args:
        pytest.skip("no argument-free dataset plugin installed")
    base = {"device": "cpu", "data": {"name": no_args[0]},
            "encoder": {"name": "hashing", "dim": 48},
            "reshaper": {"name": "flat", "shape": [4, 4, 3], "channels": 1},
            "core": {"name": "lattice", "cell": {"name": "nca", "hidden": 8}, "steps": 3, "kernel": "auto",
                     "boundary": "walls", "injection": "every"},
            "training": {"name": "retrieval"}}  # building is what is tested; nothing is trained
    cfg = validate_run_config(registry, base)
    pipe = Pipeline.build(cfg, registry, cache_dir=tmp_path / "cache")
    assert pipe.core.kernel_name == "fused" and pipe.core.kernel.name == "fused"
    pipe.save(tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["run"]["kernel"] == "fused"
    ref_cfg = validate_run_config(registry, {**base, "core": {**base["core"], "kernel": "reference"}})
    ref = Pipeline.build(ref_cfg, registry, cache_dir=tmp_path / "cache")
    ref.load_state_tensors(pipe.state_tensors())
    with torch.no_grad():
        cell = pipe.core.cell
        cell.fc2.weight.normal_(0, 0.3)
        ref.core.cell.fc2.weight.copy_(cell.fc2.weight)
        emb = pipe.encode(["hello there", "how are you"])
        torch.testing.assert_close(pipe.think(emb), ref.think(emb))
