"""Entry of each process started by :func:`cellnet_training.distributed.launch`: runs the
``cellnet`` command line with the arguments it was given."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run ``cellnet`` with ``argv`` (default: this process's arguments); return its exit code."""
    from cellnet_core.cli import main as cli_main

    return cli_main(sys.argv[1:] if argv is None else argv) or 0


if __name__ == "__main__":
    sys.exit(main())
