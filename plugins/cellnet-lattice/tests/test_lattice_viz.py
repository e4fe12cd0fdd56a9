"""viz writes real pictures of the lattice state (not blank, not tiny)."""

from __future__ import annotations

import numpy as np
import torch


def test_render_writes_non_blank_pngs(registry, tmp_path, randomise):
    import matplotlib.image as mpimg

    from cellnet_core.builtin.components import HashingEncoder
    from cellnet_core.cache import CachedEncoder
    from cellnet_core.pipeline import BuildContext, Pipeline
    from cellnet_lattice.viz import render

    fake_teacher = CachedEncoder(HashingEncoder(dim=32), enabled=False)
    ctx = BuildContext(registry=registry, device=torch.device("cpu"), encoder=fake_teacher, embedding_dim=32)
    ctx.reshaper = registry.build("reshaper", {"name": "surface", "shape": [5, 5, 6], "channels": 3}, ctx)
    core = registry.build("core", {"name": "lattice", "steps": 6, "boundary": "walls", "kernel": "reference"}, ctx)
    randomise(core, std=0.5)
    pipe = Pipeline(None, registry, fake_teacher, ctx.reshaper, core, None, torch.device("cpu"))
    files = render(pipe, "hello, how are you?", tmp_path / "viz", steps=[0, 2, 6])
    assert [f.name for f in files] == ["slices.png", "activity.png", "channels.png"]
    for f in files:
        assert f.exists() and f.stat().st_size > 2000, f
        img = mpimg.imread(f)[..., :3]
        assert img.shape[0] > 100 and img.shape[1] > 100
        assert np.std(img) > 0.05, f"{f.name} looks blank"
        assert len(np.unique(img.reshape(-1, 3), axis=0)) > 20
