"""context-planes: each turn on its own z-plane, an untrained lattice returns the latest turn
exactly, earlier turns reach the read plane only through the lattice's steps, config checks."""

from __future__ import annotations

import warnings

import pytest
import torch

from cellnet_core.errors import ConfigError
from cellnet_core.pipeline import BuildContext
from cellnet_lattice.context import ContextPlanesReshaper, steps_to_read

D = 48


def turns(batch: int = 5, k: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, k * D, generator=torch.Generator().manual_seed(seed))


def build(registry, reshaper: dict, core: dict | None = None):
    """(reshaper, core) through the registry, as a run builds them."""
    from cellnet_core.config import validate_run_config

    run = validate_run_config(registry, {
        "schema_version": 1, "seed": 0, "device": "cpu", "data": {"name": "chatterbot"},
        "encoder": {"name": "hashing", "dim": D}, "reshaper": reshaper,
        "core": core or {"name": "lattice", "cell": {"name": "nca", "hidden": 8}, "steps": 3, "boundary": "walls",
                         "kernel": "reference"},
        "decoder": {"name": "nearest"}, "training": {"name": "context", "epochs": 1}}, source="test")
    ctx = BuildContext(registry=registry, device=torch.device("cpu"), seed=0, config=run, embedding_dim=D)
    r = registry.build("reshaper", run.reshaper, ctx)
    ctx.reshaper = r
    return r, registry.build("core", run.core, ctx)


def test_each_turn_fills_its_own_plane_and_nothing_else():
    r = ContextPlanesReshaper(D, (4, 4, 5), 3, slots=3, planes=[0, 2, 4], adapter="exact")
    x = turns()
    field = r.to_field(x)
    assert field.shape == (5, 4, 4, 5, 3)
    for i, z in enumerate([0, 2, 4]):
        torch.testing.assert_close(field[:, :, :, z, :].reshape(5, -1), x[:, i * D:(i + 1) * D], rtol=0, atol=0)
    assert field[:, :, :, [1, 3], :].abs().sum() == 0
    learned = ContextPlanesReshaper(D, (4, 4, 3), 4, slots=3)  # default planes z = 0, 1, 2
    field = learned.to_field(x)
    for i in range(3):
        want = x[:, i * D:(i + 1) * D] @ learned.adapters_in[i].weight.T
        torch.testing.assert_close(field[:, :, :, i, :].reshape(5, -1), want)
    # different slots have different adapters (seeded per slot)
    assert not torch.allclose(learned.adapters_in[0].weight, learned.adapters_in[1].weight)


@pytest.mark.parametrize("adapter,channels", [("learned", 4), ("learned", 3), ("exact", 3)])
def test_untrained_lattice_returns_the_latest_turn(registry, adapter, channels):
    r, core = build(registry, {"name": "context-planes", "shape": [4, 4, 3], "channels": channels, "slots": 3,
                               "adapter": adapter})
    x = turns()
    out = r.from_state(core(r.to_field(x)))
    assert out.shape == (5, D)
    torch.testing.assert_close(out, x[:, 2 * D:], rtol=1e-5, atol=1e-5)
    # one embedding alone is the latest turn without history
    torch.testing.assert_close(r.from_state(core(r.to_field(x[:, 2 * D:]))), x[:, 2 * D:], rtol=1e-5, atol=1e-5)


def test_read_slot_chooses_the_turn_returned(registry):
    r, core = build(registry, {"name": "context-planes", "shape": [4, 4, 3], "channels": 3, "read": 0})
    x = turns()
    torch.testing.assert_close(r.from_state(core(r.to_field(x))), x[:, :D], rtol=1e-5, atol=1e-5)


def _influence(r, core, x):
    """How much the output changes when the oldest turn changes."""
    y = x.clone()
    y[:, :D] = torch.randn(x.shape[0], D, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        return float((r.from_state(core(r.to_field(x))) - r.from_state(core(r.to_field(y)))).abs().max())


def test_earlier_turns_reach_the_read_plane_only_through_enough_steps(registry, randomise):
    lattice = {"name": "lattice", "cell": {"name": "mlp", "hidden": 8}, "boundary": "walls", "kernel": "reference"}
    x = turns()
    r, core = build(registry, {"name": "context-planes", "shape": [4, 4, 3], "channels": 3},
                    {**lattice, "steps": 2})
    assert _influence(r, core, x) == 0  # untrained: the latest turn alone
    randomise(core)
    assert _influence(r, core, x) > 1e-3  # 2 steps carry z=0 to z=2
    with pytest.warns(UserWarning, match="core.steps: 1 is below 2"):
        r, core = build(registry, {"name": "context-planes", "shape": [4, 4, 3], "channels": 3},
                        {**lattice, "steps": 1})
    randomise(core)
    assert _influence(r, core, x) == 0  # one step reaches z=1 only


def test_steps_to_read_wraps_with_periodic_boundaries():
    assert steps_to_read((4, 4, 3), [0, 1, 2], 2, "walls") == 2
    assert steps_to_read((4, 4, 3), [0, 1, 2], 2, "periodic") == 1
    assert steps_to_read((4, 4, 8), [0, 3, 6], 2, "walls") == 6


def test_gradients_reach_every_adapter_and_the_cell(registry, randomise):
    r, core = build(registry, {"name": "context-planes", "shape": [4, 4, 3], "channels": 3})
    randomise(core)
    r.from_state(core(r.to_field(turns()))).pow(2).sum().backward()
    for name, p in [*r.named_parameters(), *core.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    split = r.param_split()
    assert split == {"adapters_in": 3 * D * 48, "adapter_out": 48 * D, "adapters": 4 * D * 48}
    assert ContextPlanesReshaper(D, (4, 4, 3), 3, adapter="exact").param_split()["adapters"] == 0


@pytest.mark.parametrize("reshaper,match", [
    ({"shape": [4, 4, 2], "slots": 3}, r"reshaper: the lattice depth Z = 2 holds fewer z-planes than the 3 slots"),
    ({"shape": [4, 4, 4], "planes": [0, 0, 3]}, r"reshaper: planes: \[0, 0, 3\] puts two slots on one plane"),
    ({"shape": [4, 4, 4], "planes": [0, 4, 1]}, r"reshaper: planes: \[4\] outside the lattice's z-planes 0..3"),
    ({"planes": [0, 1]}, r"reshaper: planes: 2 planes for 3 slots"),
    ({"read": 3}, r"reshaper: read: slot 3 does not exist"),
])
def test_config_checks_that_the_slots_fit(registry, reshaper, match):
    with pytest.raises(ConfigError, match=match):
        build(registry, {"name": "context-planes", **reshaper})


def test_size_errors_are_config_errors():
    with pytest.raises(ConfigError, match=r"'exact' needs X·Y·C = D; got 4·4·4 = 64 for D = 48"):
        ContextPlanesReshaper(D, (4, 4, 3), 4, adapter="exact")
    with pytest.raises(ConfigError, match="a plane holds 32 values"):
        ContextPlanesReshaper(D, (4, 4, 3), 2)
    with pytest.raises(ValueError, match=r"takes \[B, 3·48\]"):
        ContextPlanesReshaper(D, (4, 4, 3), 3).to_field(torch.zeros(2, 2 * D))


def test_no_warning_when_the_steps_suffice(registry):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build(registry, {"name": "context-planes", "shape": [4, 4, 3], "channels": 3})
