"""Topology: offsets, neighbour counts, boundary rules on hand-made lattices, the reference gather."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn import functional as F

from cellnet_lattice.topology import Topology, neighbour_offsets

SHAPE = (3, 4, 5)


@pytest.mark.parametrize("nb,k", [("von-neumann", 6), ("18", 18), ("moore", 26)])
def test_offsets_sorted_and_counted(nb, k):
    off = neighbour_offsets(nb)
    assert off.shape == (k, 3)
    rows = [tuple(r) for r in off.tolist()]
    assert rows == sorted(rows) and len(set(rows)) == k and (0, 0, 0) not in rows


@pytest.mark.parametrize("nb,k", [("von-neumann", 6), ("18", 18), ("moore", 26)])
@pytest.mark.parametrize("boundary", ["periodic", "reflecting", "absorbing"])
def test_every_cell_has_k_neighbours_without_walls(nb, k, boundary):
    t = Topology(SHAPE, nb, boundary)
    assert t.index.shape == (60, k)
    assert (t.neighbour_counts() == k).all()
    assert int(t.index.max()) < t.num_cells


@pytest.mark.parametrize("nb", ["von-neumann", "18", "moore"])
def test_walls_neighbour_counts(nb):
    """Inside neighbours by brute force: offsets that stay inside the box."""
    t = Topology(SHAPE, nb, "walls")
    off = t.offsets.tolist()
    for flat, (x, y, z) in enumerate(itertools.product(*(range(s) for s in SHAPE))):
        inside = sum(all(0 <= c + d < s for c, d, s in zip((x, y, z), o, SHAPE)) for o in off)
        assert int(t.neighbour_counts()[flat]) == inside
    # corner cell: 3 (von-neumann), 6 (18), 7 (moore) inside neighbours
    assert int(t.neighbour_counts()[0]) == {"von-neumann": 3, "18": 6, "moore": 7}[nb]
    assert int((t.index == t.num_cells).sum()) > 0


def _flat(x, y, z, shape=SHAPE):
    return x * shape[1] * shape[2] + y * shape[2] + z


def _neighbour(t, cell, offset):
    k = [tuple(o) for o in t.offsets.tolist()].index(offset)
    return int(t.index[_flat(*cell), k])


def test_periodic_wraps_on_hand_made_lattice():
    t = Topology(SHAPE, "moore", "periodic")
    assert _neighbour(t, (0, 0, 0), (-1, 0, 0)) == _flat(2, 0, 0)
    assert _neighbour(t, (0, 0, 0), (0, 0, -1)) == _flat(0, 0, 4)
    assert _neighbour(t, (2, 3, 4), (1, 1, 1)) == _flat(0, 0, 0)
    assert _neighbour(t, (1, 2, 3), (1, -1, 0)) == _flat(2, 1, 3)


def test_reflecting_mirrors_without_repeating_the_edge():
    t = Topology(SHAPE, "moore", "reflecting")
    assert _neighbour(t, (0, 0, 0), (-1, 0, 0)) == _flat(1, 0, 0)  # -1 → 1
    assert _neighbour(t, (2, 0, 0), (1, 0, 0)) == _flat(1, 0, 0)  # size → size-2
    assert _neighbour(t, (0, 3, 4), (-1, 1, 1)) == _flat(1, 2, 3)


def test_absorbing_copies_the_edge_cell():
    t = Topology(SHAPE, "von-neumann", "absorbing")
    assert _neighbour(t, (0, 0, 0), (-1, 0, 0)) == _flat(0, 0, 0)
    assert _neighbour(t, (1, 3, 2), (0, 1, 0)) == _flat(1, 3, 2)


def test_reflecting_on_size_one_axis_acts_as_absorbing():
    a = Topology((4, 1, 3), "moore", "reflecting")
    b = Topology((4, 1, 3), "moore", "absorbing")
    ys = (a.offsets[:, 1] != 0) & (a.offsets[:, 0] == 0) & (a.offsets[:, 2] == 0)  # pure y offsets
    assert int(ys.sum()) == 2
    assert torch.equal(a.index[:, ys], b.index[:, ys])


@pytest.mark.parametrize("boundary,mode", [("periodic", "circular"), ("walls", "constant"),
                                           ("reflecting", "reflect"), ("absorbing", "replicate")])
def test_gather_matches_torch_padding(boundary, mode):
    """Each neighbour equals a slice of the state padded with the matching torch padding mode."""
    torch.manual_seed(0)
    t = Topology(SHAPE, "moore", boundary)
    state = torch.randn(2, *SHAPE, 3)
    got = t.gather(state)  # [B, X, Y, Z, K, C]
    chw = state.permute(0, 4, 1, 2, 3)  # [B, C, X, Y, Z]
    padded = F.pad(chw, (1, 1, 1, 1, 1, 1), mode=mode)
    X, Y, Z = SHAPE
    for k, (dx, dy, dz) in enumerate(t.offsets.tolist()):
        want = padded[:, :, 1 + dx:1 + dx + X, 1 + dy:1 + dy + Y, 1 + dz:1 + dz + Z].permute(0, 2, 3, 4, 1)
        torch.testing.assert_close(got[..., k, :], want)


def test_gather_applies_edge_weights():
    torch.manual_seed(0)
    t = Topology(SHAPE, "von-neumann", "periodic")
    state = torch.randn(2, *SHAPE, 3)
    plain = t.gather(state)
    t.edge_weight = torch.arange(6, dtype=torch.float32)
    torch.testing.assert_close(t.gather(state), plain * torch.arange(6.0).reshape(6, 1))
    w = torch.rand(60, 6)
    t.edge_weight = w
    torch.testing.assert_close(t.gather(state), plain * w.reshape(*SHAPE, 6, 1))


def test_bad_names_rejected():
    with pytest.raises(ValueError, match="neighbourhood"):
        Topology(SHAPE, "hex", "periodic")
    with pytest.raises(ValueError, match="boundary"):
        Topology(SHAPE, "moore", "torus")
