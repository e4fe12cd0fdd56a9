"""Subcommands of ``cellnet`` that plugins add through the ``cellnet_register_commands`` hook.

A plugin's ``plugin.py`` brings its command with it (as simonw/llm's ``register_commands``)::

    from cellnet_core import hookimpl

    @hookimpl
    def cellnet_register_commands(cli):
        cli.add_command("viz", help="PNG pictures of the lattice state for one text",
                        configure=configure, run=run,
                        examples='  cellnet viz runs/demo "how are you?"')

so the core never imports a plugin to offer its command: a missing plugin is a missing command.
:class:`CommandRegistry` is what the hook receives; :func:`collect_commands` calls each plugin's
hook on its own, so a plugin whose registration raises is reported and the others' commands stay.
``cellnet_core.cli`` turns the registry into the argument parser.
"""

from __future__ import annotations

import argparse
import difflib
import re
from dataclasses import dataclass
from typing import Any, Callable

from cellnet_core.errors import CellnetError

#: The provider name of the commands that ``cellnet_core`` itself defines.
CORE = "core"

_NAME = re.compile(r"^[a-z][a-z0-9-]*$")

Configure = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]
OptionRun = Callable[[argparse.Namespace], "int | None"]


class CommandError(CellnetError):
    """A command registration the registry refuses: a taken or malformed name, options for a
    command that does not exist."""


@dataclass(frozen=True)
class Command:
    """One ``cellnet NAME`` subcommand and the plugin that provides it (``core`` for the built-ins)."""

    name: str
    help: str
    configure: Configure | None
    run: Run
    examples: str = ""
    description: str | None = None
    plugin: str = "?"


@dataclass(frozen=True)
class CommandOptions:
    """Options a plugin adds to an existing subcommand, and optionally its take-over of the run."""

    command: str
    configure: Configure
    run: OptionRun | None = None
    plugin: str = "?"
    examples: str = ""


class CommandRegistry:
    """What ``cellnet_register_commands(cli)`` receives: plugins add subcommands and options here.

    Every entry remembers the plugin whose hook added it (:attr:`current_plugin`, set around each
    plugin's call). Names are unique: a command name that is taken, by the core or by another
    plugin, raises :class:`CommandError` naming both providers.
    """

    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}
        self._options: list[CommandOptions] = []
        #: Name of the plugin whose hook is running; set by :func:`collect_commands`.
        self.current_plugin: str = "?"

    def add_command(self, name: str, *, help: str, configure: Configure, run: Run, examples: str = "",
                    description: str | None = None) -> None:
        """Add ``cellnet NAME``.

        ``configure(parser)`` adds the command's arguments to its subparser (every option with a
        ``help``); ``run(args)`` does the work and returns the exit code; a
        :class:`~cellnet_core.errors.CellnetError` raised from it becomes one ``error: …`` line and
        exit code 2, like the core's commands. ``help`` is the one-line summary in ``cellnet --help``,
        ``examples`` the indented example lines under the command's ``--help`` (each starting
        ``  cellnet NAME``), ``description`` a longer text (default: ``help`` as a sentence). Keep
        heavy imports inside ``run`` so that ``cellnet --help`` stays fast.
        """
        if not isinstance(name, str) or not _NAME.match(name):
            raise CommandError(f"command name {name!r}: use lower-case letters, digits and '-', starting "
                               "with a letter")
        if not callable(configure) or not callable(run):
            raise CommandError(f"command '{name}': configure and run must be callables")
        taken = self._commands.get(name)
        if taken is not None:
            raise CommandError(f"command '{name}' is provided by {_who(taken.plugin)} already; "
                               f"plugin '{self.current_plugin}' cannot add it too")
        self._commands[name] = Command(name, help, configure, run, examples, description, self.current_plugin)

    def add_options(self, command: str, configure: Configure, *, run: OptionRun | None = None,
                    examples: str = "") -> None:
        """Add options to the existing subcommand ``command`` (a core command, or one that a plugin
        registered before this one).

        ``configure(parser)`` adds the options to that command's subparser. ``run(args)``, when
        given, is called before the command's own run on every invocation of ``command``: it returns
        an exit code to take the run over (e.g. ``cellnet train --nproc 2`` launching workers) or
        ``None`` to let the command proceed as usual (e.g. when its option was not given). Options
        of several plugins are consulted in the order the plugins were loaded. ``examples`` are
        lines added to the command's examples.
        """
        if not callable(configure) or (run is not None and not callable(run)):
            raise CommandError(f"options for '{command}': configure and run must be callables")
        if command not in self._commands:
            close = difflib.get_close_matches(command, self.names(), n=1)
            raise CommandError(f"options for unknown command '{command}'; commands: {', '.join(self.names())}"
                               + (f"; did you mean '{close[0]}'?" if close else ""))
        self._options.append(CommandOptions(command, configure, run, self.current_plugin, examples))

    # -- reading --------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every command name, in the order added (the core's first)."""
        return list(self._commands)

    def commands(self) -> list[Command]:
        """Every command, in the order added."""
        return list(self._commands.values())

    def get(self, name: str) -> Command:
        """The command ``name`` (KeyError when there is none)."""
        return self._commands[name]

    def options(self, command: str | None = None) -> list[CommandOptions]:
        """The options plugins added (to ``command`` only, when given), in the order added."""
        return [o for o in self._options if command is None or o.command == command]

    def runner(self, name: str) -> Run:
        """What running ``cellnet NAME`` calls: each option's take-over in turn, then the command."""
        command = self._commands[name]
        takeovers = [o.run for o in self.options(name) if o.run is not None]
        if not takeovers:
            return command.run

        def run(args: argparse.Namespace) -> int:
            for takeover in takeovers:
                rc = takeover(args)
                if rc is not None:
                    return int(rc)
            return command.run(args)

        return run

    def remove_plugin(self, plugin: str) -> None:
        """Drop everything ``plugin`` added (its registration failed half-way)."""
        self._commands = {n: c for n, c in self._commands.items() if c.plugin != plugin}
        self._options = [o for o in self._options if o.plugin != plugin and o.command in self._commands]


