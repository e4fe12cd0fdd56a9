"""PNG pictures of the lattice state for one text (matplotlib, Agg backend; no display needed).

:func:`render` writes, into ``out_dir``:

``slices.png``    rows = chosen steps, columns = Z-slices; each pixel is a cell's state norm
                  ``‖s[x, y, z, :]‖``. **Each column (Z-slice) has its own colour scale**, shared by
                  all its steps and shown by its colour bar, so the inside of the lattice stays visible
                  beside the face that received the input (which is often ten times brighter).
``change.png``    the same grid for ``‖s_t[x, y, z, :] − s_0[x, y, z, :]‖``: what the lattice dynamics
                  changed relative to the input field, again one colour scale per Z-slice.
``activity.png``  per step: mean ``‖state‖`` of each Z-slice (log scale; an all-zero slice is left
                  out), and the largest change of any state value from the previous step (log
                  scale when it spans decades).
``channels.png``  one column per channel (up to 16), at the Z-slice that changed most: the input
                  (step 0), the last step, and their difference, with symmetric colour scales (blue
                  negative, red positive) and a colour bar per row.

Slices are drawn with ``x`` to the right and ``y`` up. When the reshaper writes or reads one
Z-slice only (the ``surface`` reshaper on a ``z=…`` face), the slice titles say ``input`` /
``read`` there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

#: the files :func:`render_states` writes, in order
FILES = ("slices.png", "change.png", "activity.png", "channels.png")
_MAX_CHANNELS = 16
_MIN_WIDTH = 6.5  # inches: room for the two-line titles however few panels there are


def _aspect(x: int, y: int) -> str:
    """``equal`` pixels, unless a slice is so elongated (``384×1``) that it would be a hairline."""
    return "auto" if max(x, y) > 4 * min(x, y) else "equal"


def _pick_steps(total: int, steps: Sequence[int] | None) -> list[int]:
    if steps:
        return sorted({min(max(int(s), 0), total) for s in steps})
    if total <= 5:
        return list(range(total + 1))
    return sorted({0, total // 4, total // 2, (3 * total) // 4, total})


def _pick_slices(z: int, most: int = 6) -> list[int]:
    if z <= most:
        return list(range(z))
    return sorted({round(i * (z - 1) / (most - 1)) for i in range(most)})


def slice_limits(maps: Sequence[torch.Tensor], steps: Sequence[int], zs: Sequence[int]) -> list[float]:
    """Per-slice colour limits: for each ``z`` in ``zs`` the largest value of ``maps[t][:, :, z]``
    over ``t`` in ``steps`` (``maps[t]`` is ``[X, Y, Z]``, non-negative). A slice that is all zero
    gets ``1.0`` so that it is drawn black rather than with a degenerate scale."""
    out = []
    for z in zs:
        hi = max(float(maps[t][:, :, z].max()) for t in steps)
        out.append(hi if hi > 0 else 1.0)
    return out


def io_slices(reshaper: Any, shape: Sequence[int]) -> dict[int, str]:
    """``{z: "input" | "read" | "input, read"}`` for the Z-slices that hold all of the reshaper's
    input (``in_index``) or read-out (``out_index``) cells, when those lie in a single Z-slice.
    Reshapers without flat ``in_index``/``out_index`` buffers give ``{}``."""
    Z = int(shape[2])
    marks: dict[int, list[str]] = {}
    for attr, word in (("in_index", "input"), ("out_index", "read")):
        idx = getattr(reshaper, attr, None)
        if not isinstance(idx, torch.Tensor) or idx.numel() == 0:
            continue
        zs = torch.unique(idx.detach().cpu() % Z)
        if zs.numel() == 1:
            marks.setdefault(int(zs[0]), []).append(word)
    return {z: ", ".join(words) for z, words in marks.items()}


def _slice_title(z: int, marks: Mapping[int, str]) -> str:
    return f"z={z}" + (f" ({marks[z]})" if z in marks else "")


def _grid_figure(maps: Sequence[torch.Tensor], steps: Sequence[int], zs: Sequence[int], marks: Mapping[int, str],
                 suptitle: str, bar_label: str, cmap: str):
    """Rows = ``steps``, columns = ``zs``; one colour scale and one horizontal colour bar per column."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    limits = slice_limits(maps, steps, zs)
    X, Y = maps[0].shape[:2]
    aspect = _aspect(X, Y)
    size = (max(2.0 * len(zs) + 0.9, _MIN_WIDTH), 1.9 * len(steps) + 1.6)
    fig, axes = plt.subplots(len(steps), len(zs), figsize=size, squeeze=False, layout="constrained")
    for c, (z, hi) in enumerate(zip(zs, limits)):
        im = None
        for r, t in enumerate(steps):
            ax = axes[r][c]
            im = ax.imshow(maps[t][:, :, z].numpy().T, vmin=0.0, vmax=hi, cmap=cmap, origin="lower",
                           interpolation="nearest", aspect=aspect)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(_slice_title(z, marks), fontsize=9)
            if c == 0:
                ax.set_ylabel(f"step {t}", fontsize=9)
        bar = fig.colorbar(im, ax=axes[:, c], location="bottom", shrink=0.9, aspect=12, pad=0.02)
        bar.ax.tick_params(labelsize=7)
        bar.locator = MaxNLocator(3)
        bar.update_ticks()
        if c == 0:
            bar.set_label(bar_label, fontsize=8)
    axes[-1][0].set_xlabel("x →   (y ↑)", fontsize=8)
    fig.suptitle(suptitle, fontsize=10)
    return fig


