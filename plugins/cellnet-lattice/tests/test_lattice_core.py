"""The lattice core: identity at init, propagation speed, bounded rollouts, convergence exit,
kernel choice, plasticity, checkpointing, the flat reshaper in a real pipeline."""

from __future__ import annotations

import logging

import pytest
import torch


CELLS = ("mlp", "gmlp", "nca")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("injection", ["first", "every"])
def test_untrained_lattice_is_identity(make_core, cell, injection):
    core = make_core(cell=cell, steps=5, injection=injection, edge_weights="per-cell", boundary="walls")
    field = torch.randn(3, 4, 4, 4, 4)
    for mode in (True, False):
        core.train(mode)
        assert torch.equal(core(field), field)


def test_untrained_pipeline_with_flat_reshaper_returns_its_input(registry):
    """The core's `flat` reshaper + lattice, built by name: think(emb) == emb at init."""
    from cellnet_core.builtin.components import HashingEncoder
    from cellnet_core.cache import CachedEncoder
    from cellnet_core.pipeline import BuildContext, Pipeline

    fake_teacher = CachedEncoder(HashingEncoder(dim=48), enabled=False)  # feature hashing, no model
    ctx = BuildContext(registry=registry, device=torch.device("cpu"), encoder=fake_teacher, embedding_dim=48)
    ctx.reshaper = registry.build("reshaper", {"name": "flat", "shape": [4, 4, 3], "channels": 1}, ctx)
    core = registry.build("core", {"name": "lattice", "cell": {"name": "nca", "hidden": 8}, "steps": 4,
                                   "kernel": "reference"}, ctx)
    pipe = Pipeline(None, registry, fake_teacher, ctx.reshaper, core, None, torch.device("cpu"))
    emb = pipe.encode(["hello there", "how are you"])
    pipe.eval()
    with torch.no_grad():
        torch.testing.assert_close(pipe.think(emb), emb)
    assert pipe.core.last_steps == 4


@pytest.mark.parametrize("neighbourhood", ["von-neumann", "moore"])
def test_walls_signal_needs_z_minus_one_steps_to_cross(make_core, neighbourhood, randomise):
    """An input on the front face (z=0) changes the back face (z=Z-1) only from step Z-1 on.

    Two single-sample runs, with and without the input, are compared: cells the signal has not
    reached compute exactly the same numbers in both."""
    Z = 6
    core = make_core(shape=(3, 3, Z), channels=2, neighbourhood=neighbourhood, boundary="walls", steps=Z + 1)
    randomise(core, std=0.5)
    core.eval()
    field = torch.zeros(1, 3, 3, Z, 2)
    field[..., 0, :] = torch.randn(1, 3, 3, 2)
    with_input, without = core.trace(field), core.trace(torch.zeros_like(field))
    back = [(a[..., Z - 1, :] - b[..., Z - 1, :]).abs().max().item() for a, b in zip(with_input, without)]
    assert all(d == 0.0 for d in back[:Z - 1]), back
    assert back[Z - 1] > 1e-6, back
    # with periodic wrap the back face is the front face's neighbour: one step is enough
    core_p = make_core(shape=(3, 3, Z), channels=2, neighbourhood=neighbourhood, boundary="periodic", steps=2)
    randomise(core_p, std=0.5)
    a, b = core_p.trace(field), core_p.trace(torch.zeros_like(field))
    assert (a[1][..., Z - 1, :] - b[1][..., Z - 1, :]).abs().max() > 1e-6


@pytest.mark.parametrize("cell", CELLS)
def test_long_rollouts_stay_bounded(make_core, cell):
    """100 steps with random (not zero) weights: finite, and within the delta bound's reach."""
    core = make_core(shape=(3, 3, 3), cell=cell, steps=100, neighbourhood="moore", injection="every")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in core.cell.parameters():
            p.copy_(torch.randn(p.shape, generator=g))  # far larger than any init
    core.eval()
    field = torch.randn(2, 3, 3, 3, 4)
    states = core.trace(field)
    assert len(states) == 101
    out = states[-1]
    assert torch.isfinite(out).all()
    # each step moves a channel by < delta_bound (1.0): |state_T| <= |field| + T
    assert out.abs().max() <= field.abs().max() + 100
    steps = torch.stack([(b - a).abs().max() for a, b in zip(states, states[1:])])
    assert steps.max() <= 1.0 + 1e-4  # float rounding of (state + delta) - state


