"""Exceptions. Every :class:`CellnetError` is a *user* error: the CLI prints its message on one
line and exits with code 2, no traceback. Anything else is a bug and exits 1."""

from __future__ import annotations


class CellnetError(Exception):
    """Base class of user-facing errors (bad config, bad input, damaged files)."""


class ConfigError(CellnetError):
    """A config file or override is invalid. The message starts with ``file: dotted.path:``."""


class UnknownComponentError(CellnetError, KeyError):
    """A name that no plugin registered for that kind."""

    def __str__(self) -> str:  # KeyError would add quotes around the message
        return str(self.args[0]) if self.args else ""


class DuplicateComponentError(CellnetError):
    """Two plugins registered the same (kind, name)."""


class MissingDependencyError(CellnetError):
    """A registered component whose optional dependency is not installed."""


class CheckpointError(CellnetError):
    """A run directory file is missing, damaged or does not match the manifest."""


class DataError(CellnetError):
    """A dataset file is unreadable or malformed; the message names file and line."""
