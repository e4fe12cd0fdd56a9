"""The ``cellnet sweep``, ``cellnet compare`` and ``cellnet card`` commands: arguments and what each does.

Cheap to import: Optuna, torch and matplotlib are imported when a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys

from cellnet_core.errors import ConfigError

SWEEP_HELP = "search a config space with Optuna (TPE or grid, seeds per trial, pruning, resumable)"
SWEEP_DESCRIPTION = ("Run (or continue) the sweep a SWEEP.yaml describes: a base config and a search space over "
                     "dotted config paths (the same as --set). Each trial trains its runs (one per seed) and scores "
                     "their mean validation metric. The study lives in an Optuna storage (default: SQLite in the "
                     "sweep directory); rerun the same command after a kill to continue, or point several machines "
                     "at one database URL. At the end: trials.csv/.md, best.yaml, plots, and the best config "
                     "trained once more and tested beside the baselines. Format: docs/sweeps.md.")
SWEEP_EXAMPLES = ("  cellnet sweep sweeps/default.yaml\n"
                  "  cellnet sweep sweeps/default.yaml --workers 2\n"
                  "  cellnet sweep sweeps/default.yaml --storage postgresql://me@db-host/sweeps")
COMPARE_HELP = "compare runs: the config keys that differ, their metrics, their validation curves"
COMPARE_EXAMPLES = ("  cellnet compare runs/demo runs/demo-steps12\n"
                    "  cellnet compare runs/* --json\n"
                    "  cellnet compare runs/a runs/b --plot curves.png")
CARD_HELP = "write (or rewrite) a run's model card, RUN/README.md"
CARD_EXAMPLES = "  cellnet card runs/demo\n  cellnet card runs/demo --stdout"


def configure_sweep(p: argparse.ArgumentParser) -> None:
    """The arguments of ``cellnet sweep``: the sweep file, ``--workers``, ``--storage``, ``--dir``, ``--json``."""
    p.add_argument("sweep_file", metavar="SWEEP.yaml", help="the sweep file (docs/sweeps.md)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="local processes on the study (default 1)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna storage URL (default sqlite:///DIR/study.db); any SQLAlchemy database URL")
    p.add_argument("--dir", default=None, metavar="DIR", help="sweep directory (default sweeps/<file stem>)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run_sweep(args: argparse.Namespace) -> int:
    """Run (or continue) the sweep and print its trials table and best trial (or the summary as JSON)."""
    from cellnet_sweep.sweep import load_sweep, run_sweep as _run

    if args.workers < 1:
        raise ConfigError(f"sweep: --workers must be at least 1 (got {args.workers})")
    sweep = load_sweep(args.sweep_file, storage=args.storage, directory=args.dir)
    summary = _run(sweep, workers=args.workers)
    if args.json:
        print(json.dumps(summary, indent=1, default=str))
        return 0
    print((sweep.directory / "trials.md").read_text(encoding="utf-8"))
    best = summary.get("best")
    if best:
        print(f"best trial {best['number']}: {summary['metric']} {best['value']:.4f} {json.dumps(best['params'])}")
    print(f"wrote {sweep.directory}/: trials.csv, trials.md, best.yaml, history.png, importances.png, "
          f"parallel.png" + (", best/, final.md" if summary.get("final") else ""))
    return 0


def configure_compare(p: argparse.ArgumentParser) -> None:
    """The arguments of ``cellnet compare``: run directories, ``--json``, ``--plot``, ``--metric``."""
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.add_argument("--plot", default=None, metavar="PNG", help="write the runs' validation curves to this PNG")
    p.add_argument("--metric", default="val_mrr", help="the per-epoch metric of the curves (default val_mrr)")


def run_compare(args: argparse.Namespace) -> int:
    """Print how the runs differ (config keys, metrics) and optionally plot their validation curves."""
    from cellnet_sweep.compare import compare, format_compare, plot_curves

    result = compare(args.runs, metric=args.metric)
    if args.plot:
        plot_curves(result, args.plot)
    if args.json:
        print(json.dumps({k: v for k, v in result.items()}, indent=1, default=str))
    else:
        print(format_compare(result))
    if args.plot:
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def configure_card(p: argparse.ArgumentParser) -> None:
    """The arguments of ``cellnet card``: the run directory and ``--stdout``."""
    p.add_argument("run_dir", metavar="RUN", help="a run directory made by 'cellnet train'")
    p.add_argument("--stdout", action="store_true", help="print the card instead of writing RUN/README.md")


def run_card(args: argparse.Namespace) -> int:
    """Check the run directory, then write its model card to ``RUN/README.md`` (or print it)."""
    from cellnet_core.api import check_run_dir, load_plugins

    from cellnet_sweep.card import render, write_card

    check_run_dir(args.run_dir)
    registry = load_plugins().registry
    if args.stdout:
        print(render(args.run_dir, registry))
    else:
        print(f"wrote {write_card(args.run_dir, registry)}")
    return 0
