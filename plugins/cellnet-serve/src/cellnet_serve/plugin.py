"""Registers the ``cellnet serve`` command (this module only registers: FastAPI, uvicorn and torch
are imported when the command runs, so ``cellnet --help`` stays fast)."""

from __future__ import annotations

from cellnet_core import hookimpl


@hookimpl
def cellnet_register_commands(cli) -> None:
    """Add ``cellnet serve``."""
    from cellnet_serve.command import DESCRIPTION, EXAMPLES, HELP, configure, run

    cli.add_command("serve", help=HELP, configure=configure, run=run, examples=EXAMPLES, description=DESCRIPTION)
