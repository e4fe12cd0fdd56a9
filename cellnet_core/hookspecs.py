"""Hook specifications. Every hook is prefixed ``cellnet_``.

A plugin is a module (usually ``cellnet_<x>.plugin``) exposed under the entry-point group
``cellnet.plugins`` that implements one or more of these hooks with :data:`hookimpl`::

    from cellnet_core import hookimpl

    @hookimpl
    def cellnet_register_components(registry):
        registry.add("encoder", "myenc", MyEncoderConfig, "my_pkg.encoder:build",
                     summary="my encoder")

Adding an argument to a spec later is backwards compatible (implementations may declare fewer);
renaming or removing one is not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # type-only imports keep this module cheap to import
    from cellnet_core.commands import CommandRegistry
    from cellnet_core.registry import Registry

PROJECT = "cellnet"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def cellnet_register_components(registry: "Registry") -> None:
    """Add components to ``registry`` with ``registry.add(kind, name, config_cls, factory, ...)``.

    The only way to add parts. Return nothing. Factories may be given as ``"module:attr"``
    strings so that listing and validating import no model code. Kinds
    (``cellnet_core.registry.KINDS``): ``encoder``, ``reshaper``, ``core``, ``kernel``,
    ``decoder``, ``strategy``, ``dataset``, and, since 0.2, ``cell`` (a lattice's update rule,
    ``core.cell``) and ``loss`` (a training objective, ``training.loss``).

    Added in 0.1.
    """


@hookspec
def cellnet_register_commands(cli: "CommandRegistry") -> None:
    """Add subcommands to ``cellnet``, or options to an existing one. Return nothing.

    ``cli.add_command(name, *, help, configure, run, examples="", description=None)`` adds
    ``cellnet NAME``: ``configure(parser)`` adds its arguments to the subparser, ``run(args)``
    returns the exit code, and a :class:`~cellnet_core.errors.CellnetError` raised from ``run``
    becomes one ``error: …`` line and exit code 2. ``cli.add_options(command, configure, run=None)``
    adds options to an existing subcommand; its ``run(args)``, when given, is called before the
    command's own run and returns an exit code to take the run over, or ``None`` to let the command
    proceed (the training plugin's ``train --nproc N`` launches N workers this way). ``args.argv``
    holds the command line's arguments (without the program name).

    Called once per plugin, one plugin at a time, when the command line is built: a plugin whose
    hook raises, or that adds a command name already taken (by the core or another plugin), loses
    its commands and is reported as failed; every other command keeps working. ``cellnet --help``
    names the plugin beside each command. Import heavy modules inside ``run``, not here, so that
    ``cellnet --help`` stays fast. See :mod:`cellnet_core.commands`.

    Added in 0.2.
    """


@hookspec
def cellnet_eval_baselines() -> list[Any]:
    """Return baseline objects for ``cellnet eval`` (see :class:`cellnet_core.evaluation.Baseline`).

    Each has ``name``, ``fit(train_q, train_a, pipeline)`` and ``predict(q) -> Tensor[B, D]``.
    The core provides ``identity``, ``mean`` and ``ridge``. Added in 0.1.
    """


@hookspec
def cellnet_on_epoch_end(run_dir: str, epoch: int, metrics: dict[str, float]) -> None:
    """Observer: called by training strategies after each epoch with that epoch's metrics.

    Added in 0.1.
    """


@hookspec
def cellnet_on_train_end(run_dir: str, result: Any) -> None:
    """Observer: called once after ``cellnet train`` finished and saved the run. Added in 0.1."""


@hookspec
def cellnet_on_eval_end(run_dir: str, result: dict[str, Any]) -> None:
    """Observer: called after :func:`cellnet_core.api.evaluate` measured a saved run (``cellnet
    eval``), with the run's directory and the result (``data``, ``rows``, ``compare``…) as
    :func:`~cellnet_core.api.evaluate` returns it. Trackers log the table; the model card shows it.

    Added in 0.1.
    """
