"""``cellnet viz``: PNG pictures of a lattice run's state for one text.

Registered by :mod:`cellnet_lattice.plugin` through ``cellnet_register_commands``; matplotlib, torch
and the run are loaded only when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "PNG pictures of the lattice state for one text"
EXAMPLES = '  cellnet viz runs/demo "how are you?"\n  cellnet viz runs/demo "hello" --out pictures/'


def configure_viz(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``cellnet viz``."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory whose core is a lattice")
    parser.add_argument("text", help="the question whose lattice state is drawn")
    parser.add_argument("--out", metavar="DIR", help="output folder (default RUN_DIR/viz)")


def run_viz(args: argparse.Namespace) -> int:
    """Draw the run's lattice state for ``args.text`` into ``args.out``; print each file written."""
    from cellnet_core.errors import ConfigError
    from cellnet_core.pipeline import Pipeline
    from cellnet_core.plugins import load

    from cellnet_lattice.viz import render

    _, registry = load()
    pipe = Pipeline.load(args.run_dir, registry)
    if not hasattr(pipe.core, "trace"):
        raise ConfigError(f"viz: the run's core '{pipe.config.core.name}' is not a lattice (nothing to draw)")
    out = Path(args.out or Path(args.run_dir) / "viz")
    for f in render(pipe, args.text, out):
        print(f)
    return 0
