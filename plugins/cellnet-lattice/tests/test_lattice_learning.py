"""Learning is real: the lattice alone (no learned reshaper) learns a fixed random map that it
can represent — a random rotation of every cell's channels combined with a transport of the
whole pattern one cell along z — and generalises to held-out fields within a minute of CPU time.

The budget is measured as this process's CPU time (``time.process_time``) on one thread, so
the test means the same on a busy machine; about 5–10 s are needed on this machine class."""

from __future__ import annotations

import time

import torch
from torch.nn import functional as F


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.flatten(1), b.flatten(1)).mean()


def test_lattice_learns_a_random_rotation_with_transport(make_core):
    torch.manual_seed(0)
    shape, C = (4, 4, 4), 4
    rot, _ = torch.linalg.qr(torch.randn(C, C))  # fixed random rotation of the channels

    def target(x: torch.Tensor) -> torch.Tensor:
        return torch.roll(x @ rot.T, shifts=1, dims=3)  # rotate, then move one cell along z

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train = torch.randn(1024, *shape, C) * 0.3
    held_out = torch.randn(256, *shape, C) * 0.3
    core = make_core(shape=shape, channels=C, cell="mlp", hidden=64, steps=2, boundary="periodic")
    assert _cos(core(held_out), target(held_out)) < 0.2  # the untrained lattice (identity) is far off
    try:
        opt = torch.optim.Adam(core.parameters(), lr=5e-3)
        start, cos = time.process_time(), 0.0
        while time.process_time() - start < 60 and cos < 0.95:
            core.train()
            for idx in torch.randperm(len(train)).split(64):
                x = train[idx]
                loss = 1 - _cos(core(x), target(x))
                opt.zero_grad()
                loss.backward()
                opt.step()
            core.eval()
            with torch.no_grad():
                cos = _cos(core(held_out), target(held_out)).item()
    finally:
        torch.set_num_threads(threads)
    assert cos >= 0.95, f"held-out cosine {cos:.3f} after {time.process_time() - start:.0f} s of CPU time"
