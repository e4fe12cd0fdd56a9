"""``cellnet train --nproc N``: data-parallel training in N processes on this machine.

The training plugin adds ``--nproc`` to the core's ``train`` command through
``cellnet_register_commands`` (``cli.add_options("train", configure_train, run=run_train)``).
:func:`run_train` takes the run over when N > 1: it checks the config and prepares the run's partial
directory once, then :func:`cellnet_training.distributed.launch` starts the workers, each running
``cellnet train`` without ``--nproc`` into that same directory. With N = 1 (the default) it lets
``train`` proceed as usual. torch is imported only when workers are launched.
"""

from __future__ import annotations

import argparse
import os
import sys

EXAMPLES = "  cellnet train configs/default.yaml --nproc 2"


def configure_train(parser: argparse.ArgumentParser) -> None:
    """Add ``--nproc N`` to ``cellnet train``."""
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="processes for data-parallel training on this machine (default 1; "
                             "from the cellnet-training plugin)")


def run_train(args: argparse.Namespace) -> int | None:
    """Launch ``args.nproc`` training workers and return their exit code; ``None`` (train as usual)
    for one process, and inside a worker of a launch."""
    from cellnet_core import api
    from cellnet_core.errors import ConfigError

    nproc = getattr(args, "nproc", 1)
    if nproc is None or nproc == 1 or os.environ.get(api.STAGING_ENV):
        return None
    if nproc < 1:
        raise ConfigError(f"train: --nproc must be at least 1 (got {nproc})")
    from cellnet_core.cli import train_target
    from cellnet_core.run import prepare_run_dir

    config, run_dir = train_target(args)
    plugins = api.load_plugins()
    # check and prepare once here, so that every worker writes the same partial directory
    api.load_config(config if config is not None else api.find_run_config(api.resume_source(run_dir)), args.set,
                    plugins=plugins)
    partial = prepare_run_dir(run_dir, overwrite=args.overwrite, resume=bool(args.resume), restart=args.restart)
    os.environ[api.STAGING_ENV], os.environ[api.TARGET_ENV] = str(partial), str(run_dir)
    from cellnet_training.distributed import launch

    argv = getattr(args, "argv", None)
    rc = int(launch(nproc, list(sys.argv[1:] if argv is None else argv)) or 0)
    if rc:
        print(api.interrupted_note(partial, run_dir), file=sys.stderr)
    return rc
