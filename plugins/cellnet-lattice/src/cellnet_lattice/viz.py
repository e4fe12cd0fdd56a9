"""PNG pictures of the lattice state for one text (matplotlib, Agg backend; no display needed).

:func:`render` writes, into ``out_dir``:

``slices.png``    rows = chosen steps, columns = Z-slices through the lattice; each pixel is a
                  cell's state norm ``‖s[x, y, z, :]‖`` (one colour scale for the whole figure).
``activity.png``  per step: mean |state|, max |state| and max |state change| (log scale).
``channels.png``  the final state's middle Z-slice, one panel per channel (up to 16).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch


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


def render_states(states: Sequence[torch.Tensor], out_dir: str | Path, steps: Sequence[int] | None = None,
                  title: str = "") -> list[Path]:
    """Draw a list of states ``[X, Y, Z, C]`` (or ``[1, X, Y, Z, C]``), index = step; return the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sts = [s[0] if s.dim() == 5 else s for s in states]
    sts = [s.detach().float().cpu() for s in sts]
    total = len(sts) - 1
    chosen = _pick_steps(total, steps)
    X, Y, Z, C = sts[0].shape
    zs = _pick_slices(Z)
    norms = [s.norm(dim=-1) for s in sts]  # [X, Y, Z]
    vmax = max(float(norms[t].max()) for t in chosen) or 1.0
    files: list[Path] = []

    fig, axes = plt.subplots(len(chosen), len(zs), figsize=(1.9 * len(zs) + 1.2, 1.9 * len(chosen) + 0.6),
                             squeeze=False)
    im = None
    for r, t in enumerate(chosen):
        for c, z in enumerate(zs):
            ax = axes[r][c]
            im = ax.imshow(norms[t][:, :, z].numpy(), vmin=0.0, vmax=vmax, cmap="magma", origin="lower",
                           interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(f"z={z}", fontsize=9)
            if c == 0:
                ax.set_ylabel(f"step {t}", fontsize=9)
    fig.colorbar(im, ax=axes, shrink=0.8, label="‖state‖ per cell")
    fig.suptitle(f"lattice {X}×{Y}×{Z}×{C}" + (f": {title}" if title else ""), fontsize=10)
    files.append(out / "slices.png")
    fig.savefig(files[-1], dpi=90, bbox_inches="tight")
    plt.close(fig)

    mean_abs = [float(s.abs().mean()) for s in sts]
    max_abs = [float(s.abs().max()) for s in sts]
    change = [float((sts[t] - sts[t - 1]).abs().max()) for t in range(1, len(sts))]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    a1.plot(range(len(sts)), mean_abs, marker="o", label="mean |state|")
    a1.plot(range(len(sts)), max_abs, marker=".", label="max |state|")
    a1.set_xlabel("step"), a1.legend(fontsize=8), a1.set_title("activity", fontsize=10)
    if change:
        a2.semilogy(range(1, len(sts)), [max(c, 1e-12) for c in change], marker="o", color="tab:red")
    a2.set_xlabel("step"), a2.set_title("max |state change|", fontsize=10)
    fig.tight_layout()
    files.append(out / "activity.png")
    fig.savefig(files[-1], dpi=90, bbox_inches="tight")
    plt.close(fig)

    last = sts[-1][:, :, Z // 2]  # [X, Y, C]
    nc = min(C, 16)
    cols = min(nc, 8)
    rows = (nc + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 1.8 * rows), squeeze=False)
    lim = float(last[..., :nc].abs().max()) or 1.0
    for i in range(rows * cols):
        ax = axes[i // cols][i % cols]
        ax.set_xticks([]), ax.set_yticks([])
        if i < nc:
            ax.imshow(last[..., i].numpy(), cmap="coolwarm", vmin=-lim, vmax=lim, origin="lower",
                      interpolation="nearest")
            ax.set_title(f"c{i}", fontsize=8)
        else:
            ax.axis("off")
    fig.suptitle(f"channels at step {total}, z={Z // 2}", fontsize=10)
    files.append(out / "channels.png")
    fig.savefig(files[-1], dpi=90, bbox_inches="tight")
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
    return render_states(states, out_dir, steps, title=repr(short))