def test_state_clip_bounds_the_state(make_core, randomise):
    core = make_core(steps=50, state_clip=2.0)
    randomise(core, std=3.0)
    core.eval()
    out = core(torch.randn(2, 4, 4, 4, 4) * 5)
    assert out.abs().max() <= 2.0


def test_convergence_exit_in_eval_only(make_core, randomise):
    core = make_core(steps=40, tol=1e-3, patience=2, boundary="walls")
    randomise(core, std=0.05)
    with torch.no_grad():  # a contracting cell: delta = -0.5 * own (approximately, via bias-free fc)
        core.cell.fc2.weight.zero_(), core.cell.fc2.bias.zero_()
    field = torch.randn(2, 4, 4, 4, 4)
    core.eval()
    core(field)
    assert core.last_steps == 2  # changes are 0 < tol from the first step: stops after `patience`
    randomise(core, std=0.5)
    core(field)
    used_random = core.last_steps
    core.train()
    core(field)
    assert core.last_steps == 40  # never early in training
    assert used_random >= 2


def test_convergence_exit_on_a_decaying_lattice(make_core):
    """delta = -own/2 (a linear cell made by hand): |change| halves every step, so the exit step is known."""
    core = make_core(channels=2, steps=60, tol=1e-3, patience=1, hidden=4)
    cell = core.cell
    with torch.no_grad():
        cell.fc1.weight.zero_(), cell.fc1.bias.zero_(), cell.fc2.bias.zero_()
        k_c = cell.k * 2
        # h = relu(own), relu(-own); delta = -0.5*own  (tanh bound makes it slightly smaller)
        cell.fc1.weight[0, k_c], cell.fc1.weight[1, k_c] = 1.0, -1.0
        cell.fc1.weight[2, k_c + 1], cell.fc1.weight[3, k_c + 1] = 1.0, -1.0
        cell.fc2.weight.zero_()
        cell.fc2.weight[0, 0], cell.fc2.weight[0, 1] = -0.5, 0.5
        cell.fc2.weight[1, 2], cell.fc2.weight[1, 3] = -0.5, 0.5
    cell.delta_bound = 0.0  # exact linear decay
    core.eval()
    field = torch.full((1, 4, 4, 4, 2), 0.8)
    out = core(field)
    # change at step t is 0.8 * 0.5**t; first t with change < 1e-3: 0.8*0.5**t < 1e-3 → t = 10
    assert core.last_steps == 10
    torch.testing.assert_close(out, field * 0.5 ** 10)


def test_fire_rate_updates_only_some_cells_in_training(make_core, randomise):
    core = make_core(steps=1, fire_rate=0.5)
    randomise(core)
    field = torch.randn(4, 4, 4, 4, 4)
    core.train()
    torch.manual_seed(0)
    changed = (core(field) != field).any(-1).float().mean().item()
    assert 0.3 < changed < 0.7
    core.eval()
    assert (core(field) != field).any(-1).float().mean().item() > 0.95


