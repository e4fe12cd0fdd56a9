"""The component registry: (kind, name) → config class + factory.

Factories may be given as ``"package.module:attr"`` strings; they are imported only when the
component is built, so ``cellnet components`` and ``cellnet validate`` import no model code.
:meth:`Registry.config_for` validates a component's section against its registered config class;
:mod:`cellnet_core.config` builds the run config on top of this module (this one imports no config).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Any, Callable, Collection

from pydantic import ValidationError

from cellnet_core.errors import ConfigError, DuplicateComponentError, MissingDependencyError, UnknownComponentError

#: ``cell`` (a lattice's update rule) and ``loss`` (a training objective) are the smaller parts that
#: other components select by name in their own config (``core.cell``, ``training.loss``); a
#: ``tracker`` (TensorBoard, MLflow, CSV) observes a run, selected by the run config's ``tracking`` list.
KINDS: tuple[str, ...] = ("encoder", "reshaper", "core", "kernel", "decoder", "strategy", "dataset", "cell", "loss",
                          "tracker")

#: Past this many names an error shows only the closest few and points to ``cellnet components``.
_MAX_LISTED = 20


@dataclass(frozen=True)
class Entry:
    """One registered component."""

    kind: str
    name: str
    config_cls: type
    factory: Callable[..., Any] | str
    summary: str = ""
    plugin: str = "?"
    requires: tuple[str, ...] = ()
    install_hint: str | None = None

    def missing_requirements(self) -> list[str]:
        """The ``requires`` modules that cannot be imported here."""
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    def resolve_factory(self) -> Callable[..., Any]:
        """The factory, imported now if given as ``"module:attr"``; a missing requirement raises
        :class:`MissingDependencyError` with the install command."""
        missing = self.missing_requirements()
        if missing:
            hint = self.install_hint or f"pip install {' '.join(missing)}"
            raise MissingDependencyError(
                f"{self.kind} '{self.name}' needs {', '.join(missing)}, which is not installed; "
                f"install it with: {hint}"
            )
        if callable(self.factory):
            return self.factory
        module_name, _, attr = self.factory.partition(":")
        module = importlib.import_module(module_name)
        return getattr(module, attr)


def _unknown_message(kind: str, name: str, available: list[str], where: str | None) -> str:
    prefix = f"{where}: " if where else f"{kind}: "
    if not available:
        return f"{prefix}unknown '{name}'; no {kind} is registered (is its plugin installed?)"
    close = difflib.get_close_matches(name, available, n=3, cutoff=0.6)
    shown = available if len(available) <= _MAX_LISTED else close or available[:5]
    msg = f"{prefix}unknown '{name}'; available: {', '.join(shown)}"
    if len(available) > _MAX_LISTED:
        msg += f" (and {len(available) - len(shown)} more: see 'cellnet components --kind {kind}')"
    if close:
        msg += f"; did you mean '{close[0]}'?"
    return msg


def _format_loc(loc: tuple[Any, ...], sections: Collection[str]) -> str:
    parts: list[str] = []
    for i, item in enumerate(loc):
        # pydantic puts the discriminator tag (e.g. 'minilm') into the path of union members
        if i == 1 and parts and parts[0] in sections and isinstance(item, str):
            continue
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts).replace(".[", "[") or "(top level)"


def format_validation_error(err: ValidationError, source: str, prefix: str = "",
                            sections: Collection[str] = ()) -> str:
    """Render every pydantic error as ``source: dotted.path: message`` on its own line.

    ``prefix`` goes in front of every path (the section being validated); in ``sections`` (fields
    that hold a discriminated union of named parts) the union's tag is left out of the path."""
    lines = []
    for e in err.errors():
        path = _format_loc(tuple(e["loc"]), sections)
        if prefix:
            path = prefix if path == "(top level)" else f"{prefix}.{path}"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "missing":
            msg = "required field missing"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if e["type"] not in ("extra_forbidden", "missing") and "input" in e and not isinstance(e["input"], (dict, list)):
            msg += f" (got {e['input']!r})"
        lines.append(f"{source}: {path}: {msg}")
    return "\n".join(lines)