def figures(states: Sequence[torch.Tensor], steps: Sequence[int] | None = None, title: str = "",
            marks: Mapping[int, str] | None = None) -> dict[str, Any]:
    """The four matplotlib figures of :func:`render_states`, by file name (not saved, not closed).

    ``states``: ``[X, Y, Z, C]`` or ``[1, X, Y, Z, C]`` tensors, index = step (``0`` = the input
    field). ``steps``: rows of the slice grids (default: about five from ``0`` to the last).
    ``marks``: ``{z: label}`` added to slice titles (see :func:`io_slices`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    marks = dict(marks or {})
    sts = [s[0] if s.dim() == 5 else s for s in states]
    sts = [s.detach().float().cpu() for s in sts]
    total = len(sts) - 1
    chosen = _pick_steps(total, steps)
    X, Y, Z, C = sts[0].shape
    zs = _pick_slices(Z)
    name = f"lattice {X}×{Y}×{Z}, {C} channel{'s' if C != 1 else ''}" + (f": {title}" if title else "")
    norms = [s.norm(dim=-1) for s in sts]  # [X, Y, Z]
    deltas = [(s - sts[0]).norm(dim=-1) for s in sts]  # [X, Y, Z]
    figs: dict[str, Any] = {}

    figs["slices.png"] = _grid_figure(
        norms, chosen, zs, marks, f"{name}\n‖state‖ per cell; each z-slice has its own colour scale",
        "‖state‖", "magma")
    later = [t for t in chosen if t > 0] or [0]
    figs["change.png"] = _grid_figure(
        deltas, later, zs, marks, f"{name}\nchange from the input ‖state_t − state_0‖; own scale per z-slice",
        "‖state_t − state_0‖", "viridis")

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    per_slice = torch.stack([n.mean(dim=(0, 1)) for n in norms])  # [T+1, Z]
    for z in _pick_slices(Z, most=8):
        ys = per_slice[:, z].clone()
        ys[ys <= 0] = float("nan")  # an empty slice (the inside at step 0) has no place on a log axis
        a1.plot(range(len(sts)), ys.numpy(), marker="o", ms=3, label=_slice_title(z, marks))
    a1.set_yscale("log")
    a1.set_xlabel("step"), a1.set_ylabel("mean ‖state‖ of the slice")
    a1.set_title("activity per z-slice", fontsize=10)
    a1.legend(fontsize=7, ncol=2)
    if total > 0:
        change = [max(float((sts[t] - sts[t - 1]).abs().max()), 1e-12) for t in range(1, len(sts))]
        a2.plot(range(1, len(sts)), change, marker="o", color="tab:red")
        if max(change) > 20 * min(change):  # log only where the values span decades
            a2.set_yscale("log")
    else:
        a2.text(0.5, 0.5, "no steps ran", ha="center", va="center", transform=a2.transAxes)
    a2.set_xlabel("step t"), a2.set_ylabel("max |state_t − state_{t−1}|")
    a2.set_title("largest change per step", fontsize=10)
    fig.suptitle(name, fontsize=10)
    figs["activity.png"] = fig

    change_z = int(torch.stack([d.mean(dim=(0, 1)) for d in deltas]).sum(0).argmax()) if total else Z // 2
    first, last = sts[0][:, :, change_z], sts[-1][:, :, change_z]  # [X, Y, C]
    nc = min(C, _MAX_CHANNELS)
    cols = min(nc, 8)
    blocks = (nc + cols - 1) // cols
    kinds = [("step 0 (input)", first), (f"step {total}", last), (f"change (step {total} − 0)", last - first)]
    size = (max(1.55 * cols + 1.4, _MIN_WIDTH), 1.55 * 3 * blocks + 0.9)
    fig, axes = plt.subplots(3 * blocks, cols, figsize=size, squeeze=False, layout="constrained")
    lim_state = float(torch.cat([first[..., :nc], last[..., :nc]]).abs().max()) or 1.0
    lim_change = float((last - first)[..., :nc].abs().max()) or 1.0
    for b in range(blocks):
        for k, (label, arr) in enumerate(kinds):
            r = 3 * b + k
            lim = lim_change if k == 2 else lim_state
            im = None
            for j in range(cols):
                ax = axes[r][j]
                ax.set_xticks([]), ax.set_yticks([])
                ch = b * cols + j
                if ch >= nc:
                    ax.axis("off")
                    continue
                im = ax.imshow(arr[..., ch].numpy().T, cmap="coolwarm", vmin=-lim, vmax=lim, origin="lower",
                               interpolation="nearest", aspect=_aspect(X, Y))
                if k == 0:
                    ax.set_title(f"channel {ch}", fontsize=8)
                if j == 0:
                    ax.set_ylabel(label, fontsize=8)
            bar = fig.colorbar(im, ax=axes[r, :], location="right", shrink=0.9, aspect=8, pad=0.01)
            bar.ax.tick_params(labelsize=7)
    where = _slice_title(change_z, marks)
    more = f" (first {nc} of {C} channels)" if C > nc else ""
    fig.suptitle(f"{name}\nchannel values at {where}, the slice that changed most{more}; "
                 f"input and step {total} share a colour scale", fontsize=9)
    figs["channels.png"] = fig
    return figs


def render_states(states: Sequence[torch.Tensor], out_dir: str | Path, steps: Sequence[int] | None = None,
                  title: str = "", marks: Mapping[int, str] | None = None) -> list[Path]:
    """Draw a list of states ``[X, Y, Z, C]`` (or ``[1, X, Y, Z, C]``), index = step, into
    ``out_dir``; return the PNG paths in the order of :data:`FILES`."""
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    for fname, fig in figures(states, steps, title, marks).items():
        files.append(out / fname)
        fig.savefig(files[-1], dpi=90)
        plt.close(fig)
    return files


def render(pipeline, text: str, out_dir: str | Path, steps: Sequence[int] | None = None) -> list[Path]:
    """Encode ``text``, run the pipeline's lattice with :meth:`LatticeCore.trace` and draw the
    states at ``steps`` (default: about five steps from 0 to the last). Returns the PNG paths."""
    from cellnet_core.errors import ConfigError

    core = pipeline.core
    if not hasattr(core, "trace"):
        raise ConfigError("viz: the pipeline's core has no trace(): it is not a lattice")
    pipeline.eval()
    with torch.no_grad():
        emb = pipeline.encode([text]).to(pipeline.device)
        states = core.trace(pipeline.reshaper.to_field(emb))
    short = text if len(text) <= 60 else text[:57] + "..."
    marks = io_slices(pipeline.reshaper, states[0].shape[1:4])
    return render_states(states, out_dir, steps, title=repr(short), marks=marks)
