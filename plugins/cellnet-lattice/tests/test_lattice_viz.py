"""viz writes real pictures of the lattice state: titled, with colour bars, one colour scale per slice."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _pipeline(registry, randomise, shape=(5, 5, 6), channels=3, steps=6):
    from cellnet_core.builtin.components import HashingEncoder
    from cellnet_core.cache import CachedEncoder
    from cellnet_core.pipeline import BuildContext, Pipeline

    fake_teacher = CachedEncoder(HashingEncoder(dim=32), enabled=False)
    ctx = BuildContext(registry=registry, device=torch.device("cpu"), encoder=fake_teacher, embedding_dim=32)
    ctx.reshaper = registry.build("reshaper", {"name": "surface", "shape": list(shape), "channels": channels}, ctx)
    core = registry.build("core", {"name": "lattice", "steps": steps, "boundary": "walls", "kernel": "reference"},
                          ctx)
    randomise(core, std=0.5)
    return Pipeline(None, registry, fake_teacher, ctx.reshaper, core, None, torch.device("cpu"))


def test_render_writes_non_blank_pngs(registry, tmp_path, randomise):
    import matplotlib.image as mpimg

    from cellnet_lattice.viz import FILES, render

    files = render(_pipeline(registry, randomise), "hello, how are you?", tmp_path / "viz", steps=[0, 2, 6])
    assert [f.name for f in files] == list(FILES) == ["slices.png", "change.png", "activity.png", "channels.png"]
    assert sorted(p.name for p in (tmp_path / "viz").iterdir()) == sorted(FILES)
    for f in files:
        assert f.exists() and f.stat().st_size > 2000, f
        img = mpimg.imread(f)[..., :3]
        assert img.shape[0] > 100 and img.shape[1] > 100
        assert np.std(img) > 0.05, f"{f.name} looks blank"
        assert len(np.unique(img.reshape(-1, 3), axis=0)) > 20


def _states(X=4, Y=4, Z=5, C=3, T=4):
    """A field on the z=0 face, 100× brighter than what the steps add inside."""
    g = torch.Generator().manual_seed(0)
    s0 = torch.zeros(X, Y, Z, C)
    s0[:, :, 0] = 10 * torch.randn(X, Y, C, generator=g)
    states = [s0]
    for t in range(T):
        states.append(states[-1] + 0.1 * torch.randn(X, Y, Z, C, generator=g))
    return states


def _colourbars(fig):
    return [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]


def test_every_figure_has_a_title_and_colour_bars_or_labelled_axes():
    import matplotlib.pyplot as plt

    from cellnet_lattice.viz import FILES, figures

    figs = figures(_states(C=10), title="'hi'", marks={0: "input"})
    try:
        assert list(figs) == list(FILES)
        for name, fig in figs.items():
            assert fig.get_suptitle() and "lattice 4×4×5, 10 channels: 'hi'" in fig.get_suptitle(), name
        # one colour bar per z-slice column in both grids; one per row in the channel view
        assert len(_colourbars(figs["slices.png"])) == 5
        assert len(_colourbars(figs["change.png"])) == 5
        assert len(_colourbars(figs["channels.png"])) == 3 * 2  # 10 channels: two blocks of 8 columns
        slices_titles = [ax.get_title() for ax in figs["slices.png"].axes if ax.get_title()]
        assert slices_titles[:2] == ["z=0 (input)", "z=1"]
        chan = figs["channels.png"]
        titles = {ax.get_title() for ax in chan.axes}
        assert {f"channel {i}" for i in range(10)} <= titles and "channel 10" not in titles
        rows = {ax.get_ylabel() for ax in chan.axes}
        assert {"step 0 (input)", "step 4", "change (step 4 − 0)"} <= rows
        act = figs["activity.png"].axes
        assert all(ax.get_title() and ax.get_xlabel() and ax.get_ylabel() for ax in act)
    finally:
        for fig in figs.values():
            plt.close(fig)


def test_each_z_slice_has_its_own_colour_scale():
    """The bright input face must not set the scale of the slices inside the lattice."""
    import matplotlib.pyplot as plt

    from cellnet_lattice.viz import figures, slice_limits

    states = _states()
    norms = [s.norm(dim=-1) for s in states]
    limits = slice_limits(norms, [0, 2, 4], [0, 1, 2, 3, 4])
    assert limits[0] > 20 * max(limits[1:])
    for z, hi in enumerate(limits):
        assert hi == pytest.approx(max(float(norms[t][:, :, z].max()) for t in (0, 2, 4)))
    figs = figures(states, steps=[0, 2, 4])
    try:
        grid = [ax for ax in figs["slices.png"].axes if ax.images]
        assert len(grid) == 3 * 5
        # row-major: column c of every row shares its slice's limit; the columns differ
        for i, ax in enumerate(grid):
            lo, hi = ax.images[0].get_clim()
            assert lo == 0.0 and hi == pytest.approx(limits[i % 5])
        # the inside slices use a good part of their colour range at the last step
        last_inside = grid[2 * 5 + 3].images[0].get_array()
        assert float(last_inside.max()) / limits[3] > 0.9
    finally:
        for fig in figs.values():
            plt.close(fig)


def test_slice_limits_of_an_empty_slice_is_one():
    from cellnet_lattice.viz import slice_limits

    assert slice_limits([torch.zeros(2, 2, 2)], [0], [0, 1]) == [1.0, 1.0]


def test_io_slices_names_the_surface_faces(registry, randomise):
    from cellnet_lattice.viz import io_slices

    pipe = _pipeline(registry, randomise)
    assert io_slices(pipe.reshaper, (5, 5, 6)) == {0: "input", 5: "read"}
    assert io_slices(object(), (5, 5, 6)) == {}


def test_a_lattice_with_no_steps_and_one_slice_still_draws(tmp_path):
    from cellnet_lattice.viz import render_states

    files = render_states([torch.randn(3, 3, 1, 2)], tmp_path)
    assert all(f.stat().st_size > 2000 for f in files)


def test_an_elongated_slice_fills_its_panel_instead_of_a_hairline():
    """A permuted lattice of shape (384, 1, 1) would otherwise draw 1-pixel-high images."""
    import matplotlib.pyplot as plt

    from cellnet_lattice.viz import figures

    figs = figures([torch.randn(40, 1, 1, 2), torch.randn(40, 1, 1, 2)])
    try:
        for name in ("slices.png", "channels.png"):
            panels = [ax for ax in figs[name].axes if ax.images]
            assert panels and all(ax.get_aspect() == "auto" for ax in panels), name
        square = [ax for ax in figures(_states())["slices.png"].axes if ax.images]
        assert all(ax.get_aspect() == 1.0 for ax in square)
    finally:
        plt.close("all")
