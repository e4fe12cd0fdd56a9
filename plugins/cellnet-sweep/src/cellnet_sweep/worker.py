"""One local worker of ``cellnet sweep --workers N``: ``python -m cellnet_sweep.worker SWEEP --storage URL --dir DIR``.

Runs trials on the shared study until it has its trials, then exits; the parent writes the outputs.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    """Run trials of the sweep's shared study as worker ``--index``; exit 2 with one line on a user error."""
    p = argparse.ArgumentParser(prog="python -m cellnet_sweep.worker")
    p.add_argument("sweep")
    p.add_argument("--storage", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--index", type=int, default=0)
    args = p.parse_args(argv)
    threads = os.environ.get("CELLNET_SWEEP_THREADS")
    if threads:
        import torch

        torch.set_num_threads(max(1, int(threads)))
    from cellnet_core.errors import CellnetError

    from cellnet_sweep.sweep import load_sweep, work

    try:
        sweep = load_sweep(args.sweep, storage=args.storage, directory=args.dir)
        sweep.echo = lambda line: print(f"[worker {args.index}] {line}", file=sys.stderr, flush=True)
        work(sweep, worker=args.index + 1)
    except CellnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
