"""Cells are registered components: the built-in cells pass the core's ``CellContract``; a cell
from another plugin is selected by name in ``core.cell`` and runs with every kernel (the fast ones
support it, or run the reference step for it with one logged line)."""

from __future__ import annotations

import logging
from typing import Literal

import pytest
import torch
from pydantic import Field

from cellnet_core import hookimpl
from cellnet_core.config import ComponentConfig
from cellnet_core.testing.contracts import CellContract


class TestMLPCell(CellContract):
    name = "mlp"
    config = {"hidden": 8}


class TestGatedMLPCell(CellContract):
    name = "gmlp"
    config = {"hidden": 6, "delta_bound": 0.5}


class TestNCACell(CellContract):
    name = "nca"
    config = {"hidden": 8, "filters": 4}


# -- a cell from another plugin ------------------------------------------------------------------
class MeanPullConfig(ComponentConfig):
    """Test cell: pulls each cell towards a learned mix of its neighbours' mean."""

    name: Literal["mean-pull"] = "mean-pull"
    rate: float = Field(0.0, description="initial pull rate")


class MeanPullCell(torch.nn.Module):
    """``delta = rate ⊙ (mean_K(neigh) − own) + W·inp`` (rowwise, not a ``Cell`` subclass)."""

    rowwise = True

    def __init__(self, channels: int, rate: float):
        super().__init__()
        self.rate = torch.nn.Parameter(torch.full((channels,), float(rate)))
        self.inp = torch.nn.Linear(channels, channels, bias=False)
        torch.nn.init.zeros_(self.inp.weight)

    def forward(self, neigh, own, inp=None):
        delta = self.rate * (neigh.mean(-2) - own)
        return delta if inp is None else delta + self.inp(inp)


class BatchCentredCell(MeanPullCell):
    """Subtracts the mean over every cell evaluated together: its numbers depend on the other
    cells, so it must not declare ``rowwise``."""

    rowwise = False

    def forward(self, neigh, own, inp=None):
        delta = super().forward(neigh, own, inp)
        flat = delta.reshape(-1, delta.shape[-1])
        return delta - flat.mean(0)


class BatchCentredConfig(ComponentConfig):
    """Test cell config of ``batch-centred``."""

    name: Literal["batch-centred"] = "batch-centred"
    rate: float = Field(0.0, description="initial pull rate")


class BrokenConfig(ComponentConfig):
    """Test cell whose factory returns no module."""

    name: Literal["broken"] = "broken"


class _Plugin:
    @hookimpl
    def cellnet_register_components(self, registry):
        registry.add("cell", "mean-pull", MeanPullConfig,
                     lambda cfg, ctx: MeanPullCell(ctx.channels, cfg.rate), summary="test cell: neighbour mean pull")
        registry.add("cell", "batch-centred", BatchCentredConfig,
                     lambda cfg, ctx: BatchCentredCell(ctx.channels, cfg.rate),
                     summary="test cell whose rows depend on each other")
        registry.add("cell", "broken", BrokenConfig, lambda cfg, ctx: "not a module", summary="test cell: broken")


@pytest.fixture
def third_party():
    """A registry with the lattice and kernel plugins and the test plugin above (autoload off)."""
    from cellnet_core.plugins import collect_registry, create_plugin_manager, register_plugin

    import cellnet_kernels.plugin
    import cellnet_lattice.plugin

    pm = create_plugin_manager(autoload=False)
    register_plugin(pm, cellnet_lattice.plugin, "cellnet-lattice", "0")
    register_plugin(pm, cellnet_kernels.plugin, "cellnet-kernels", "0")
    plugin = _Plugin()
    register_plugin(pm, plugin, "tmp-cells", "0")
    try:
        yield collect_registry(pm)
    finally:
        pm.unregister(plugin)


def _lattice(reg, cell, kernel, shape=(4, 3, 2), channels=3):
    from cellnet_core.builtin.components import FlatReshaper
    from cellnet_core.pipeline import BuildContext

    cfg = reg.config_for("core", {"name": "lattice", "cell": cell, "steps": 3, "injection": "every",
                                  "kernel": kernel}, where="core")
    x, y, z = shape
    ctx = BuildContext(registry=reg, device=torch.device("cpu"),
                       reshaper=FlatReshaper(x * y * z * channels, shape, channels))
    return reg.build("core", cfg, ctx)


