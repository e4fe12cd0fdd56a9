"""Entry of each training process: runs the ``cellnet`` command line with the arguments it was given.

Started by :func:`cellnet_training.distributed.launch` (``cellnet train --nproc N``), which prepares
the run's partial directory before the workers start, or directly by ``torchrun`` (one machine or
several)::

    torchrun --standalone --nproc-per-node 2 -m cellnet_training.worker train CONFIG --run-dir RUN
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 4 --rdzv-backend c10d \\
             --rdzv-endpoint HOST:29400 --rdzv-id RUN_ID -m cellnet_training.worker train CONFIG --run-dir RUN

Under ``torchrun`` the process of global rank 0 takes the run directory's lock and prepares its
partial directory (what ``--nproc`` does before launching); the other ranks wait for it to appear
(on several machines ``RUN`` must be on a file system they all see) and all then train into it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any


def external_launch(argv: list[str], wait_s: float = 600.0) -> Any:
    """Prepare a ``train`` started by an outside launcher (``RANK``/``WORLD_SIZE`` set, no partial
    directory handed down); return the run lock rank 0 holds (``None`` elsewhere and otherwise)."""
    from cellnet_core import api

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or os.environ.get(api.STAGING_ENV) or not argv or argv[0] != "train":
        return None
    from cellnet_core.cli import train_target
    from cellnet_core.run import lock_run_dir, partial_dir, prepare_run_dir, target_of

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("config", nargs="?")
    p.add_argument("--run-dir")
    p.add_argument("--resume")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--restart", action="store_true")
    args, _ = p.parse_known_args(argv[1:])
    _, run_dir = train_target(args)
    target = target_of(run_dir)
    lock = None
    if int(os.environ.get("RANK", "0")) == 0:
        lock = lock_run_dir(target)
        partial = prepare_run_dir(target, overwrite=args.overwrite, resume=bool(args.resume), restart=args.restart)
    else:
        partial = partial_dir(target)
        deadline = time.monotonic() + wait_s
        while not partial.is_dir():  # rank 0 makes it; the process group forms only after that
            if time.monotonic() > deadline:
                from cellnet_core.errors import CheckpointError

                raise CheckpointError(f"{partial}: rank 0 did not prepare the run directory within {wait_s:.0f} s "
                                      f"(on several machines RUN must be on a file system every machine sees)")
            time.sleep(0.2)
    os.environ[api.STAGING_ENV], os.environ[api.TARGET_ENV] = str(partial), str(target)
    return lock


def main(argv: list[str] | None = None) -> int:
    """Run ``cellnet`` with ``argv`` (default: this process's arguments); return its exit code."""
    from cellnet_core.cli import main as cli_main
    from cellnet_core.errors import CellnetError

    args = sys.argv[1:] if argv is None else list(argv)
    try:
        lock = external_launch(args)
    except CellnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return cli_main(args) or 0
    finally:
        if lock is not None:
            lock.release()


if __name__ == "__main__":
    sys.exit(main())