def _who(plugin: str) -> str:
    return "the core" if plugin == CORE else f"plugin '{plugin}'"


def report_failure(pm: Any, plugin: str, error: str) -> str:
    """Record in the discovery report of ``pm`` (a :class:`~cellnet_core.plugins.CellnetPluginManager`)
    that ``plugin``'s commands failed, so that ``cellnet plugins`` lists it as failed; return the
    warning line to print."""
    for info in pm.report.plugins:
        if info.name == plugin:
            info.error = f"{info.error}; {error}" if info.error else error
    return f"plugin '{plugin}': {error} (its commands are not available)"


def collect_commands(pm: Any, cli: CommandRegistry) -> list[str]:
    """Call the ``cellnet_register_commands`` of every plugin of ``pm`` (a
    :class:`~cellnet_core.plugins.CellnetPluginManager`) into ``cli``, one plugin at a time.

    A plugin whose hook raises (a name clash included) loses what it added so far, its discovery
    record (``pm.report``) gets the error, so ``cellnet plugins`` lists it as failed, and the other
    plugins' commands stay. Returns one warning line per failed plugin.
    """
    failed = {p.name for p in pm.report.plugins if p.error}
    order = {p.name: i for i, p in enumerate(pm.report.plugins)}
    impls = sorted(pm.hook.cellnet_register_commands.get_hookimpls(), key=lambda h: order.get(h.plugin_name, 1 << 30))
    warnings = []
    for impl in impls:
        if impl.plugin_name in failed:
            continue
        cli.current_plugin = impl.plugin_name
        try:
            impl.function(**({"cli": cli} if "cli" in impl.argnames else {}))
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - reported; the other plugins still register
            cli.remove_plugin(impl.plugin_name)
            warnings.append(report_failure(pm, impl.plugin_name,
                                           f"cellnet_register_commands raised {type(exc).__name__}: {exc}"))
    cli.current_plugin = "?"
    return warnings