@dataclass
class Registry:
    """Holds every component the loaded plugins registered."""

    _entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in KINDS})
    #: Name of the plugin whose hook is running; set by the plugin manager around each call.
    current_plugin: str = "?"

    def add(
        self,
        kind: str,
        name: str,
        config_cls: type,
        factory: Callable[..., Any] | str,
        *,
        summary: str = "",
        requires: tuple[str, ...] | list[str] = (),
        install_hint: str | None = None,
    ) -> None:
        """Register a component.

        ``config_cls`` is a :class:`cellnet_core.config.ComponentConfig` subclass whose ``name``
        field is ``Literal[name]``. ``factory(config, ctx)`` builds the component (see
        :class:`cellnet_core.pipeline.BuildContext`); it may be a ``"module:attr"`` string.
        ``requires`` lists importable module names checked before the factory is imported.
        """
        if kind not in KINDS:
            raise UnknownComponentError(_unknown_message("kind", kind, list(KINDS), "kind"))
        existing = self._entries[kind].get(name)
        if existing is not None:
            raise DuplicateComponentError(
                f"{kind} '{name}' is registered twice: by plugin '{existing.plugin}' "
                f"and by plugin '{self.current_plugin}'"
            )
        self._entries[kind][name] = Entry(
            kind, name, config_cls, factory, summary, self.current_plugin, tuple(requires), install_hint
        )

    def get(self, kind: str, name: str, where: str | None = None) -> Entry:
        """Return the entry or raise :class:`UnknownComponentError` with the available names."""
        if kind not in KINDS:
            raise UnknownComponentError(_unknown_message("kind", kind, list(KINDS), "kind"))
        try:
            return self._entries[kind][name]
        except KeyError:
            raise UnknownComponentError(_unknown_message(kind, name, self.names(kind), where)) from None

    def kinds(self) -> tuple[str, ...]:
        """Every component kind, in pipeline order."""
        return KINDS

    def names(self, kind: str) -> list[str]:
        """The registered names of ``kind``, sorted."""
        return sorted(self._entries[kind])

    def entries(self, kind: str | None = None) -> list[Entry]:
        """Every entry of ``kind`` (all kinds when None), by kind then name."""
        kinds = KINDS if kind is None else (kind,)
        return [self._entries[k][n] for k in kinds for n in sorted(self._entries[k])]

    def describe(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Rows for ``cellnet components``: kind, name, plugin, summary, available."""
        rows = []
        for e in self.entries(kind):
            missing = e.missing_requirements()
            rows.append(
                {
                    "kind": e.kind,
                    "name": e.name,
                    "plugin": e.plugin,
                    "summary": e.summary,
                    "available": not missing,
                    "missing": missing,
                }
            )
        return rows

    def config_for(self, kind: str, data: dict[str, Any] | str, where: str | None = None, context: dict | None = None,
                   *, source: str = "config") -> Any:
        """Validate ``data`` (a mapping with ``name``, or just a name) into that component's config.

        Errors raise :class:`ConfigError` with lines ``source: where.field: message``; an unknown
        name lists the available ones. The config class sees this registry in its validation
        context (``context["registry"]``), plus ``context``.
        """
        where = where or kind
        if isinstance(data, str):
            data = {"name": data}
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: {where}: expected a mapping with a 'name' field, got {type(data).__name__}")
        if "name" not in data:
            raise ConfigError(f"{source}: {where}.name: required field missing (available: "
                              f"{', '.join(self.names(kind))})")
        try:
            entry = self.get(kind, str(data["name"]), where=where)
        except UnknownComponentError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        try:
            return entry.config_cls.model_validate(data, context={"registry": self, **(context or {})})
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, source, prefix=where)) from None

    def build(self, kind: str, config: Any, ctx: Any = None) -> Any:
        """Build a component from a validated config (or a mapping/name, validated first)."""
        if isinstance(config, (dict, str)):
            config = self.config_for(kind, config)
        entry = self.get(kind, config.name)
        return entry.resolve_factory()(config, ctx)
