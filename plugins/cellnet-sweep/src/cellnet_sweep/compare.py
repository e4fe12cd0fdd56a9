"""``cellnet compare RUN [RUN…]``: the runs' configs (only the keys that differ) and metrics side by side,
and a PNG of their validation curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cellnet_core.errors import CheckpointError

from cellnet_sweep.card import EVAL_FILE, metrics_rows
from cellnet_sweep.tracking import flatten


def _load(run: Path) -> dict[str, Any]:
    from cellnet_core.config import read_yaml

    if not run.is_dir():
        raise CheckpointError(f"{run}: no such run directory")
    if not (run / "config.yaml").exists():
        raise CheckpointError(f"{run}: no config.yaml here; is this a run directory made by 'cellnet train'?")
    config = flatten({k: v for k, v in read_yaml(run / "config.yaml").items() if k != "tracking"})
    try:
        manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = {}
    try:
        evaluation = json.loads((run / EVAL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        evaluation = None
    return {"config": config, "train": manifest.get("train") or {}, "eval": evaluation, "curve": metrics_rows(run)}


def _names(runs: list[Path]) -> list[str]:
    names = [r.name for r in runs]
    if len(set(names)) == len(names):
        return names
    return [str(r) for r in runs]


def compare(runs: list[str | Path], metric: str = "val_mrr") -> dict[str, Any]:
    """``{"runs": [...], "differ": {key: [value per run]}, "metrics": [{name, ...}], "same": n}``."""
    paths = [Path(r) for r in runs]
    loaded = [_load(p) for p in paths]
    names = _names(paths)
    keys = sorted({k for x in loaded for k in x["config"]})
    differ = {k: [x["config"].get(k) for x in loaded] for k in keys
              if len({json.dumps(x["config"].get(k), sort_keys=True) for x in loaded}) > 1}
    metrics = []
    for name, path, x in zip(names, paths, loaded):
        t = x["train"]
        row: dict[str, Any] = {"run": name, "path": str(path)}
        for k, v in sorted((t.get("metrics") or {}).items()):
            if k.startswith("val_"):
                row[k] = v
        row["epochs"], row["best_epoch"], row["seconds"] = t.get("epochs"), t.get("best_epoch"), t.get("seconds")
        ev = x["eval"]
        if ev and ev.get("rows"):
            for k, v in ev["rows"][0].items():
                if k not in ("name", "seconds") and isinstance(v, (int, float)):
                    row[f"test_{k}"] = v
        metrics.append(row)
    curves = {name: [(r["epoch"], r[metric]) for r in x["curve"] if isinstance(r.get(metric), (int, float))]
              for name, x in zip(names, loaded)}
    return {"runs": names, "differ": differ, "same": len(keys) - len(differ), "metrics": metrics,
            "metric": metric, "curves": curves}


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 1e15:
            return str(int(v))
        if abs(v) >= 10:  # seconds and counts: four decimals say nothing
            return f"{v:.1f}"
        return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def format_compare(result: dict[str, Any]) -> str:
    """Two text tables: the config keys that differ, then the metrics."""
    names = result["runs"]
    lines = []
    if result["differ"]:
        w = max(len(k) for k in result["differ"])
        cw = [max(len(n), *(len(_cell(v[i])) for v in result["differ"].values())) for i, n in enumerate(names)]
        lines.append(f"{'config':{w}s}  " + "  ".join(f"{n:>{cw[i]}s}" for i, n in enumerate(names)))
        for k, vals in result["differ"].items():
            lines.append(f"{k:{w}s}  " + "  ".join(f"{_cell(v):>{cw[i]}s}" for i, v in enumerate(vals)))
        lines.append(f"({result['same']} other config keys are the same)")
    else:
        lines.append(f"the configs are the same ({result['same']} keys)")
    cols = []
    for row in result["metrics"]:
        cols += [c for c in row if c not in ("run", "path") and c not in cols]
    if cols:
        w = max(len(c) for c in cols)
        cw = [max(len(n), *(len(_cell(r.get(c))) for c in cols)) for n, r in zip(names, result["metrics"])]
        lines += ["", f"{'metric':{w}s}  " + "  ".join(f"{n:>{cw[i]}s}" for i, n in enumerate(names))]
        for c in cols:
            lines.append(f"{c:{w}s}  " + "  ".join(f"{_cell(r.get(c)):>{cw[i]}s}" for i, r in enumerate(result["metrics"])))
    return "\n".join(lines)


def plot_curves(result: dict[str, Any], path: str | Path) -> Path:
    """The runs' validation curves (``result["metric"]`` per epoch) in one PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from cellnet_core.checkpoint import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    drawn = 0
    for name, pts in result["curves"].items():
        if pts:
            ax.plot(*zip(*pts), marker="o", markersize=3, label=name)
            drawn += 1
    metric = result["metric"]
    ax.set_xlabel("epoch (0 = before training)")
    ax.set_ylabel(metric)
    ax.set_title(f"validation {metric.removeprefix('val_')} per epoch")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, f"no run recorded {metric} per epoch", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
