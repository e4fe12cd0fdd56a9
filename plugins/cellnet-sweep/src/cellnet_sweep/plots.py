"""The sweep's plots through Optuna's matplotlib backend (Agg: no display needed)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any


def _save(fig: Any, path: Path) -> None:
    import io

    from cellnet_core.checkpoint import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def sweep_plots(study: Any, directory: Path, metric: str, name: str) -> dict[str, str]:
    """``history.png``, ``importances.png`` and ``parallel.png``; returns file → path or why it is missing."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ov

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    out: dict[str, str] = {}
    plots = {
        "history.png": (lambda: ov.plot_optimization_history(study, target_name=f"mean {metric}"),
                        f"{name}: mean {metric} of each finished trial (best so far as a line; pruned ones left out)"),
        "importances.png": (lambda: ov.plot_param_importances(study, target_name=f"mean {metric}"),
                            f"{name}: parameter importances for mean {metric} (fANOVA)"),
        "parallel.png": (lambda: ov.plot_parallel_coordinate(study, target_name=f"mean {metric}"),
                         f"{name}: parameters of each finished trial, coloured by mean {metric}"),
    }
    for fname, (make, title) in plots.items():
        need = 2 if fname != "history.png" else 1
        if len(complete) < need:
            out[fname] = f"not drawn: {len(complete)} finished trial(s), {need} needed"
            continue
        try:
            with plt.rc_context({"figure.figsize": (9, 4.8), "font.size": 10}):
                ax = make()
                fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
                ax.set_title("", loc="left")  # Optuna's importances title would sit on top of ours
                ax.set_title(title, fontsize=11)
                if fname == "history.png":
                    from matplotlib.ticker import MaxNLocator

                    ax.set_xlabel("trial")
                    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                _save(fig, directory / fname)
                plt.close(fig)
            out[fname] = str(directory / fname)
        except Exception as exc:  # noqa: BLE001 - a plot that cannot be drawn says why
            out[fname] = f"not drawn: {str(exc).splitlines()[0]}"
    return out
