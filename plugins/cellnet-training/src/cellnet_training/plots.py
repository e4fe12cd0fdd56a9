"""Training curves as PNG (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

CURVES = "training_curves.png"


def plot_curves(run_dir: Path, rows: Sequence[dict[str, Any]], val_metric: str = "mrr") -> Path | None:
    """Loss (left) and validation metrics (right) per epoch → ``run_dir/training_curves.png``."""
    rows = [r for r in rows if "epoch" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from cellnet_core.checkpoint import atomic_write_bytes

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    tr = [(r["epoch"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
    if tr:
        ax1.plot(*zip(*tr), marker="o", label="train loss")
    vl = [(r["epoch"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    if vl:
        ax1.plot(*zip(*vl), marker=".", label="val loss")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.set_title("loss")
    ax1.legend() if (tr or vl) else None
    per_question = any(r.get("val_map") is not None for r in rows)
    for key in ("map", "mrr", "pooled_mrr", "recall@1", "pooled_recall@1", "recall@10", "pooled_recall@10",
                "cosine"):
        pts = [(r["epoch"], r[f"val_{key}"]) for r in rows if r.get(f"val_{key}") is not None]
        if pts:
            label = key.replace("pooled_", "pooled ")
            if per_question and key in ("map", "mrr"):
                label += " (own candidates)"
            ax2.plot(*zip(*pts), marker="o" if key == val_metric else ".",
                     linewidth=2.2 if key == val_metric else 1.0, label=label)
    best = [r.get("best_epoch") for r in rows if r.get("best_epoch") is not None]
    if best:
        ax2.axvline(best[-1], color="grey", linestyle=":", label=f"best epoch {best[-1]}")
    ax2.set_xlabel("epoch"), ax2.set_title("validation")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    path = Path(run_dir) / CURVES
    atomic_write_bytes(path, buf.getvalue())
    return path