def test_core_cell_names_registered_cells(third_party):
    """``core.cell`` takes a plugin's cell by name with its own options; an unknown name lists
    every registered cell with the config path; a misspelt option names its nested path."""
    from cellnet_core.errors import ConfigError

    reg = third_party
    assert {"mlp", "gmlp", "nca", "mean-pull"} <= set(reg.names("cell"))
    cfg = reg.config_for("core", {"name": "lattice", "cell": {"name": "mean-pull", "rate": 0.3}}, where="core")
    assert isinstance(cfg.cell, MeanPullConfig) and cfg.cell.rate == 0.3
    assert cfg.model_dump(mode="json")["cell"] == {"name": "mean-pull", "rate": 0.3}
    with pytest.raises(ConfigError, match=r"core\.cell\.name: unknown 'mean-pul'; available: batch-centred, broken, "
                                          r"gmlp, mean-pull, mlp, nca; did you mean 'mean-pull'\?"):
        reg.config_for("core", {"name": "lattice", "cell": "mean-pul"}, where="core")
    with pytest.raises(ConfigError, match=r"core\.cell\.rat: unknown field"):
        reg.config_for("core", {"name": "lattice", "cell": {"name": "mean-pull", "rat": 1}}, where="core")


@pytest.mark.parametrize("kernel", ["fused", "chunked", "compiled"])
def test_third_party_cell_every_kernel_matches_reference(third_party, kernel, caplog):
    """A rowwise third-party cell runs in the fast kernels' generic path with the reference
    kernel's states and gradients (``compiled`` where it can compile, else through ``fused``)."""
    reg = third_party
    ref = _lattice(reg, {"name": "mean-pull", "rate": 0.2}, "reference")
    with torch.no_grad():
        ref.cell.inp.weight.copy_(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)) * 0.3)
    fast = _lattice(reg, {"name": "mean-pull", "rate": 0.2}, kernel)
    if kernel == "chunked":
        fast.kernel.slab = 1  # one X-plane per slab: halos on every side
    fast.load_state_dict(ref.state_dict())
    field = torch.randn(2, 4, 3, 2, 3, generator=torch.Generator().manual_seed(1))
    outs = []
    for core in (ref, fast):
        f = field.clone().requires_grad_(True)
        out = core(f)
        out.pow(2).sum().backward()
        outs.append((out.detach(), f.grad, core.cell.rate.grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not [r for r in caplog.records if "reference step" in r.getMessage()]


@pytest.mark.parametrize("kernel", ["fused", "chunked"])
def test_cell_without_rowwise_falls_back_to_reference_once(third_party, kernel, caplog):
    """A cell whose rows depend on each other is never blocked or slabbed: the fast kernel runs
    the reference step for it, says so in one logged line, and the result is the reference one."""
    reg = third_party
    ref = _lattice(reg, {"name": "batch-centred", "rate": 0.4}, "reference")
    fast = _lattice(reg, {"name": "batch-centred", "rate": 0.4}, kernel)
    if kernel == "chunked":
        fast.kernel.slab = 1
    else:
        fast.kernel.block_cells = 4  # would split the lattice into blocks if it took this cell
    field = torch.randn(2, 4, 3, 2, 3, generator=torch.Generator().manual_seed(2))
    with caplog.at_level(logging.WARNING, logger="cellnet_kernels"):
        with torch.no_grad():
            want, got = ref(field), fast(field)
            fast(field)
    torch.testing.assert_close(got, want)
    lines = [r.getMessage() for r in caplog.records if "reference step" in r.getMessage()]
    assert lines == [f"kernel '{kernel}': cell BatchCentredCell does not declare rowwise = True, so its update "
                     "may depend on other cells; running the reference step for it"]


def test_object_without_rowwise_is_not_taken_by_the_fast_path():
    """``cell_kind``: the lattice's own cells by exact type, a declared rowwise cell generic,
    anything else (a subclass that turns it off, an undeclared module) reference."""
    from cellnet_kernels.slots import cell_kind

    from cellnet_lattice.cells import GatedMLPCell, MLPCell, NCACell

    class Undeclared(torch.nn.Module):
        def forward(self, neigh, own, inp=None):
            return own * 0

    class Subclassed(MLPCell):
        pass

    assert [cell_kind(MLPCell(3, 6, 4)), cell_kind(NCACell(3, 6, 4)), cell_kind(GatedMLPCell(3, 6, 4))] == \
        ["mlp", "nca", "gmlp"]
    assert cell_kind(GatedMLPCell(3, 6, 4), torch.ones(6)) == "generic"
    assert cell_kind(Subclassed(3, 6, 4)) == "generic"
    assert cell_kind(MeanPullCell(3, 0.1)) == "generic"
    assert cell_kind(BatchCentredCell(3, 0.1)) == "reference"
    assert cell_kind(Undeclared()) == "reference"


def test_cell_factory_must_build_a_module(third_party):
    """A factory that returns something other than a module is named with its plugin."""
    from cellnet_lattice.cells import build_cell

    with pytest.raises(TypeError, match=r"cell 'broken' \(plugin 'tmp-cells'\) built a str"):
        build_cell(BrokenConfig(), 3, 6, third_party)
