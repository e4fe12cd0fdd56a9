"""Reshapers: point placement, exact inverse of the permutation, learned adapters."""

from __future__ import annotations

import pytest
import torch

from cellnet_lattice.reshapers import PermutedReshaper, SurfaceReshaper, VolumeReshaper, face_points


@pytest.mark.parametrize("placement,count", [("full", 64), ("proportional", 16), ("corners", 16), ("random", 16)])
def test_face_points(placement, count):
    pts = face_points((8, 8, 6), "z=-1", placement, 0.25, seed=3)
    assert len(pts) == count and len(set(pts.tolist())) == count
    assert ((pts % 6) == 5).all()  # all on the z = Z-1 face
    pts = face_points((5, 8, 6), "x=0", placement, 0.25, seed=3)
    assert (pts // 48 == 0).all()


def test_corners_are_at_the_corners():
    pts = face_points((8, 8, 6), "z=0", "corners", 0.25)
    xy = torch.stack([pts // 48, (pts // 6) % 8], -1)
    assert ((xy < 2) | (xy >= 6)).all()


def test_surface_reads_only_the_output_face():
    torch.manual_seed(0)
    r = SurfaceReshaper(16, (3, 3, 4), 2, placement="full")
    field = r.to_field(torch.randn(5, 16))
    assert field[:, :, :, 1:].abs().sum() == 0 and field[:, :, :, 0].abs().sum() > 0
    state = torch.zeros(1, 3, 3, 4, 2)
    base = r.from_state(state)
    state[:, :, :, :3] = torch.randn(1, 3, 3, 3, 2)
    torch.testing.assert_close(r.from_state(state), base)  # only z = Z-1 is read
    state[:, 0, 0, 3] = 1.0
    assert not torch.allclose(r.from_state(state), base)


@pytest.mark.parametrize("placement", ["centre", "surface", "random", "index"])
def test_permuted_is_an_exact_inverse(placement):
    r = PermutedReshaper(96, (4, 4, 3), 2, placement=placement, seed=1)
    emb = torch.randn(3, 96)
    field = r.to_field(emb)
    assert torch.equal(r.from_state(field), emb)
    assert sorted(r.perm.tolist()) == list(range(96))
    assert not list(r.parameters())


def test_permuted_centre_puts_important_dims_in_the_middle():
    r = PermutedReshaper(27, (3, 3, 3), 1, placement="centre")
    field = r.to_field(torch.arange(27.0).unsqueeze(0))
    assert field[0, 1, 1, 1, 0] == 0.0  # dim 0, the most important, at the centre cell
    assert set(field[0, [0, 2]][:, [0, 2]][:, :, [0, 2]].flatten().tolist()) == set(range(19, 27))  # corners last


def test_permuted_variance_importance_after_fit():
    r = PermutedReshaper(27, (3, 3, 3), 1, placement="centre", importance="variance")
    data = torch.randn(500, 27) * 0.01
    data[:, 17] *= 1000  # dim 17 has by far the most variance
    r.fit(data)
    field = r.to_field(torch.eye(27)[17:18])
    assert field[0, 1, 1, 1, 0] == 1.0
    assert torch.equal(r.from_state(r.to_field(data)), data)
    sd = r.state_dict()
    again = PermutedReshaper(27, (3, 3, 3), 1, placement="centre", importance="variance")
    again.load_state_dict(sd)
    assert torch.equal(again.to_field(data), r.to_field(data))


def test_permuted_size_mismatch_is_a_config_error():
    from cellnet_core.errors import ConfigError

    with pytest.raises(ConfigError, match="must be equal for 'permuted'"):
        PermutedReshaper(50, (3, 3, 3), 2)


def test_volume_round_trip_shapes():
    r = VolumeReshaper(10, (2, 3, 4), 2, out_dim=7)
    assert r.to_field(torch.randn(4, 10)).shape == (4, 2, 3, 4, 2)
    assert r.from_state(torch.randn(4, 2, 3, 4, 2)).shape == (4, 7)


def test_surface_inverse_init_is_identity_through_an_untrained_lattice(registry):
    """init 'inverse' (same face in and out): an untrained lattice returns the embedding exactly."""
    import torch

    from cellnet_core.builtin.components import HashingEncoder
    from cellnet_core.cache import CachedEncoder
    from cellnet_core.pipeline import BuildContext

    ctx = BuildContext(registry=registry, device=torch.device("cpu"), seed=3,
                       encoder=CachedEncoder(HashingEncoder(dim=40), enabled=False), embedding_dim=40)
    r = registry.build("reshaper", {"name": "surface", "shape": [4, 4, 3], "channels": 4, "init": "inverse"}, ctx)
    ctx.reshaper = r
    core = registry.build("core", {"name": "lattice", "cell": {"name": "nca", "hidden": 8}, "steps": 3}, ctx)
    emb = torch.randn(5, 40)
    torch.testing.assert_close(r.from_state(core(r.to_field(emb))), emb, atol=1e-5, rtol=1e-5)


def test_surface_inverse_needs_enough_points(registry):
    import pytest
    import torch

    from cellnet_core.errors import ConfigError
    from cellnet_core.pipeline import BuildContext

    ctx = BuildContext(registry=registry, device=torch.device("cpu"), embedding_dim=384)
    with pytest.raises(ConfigError, match="needs input points × channels ≥ D"):
        registry.build("reshaper", {"name": "surface", "shape": [2, 2, 2], "channels": 4, "init": "inverse"}, ctx)
    with pytest.raises(ConfigError, match="set out_face equal to in_face"):
        registry.config_for("reshaper", {"name": "surface", "init": "inverse", "out_face": "z=-1"})
