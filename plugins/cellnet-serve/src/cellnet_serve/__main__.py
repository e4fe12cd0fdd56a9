"""``python -m cellnet_serve RUN [options]``: the same as ``cellnet serve`` (e.g. for a process
manager that starts Python modules)."""

from __future__ import annotations

import argparse
import os
import sys

from cellnet_core.errors import CellnetError

from cellnet_serve.command import DESCRIPTION, EXAMPLES, configure, run


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, serve; a :class:`~cellnet_core.errors.CellnetError` is one line and exit 2."""
    p = argparse.ArgumentParser(prog="python -m cellnet_serve", description=DESCRIPTION,
                                epilog="examples:\n" + EXAMPLES.replace("cellnet serve", "python -m cellnet_serve"),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except CellnetError as exc:
        if os.environ.get("CELLNET_DEBUG"):
            raise
        print(f"error: {str(exc).strip()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