def test_gradients_reach_cell_weights_through_all_steps(make_core, randomise):
    """With walls and a read-out of one back-face cell, the gradient reaches the input on the
    front face exactly when T >= Z-1, and every cell parameter gets a gradient."""
    Z = 5
    for steps, reaches in ((Z - 2, False), (Z - 1, True)):
        core = make_core(shape=(3, 3, Z), channels=3, boundary="walls", steps=steps)
        randomise(core, std=0.5)
        field = torch.randn(2, 3, 3, Z, 3, requires_grad=True)
        core(field)[:, 1, 1, Z - 1].pow(2).sum().backward()
        front = field.grad[:, :, :, 0].abs().sum().item()
        assert (front > 0) == reaches, (steps, front)
        for name, p in core.cell.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_checkpoint_steps_gives_the_same_gradients(make_core, randomise):
    grads = []
    for ckpt in (False, True):
        core = make_core(steps=4, checkpoint_steps=ckpt, edge_weights="shared", cell="gmlp")
        randomise(core)
        field = torch.randn(2, 4, 4, 4, 4)
        core.train()
        core(field).pow(2).sum().backward()
        grads.append([p.grad.clone() for p in core.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("rule", ["hebbian", "bcm"])
@pytest.mark.parametrize("edge", ["shared", "per-cell"])
def test_plasticity_changes_weights_within_bounds(make_core, rule, edge, randomise):
    from cellnet_lattice.config import PlasticityConfig

    p = PlasticityConfig(rule=rule, rate=0.5, min_weight=0.5, max_weight=1.2)
    core = make_core(steps=3, edge_weights=edge, plasticity=p)
    randomise(core)
    before = core.edge_weight.detach().clone()
    field = torch.randn(2, 4, 4, 4, 4) * 2
    core.eval()
    core(field)
    assert torch.equal(core.edge_weight, before), "plasticity must not act in eval mode"
    core.train()
    for _ in range(5):
        core(field)
    w = core.edge_weight.detach()
    assert not torch.equal(w, before)
    assert w.min() >= 0.5 and w.max() <= 1.2
    assert core.edge_weight.grad is None


def test_competitive_normalisation_keeps_mean_one(make_core, randomise):
    from cellnet_lattice.config import PlasticityConfig

    p = PlasticityConfig(rule="hebbian", rate=0.2, normalise=True, max_weight=5.0)
    core = make_core(steps=2, edge_weights="per-cell", plasticity=p)
    randomise(core)
    core.train()
    core(torch.randn(2, 4, 4, 4, 4))
    torch.testing.assert_close(core.edge_weight.detach().mean(-1), torch.ones(64))


def test_plasticity_needs_edge_weights(registry):
    from cellnet_core.errors import ConfigError

    with pytest.raises(ConfigError, match="set edge_weights to shared or per-cell"):
        registry.config_for("core", {"name": "lattice", "plasticity": {"rule": "bcm"}})


def test_kernel_auto_choice_and_logging(registry, caplog):
    from cellnet_core.builtin.components import FlatReshaper
    from cellnet_core.pipeline import BuildContext
    from cellnet_lattice.core import choose_kernel

    names = registry.names("kernel")
    expected_cpu = "fused" if "fused" in names else "reference"
    assert choose_kernel(registry, torch.device("cpu")) == expected_cpu
    expected_cuda = next(n for n in ("cuda", "fused", "reference") if n in names)
    assert choose_kernel(registry, torch.device("cuda")) == expected_cuda
    ctx = BuildContext(registry=registry, device=torch.device("cpu"), embedding_dim=48,
                       reshaper=FlatReshaper(48, (4, 4, 3), 1))
    with caplog.at_level(logging.INFO, logger="cellnet_lattice"):
        core = registry.build("core", {"name": "lattice", "kernel": "auto"}, ctx)
    assert core.kernel_name == expected_cpu
    assert f"kernel auto → {expected_cpu}" in caplog.text
    core = registry.build("core", {"name": "lattice", "kernel": "reference"}, ctx)
    assert core.kernel_name == "reference"


def test_unknown_kernel_is_a_config_error(registry):
    from cellnet_core.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown 'referance'.*did you mean 'reference'"):
        registry.config_for("core", {"name": "lattice", "kernel": "referance"})


def test_wrong_field_shape_is_explained(make_core):
    core = make_core()
    with pytest.raises(ValueError, match=r"lattice expects a field \[B, 4, 4, 4, 4\]"):
        core(torch.randn(2, 4, 4, 3, 4))


def test_kernel_options_reach_the_kernel_and_are_validated(registry):
    import pytest
    import torch

    from cellnet_core.builtin.components import FlatReshaper
    from cellnet_core.errors import ConfigError
    from cellnet_core.pipeline import BuildContext

    if "fused" not in registry.names("kernel"):
        pytest.skip("cellnet-kernels not installed")
    ctx = BuildContext(registry=registry, device=torch.device("cpu"))
    ctx.reshaper = FlatReshaper(4 * 4 * 4 * 2, (4, 4, 4), 2)
    core = registry.build("core", {"name": "lattice", "kernel": "fused", "kernel_options": {"block_cells": 16}}, ctx)
    assert core.kernel.block_cells == 16
    with pytest.raises(ConfigError, match=r"core\.kernel_options\.no_such: unknown field"):
        registry.build("core", {"name": "lattice", "kernel": "fused", "kernel_options": {"no_such": 1}}, ctx)
