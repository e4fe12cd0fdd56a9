"""Plugin discovery through pluggy and the ``cellnet.plugins`` entry-point group.

:func:`create_plugin_manager` builds a fresh manager every call (no module-global state).
Environment switches:

- ``CELLNET_DISABLE_PLUGIN_AUTOLOAD=1``: load only the built-in plugin (and ``CELLNET_LOAD_PLUGINS``).
- ``CELLNET_LOAD_PLUGINS=a,b``: entry-point names to load even when autoload is off.
- ``CELLNET_DISABLED_PLUGINS=a,b``: entry-point names never to load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from cellnet_core import hookspecs
from cellnet_core.registry import Registry

ENTRY_POINT_GROUP = "cellnet.plugins"
BUILTIN_NAME = "builtin"


@dataclass
class PluginInfo:
    """One discovered plugin: entry-point name, version, module, distribution, hooks, error and
    parts provided."""

    name: str
    version: str
    module: str
    distribution: str
    hooks: list[str] = field(default_factory=list)
    error: str | None = None
    provides: list[str] = field(default_factory=list)


@dataclass
class PluginReport:
    """What discovery found: loaded plugins, failures and warnings."""

    plugins: list[PluginInfo] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[PluginInfo]:
        """The plugins whose import or registration failed."""
        return [p for p in self.plugins if p.error]


class CellnetPluginManager(pluggy.PluginManager):
    """A pluggy manager that also keeps the discovery report."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.report = PluginReport()


def _split_env(var: str) -> set[str]:
    return {s.strip() for s in os.environ.get(var, "").split(",") if s.strip()}


def _cellnet_hooks(plugin: Any) -> list[str]:
    return sorted(n for n in dir(plugin) if n.startswith("cellnet_") and callable(getattr(plugin, n, None)))


def register_plugin(pm: CellnetPluginManager, plugin: ModuleType | Any, name: str, version: str = "",
                    distribution: str = "") -> PluginInfo:
    """Register one plugin object, recording which hooks it implements."""
    info = PluginInfo(name, version, getattr(plugin, "__name__", type(plugin).__name__), distribution)
    pm.register(plugin, name=name)
    info.hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
    if not info.hooks:
        defined = _cellnet_hooks(plugin)
        why = (f"functions {', '.join(defined)} lack @hookimpl" if defined else "it implements no cellnet_* hook")
        pm.report.warnings.append(f"plugin '{name}' ({info.module}) does nothing: {why}")
    pm.report.plugins.append(info)
    return info


def create_plugin_manager(autoload: bool | None = None) -> CellnetPluginManager:
    """Create a plugin manager: the built-in plugin, then entry points of ``cellnet.plugins``.

    A plugin whose import raises is reported in ``pm.report`` (name and error) and the others
    still load.
    """
    from cellnet_core import __version__
    from cellnet_core.builtin import plugin as builtin_plugin

    pm = CellnetPluginManager()
    register_plugin(pm, builtin_plugin, BUILTIN_NAME, __version__, "cellnet-core")
    if autoload is None:
        autoload = os.environ.get("CELLNET_DISABLE_PLUGIN_AUTOLOAD", "") in ("", "0", "false", "False")
    wanted = _split_env("CELLNET_LOAD_PLUGINS")
    disabled = _split_env("CELLNET_DISABLED_PLUGINS")
    seen: set[str] = set()
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in seen or ep.name in disabled:
            continue
        if not autoload and ep.name not in wanted:
            continue
        seen.add(ep.name)
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else ""
        version = dist.version if dist is not None else ""
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 - any import failure is reported, not raised
            pm.report.plugins.append(
                PluginInfo(ep.name, version, ep.value, dist_name, error=f"{type(exc).__name__}: {exc}")
            )
            continue
        register_plugin(pm, plugin, ep.name, version, dist_name)
    return pm


def collect_registry(pm: CellnetPluginManager) -> Registry:
    """Run ``cellnet_register_components`` of every plugin into a new registry.

    Plugins are called one at a time so that each entry records who registered it; a plugin whose
    hook raises is reported and skipped.
    """
    registry = Registry()
    for info in pm.report.plugins:
        if info.error:
            continue
        plugin = pm.get_plugin(info.name)
        impl = getattr(plugin, "cellnet_register_components", None)
        if impl is None or "cellnet_register_components" not in info.hooks:
            continue
        registry.current_plugin = info.name
        before = {(e.kind, e.name) for e in registry.entries()}
        try:
            impl(registry=registry)
        except Exception as exc:  # noqa: BLE001
            if isinstance(exc, __import__("cellnet_core").DuplicateComponentError):
                raise
            info.error = f"cellnet_register_components raised {type(exc).__name__}: {exc}"
        info.provides = sorted(f"{k}:{n}" for k, n in {(e.kind, e.name) for e in registry.entries()} - before)
    registry.current_plugin = "?"
    return registry


def load(autoload: bool | None = None) -> tuple[CellnetPluginManager, Registry]:
    """Convenience: a fresh plugin manager and the registry its plugins fill."""
    pm = create_plugin_manager(autoload)
    return pm, collect_registry(pm)
