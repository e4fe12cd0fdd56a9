"""Plugin discovery through pluggy and the ``cellnet.plugins`` entry-point group.

:func:`create_plugin_manager` builds a fresh manager every call (no module-global state).
Environment switches:

- ``CELLNET_DISABLE_PLUGIN_AUTOLOAD=1``: load only the built-in plugin (and ``CELLNET_LOAD_PLUGINS``).
- ``CELLNET_LOAD_PLUGINS=a,b``: entry-point names to load even when autoload is off.
- ``CELLNET_DISABLED_PLUGINS=a,b``: entry-point names never to load.

Isolation: one faulty plugin never takes the others down. Each fault is recorded in the
manager's :class:`PluginReport` (``cellnet plugins`` shows it) and the rest keeps working:

- not loaded (``PluginInfo.error``): its distribution requires a ``cellnet-core`` range the
  installed core does not satisfy; its import raises or calls ``sys.exit``; a hook
  implementation declares an argument its hook spec lacks; its ``cellnet_register_components``
  raises (then none of the parts it registered before raising are kept);
- one part disabled (``PluginInfo.problems``): a (kind, name) that is already registered (the
  earlier registrant wins: the built-in plugin first, then entry points in discovery order), an
  unknown kind, a config class that is not a :class:`~cellnet_core.config.ComponentConfig`
  subclass or whose ``name`` literal differs from the registered name;
- warnings: a ``@hookimpl`` whose name is not a cellnet hook (``cellnet_register_component``),
  a plugin that implements no hook;
- at call time: an observer hook (``cellnet_on_epoch_end``, ``cellnet_on_train_end``) that
  raises is reported as one ``warning:`` line naming the plugin and training goes on (so is
  ``cellnet_on_eval_end``: the evaluation's result stands); a
  ``cellnet_eval_baselines`` implementation that raises or returns anything but baseline objects
  is reported and what it returned is skipped.
"""

from __future__ import annotations

import difflib
import inspect
import os
import sys
import typing
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from cellnet_core import hookspecs
from cellnet_core.errors import CellnetError
from cellnet_core.registry import Entry, Registry

ENTRY_POINT_GROUP = "cellnet.plugins"
BUILTIN_NAME = "builtin"
CORE_DISTRIBUTION = "cellnet-core"

#: Hooks that only observe: a failing implementation is reported and the caller goes on.
OBSERVER_HOOKS = ("cellnet_on_epoch_end", "cellnet_on_train_end", "cellnet_on_eval_end")
#: Hooks whose results are checked one implementation at a time (junk is reported and skipped).
CHECKED_HOOKS = ("cellnet_eval_baselines",)


@dataclass
class PluginInfo:
    """One discovered plugin: entry-point name, version, module, distribution, hooks, error,
    parts provided and parts refused."""

    name: str
    version: str
    module: str
    distribution: str
    hooks: list[str] = field(default_factory=list)
    #: Why the plugin is not in use at all (None when it loaded).
    error: str | None = None
    provides: list[str] = field(default_factory=list)
    #: Parts of a loaded plugin that were refused, one line each (``decoder 'nearest': ...``).
    problems: list[str] = field(default_factory=list)


@dataclass
class PluginReport:
    """What discovery found: loaded plugins, failures and warnings."""

    plugins: list[PluginInfo] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[PluginInfo]:
        """The plugins whose import or registration failed."""
        return [p for p in self.plugins if p.error]

    def get(self, name: str) -> PluginInfo | None:
        """The plugin registered under ``name``, if any."""
        return next((p for p in self.plugins if p.name == name), None)


def _fault(exc: BaseException) -> str:
    """What plugin code did, in one line: ``raised ValueError: …`` or ``called sys.exit(1)``."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})"
    text = " ".join(str(exc).split())
    return f"raised {type(exc).__name__}: {text}" if text else f"raised {type(exc).__name__}"


def _say(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class CellnetPluginManager(pluggy.PluginManager):
    """A pluggy manager that also keeps the discovery report, and calls observer and checked
    hooks one implementation at a time so that a failing plugin cannot stop the caller."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.report = PluginReport()
        self._warned: set[tuple[str, str]] = set()

    def _hookexec(self, hook_name, methods, kwargs, firstresult):  # pluggy's single call path
        if hook_name not in OBSERVER_HOOKS and hook_name not in CHECKED_HOOKS:
            return super()._hookexec(hook_name, methods, kwargs, firstresult)
        if any(m.wrapper or m.hookwrapper for m in methods):  # wrappers need the whole chain
            return super()._hookexec(hook_name, methods, kwargs, firstresult)
        results: list[Any] = []
        for impl in reversed(methods):  # pluggy's own order: last registered first
            try:
                out = super()._hookexec(hook_name, [impl], kwargs, False)
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - reported, the caller goes on
                what = ("its results are skipped" if hook_name not in OBSERVER_HOOKS else
                        "the evaluation's result stands" if hook_name == "cellnet_on_eval_end" else
                        "training goes on")
                self._runtime_warning(impl.plugin_name, hook_name, f"{hook_name} {_fault(exc)}; {what}")
                continue
            if hook_name == "cellnet_eval_baselines":
                out = [self._checked_baselines(impl.plugin_name, r) for r in out]
            results.extend(out)
        return results

    def _runtime_warning(self, plugin: str, hook_name: str, message: str) -> None:
        line = f"plugin '{plugin}': {message}"
        self.report.warnings.append(line)
        if (plugin, hook_name) not in self._warned:  # once per plugin and hook, not once per epoch
            self._warned.add((plugin, hook_name))
            _say(line)

    def _checked_baselines(self, plugin: str, returned: Any) -> list[Any]:
        if returned is None:
            return []
        if isinstance(returned, (str, bytes, dict)) or not isinstance(returned, (list, tuple)):
            self._runtime_warning(plugin, "cellnet_eval_baselines",
                                  f"cellnet_eval_baselines returned {type(returned).__name__}, not a list of "
                                  f"baselines; skipped")
            return []
        good = []
        for b in returned:
            name = getattr(b, "name", None)
            if isinstance(name, str) and name and callable(getattr(b, "fit", None)) \
                    and callable(getattr(b, "predict", None)):
                good.append(b)
            else:
                self._runtime_warning(plugin, "cellnet_eval_baselines",
                                      f"cellnet_eval_baselines returned {_short(b)}, which is not a baseline "
                                      f"(needs a name, fit() and predict()); skipped")
        return good


def _short(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 60 else text[:57] + "..."


def _split_env(var: str) -> set[str]:
    return {s.strip() for s in os.environ.get(var, "").split(",") if s.strip()}


def _cellnet_hooks(plugin: Any) -> list[str]:
    return sorted(n for n in dir(plugin) if n.startswith("cellnet_") and callable(getattr(plugin, n, None)))


def _spec_names(pm: pluggy.PluginManager) -> list[str]:
    return sorted(n for n in dir(pm.hook) if n.startswith("cellnet_")
                  and getattr(pm.hook, n).has_spec())


def _signature(fn: Any) -> str:
    try:
        return f"{getattr(fn, '__name__', '?')}{inspect.signature(fn)}"
    except (TypeError, ValueError):
        return getattr(fn, "__name__", "?")


def _bad_arguments(pm: pluggy.PluginManager, plugin: Any) -> str | None:
    """A hook implementation that declares an argument its spec does not offer, as one line."""
    for attr in dir(plugin):
        opts = pm.parse_hookimpl_opts(plugin, attr)
        if opts is None:
            continue
        hook_name = opts.get("specname") or attr
        caller = getattr(pm.hook, hook_name, None)
        if caller is None or not caller.has_spec() or caller.spec is None:
            continue
        fn = getattr(plugin, attr)
        try:
            params = [p for p in inspect.signature(fn).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
        except (TypeError, ValueError):
            continue
        extra = [p.name for p in params if p.name not in caller.spec.argnames]
        if extra:
            offered = ", ".join(caller.spec.argnames) or "no arguments"
            return (f"hook {_signature(fn)} declares {', '.join(repr(a) for a in extra)}, which "
                    f"{hook_name} does not pass (it passes: {offered})")
    return None


def register_plugin(pm: CellnetPluginManager, plugin: ModuleType | Any, name: str, version: str = "",
                    distribution: str = "") -> PluginInfo:
    """Register one plugin object, recording which hooks it implements.

    A hook implementation whose arguments do not match its spec makes the plugin fail (recorded
    in ``info.error``, nothing registered); a ``@hookimpl`` that names no cellnet hook is a
    warning."""
    info = PluginInfo(name, version, getattr(plugin, "__name__", type(plugin).__name__), distribution)
    pm.report.plugins.append(info)
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        if pm.is_registered(plugin):
            pm.unregister(plugin)
        info.error = _bad_arguments(pm, plugin) or " ".join(str(exc).split())
        return info
    callers = pm.get_hookcallers(plugin) or []
    info.hooks = sorted(h.name for h in callers if h.has_spec())
    specs = _spec_names(pm)
    for h in callers:
        if not h.has_spec() and not any(i.optionalhook for i in h.get_hookimpls() if i.plugin is plugin):
            close = difflib.get_close_matches(h.name, specs, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (cellnet hooks: {', '.join(specs)})"
            pm.report.warnings.append(f"plugin '{name}' ({info.module}): '{h.name}' is not a cellnet hook"
                                      f"{hint}; it is never called")
    if not info.hooks:
        defined = [n for n in _cellnet_hooks(plugin) if n not in {h.name for h in callers}]
        why = (f"functions {', '.join(defined)} lack @hookimpl" if defined else
               "none of its @hookimpl functions is a cellnet hook" if callers else "it implements no cellnet_* hook")
        pm.report.warnings.append(f"plugin '{name}' ({info.module}) does nothing: {why}")
    return info


def core_requirement(dist: metadata.Distribution) -> Any | None:
    """The ``cellnet-core`` requirement (a :class:`packaging.requirements.Requirement`) that
    ``dist`` declares in its ``Requires-Dist``, or None."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    for line in dist.requires or []:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if canonicalize_name(req.name) != CORE_DISTRIBUTION:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # only under an extra or another platform
        return req
    return None


def incompatibility(dist: metadata.Distribution | None, core_version: str) -> str | None:
    """Why ``dist`` cannot run on cellnet-core ``core_version`` (one line), or None when its
    ``cellnet-core`` range allows that version (or it declares none)."""
    if dist is None:
        return None
    req = core_requirement(dist)
    if req is None or not str(req.specifier):
        return None
    if req.specifier.contains(core_version, prereleases=True):
        return None
    name = dist.metadata["Name"] or "?"
    return (f"{name} {dist.version} requires cellnet-core{req.specifier}, but cellnet-core {core_version} is "
            f"installed; not loaded (install a {name} release made for cellnet-core {core_version})")


def create_plugin_manager(autoload: bool | None = None) -> CellnetPluginManager:
    """Create a plugin manager: the built-in plugin, then entry points of ``cellnet.plugins``.

    A plugin whose distribution requires another cellnet-core, or whose import raises (or calls
    ``sys.exit``), is reported in ``pm.report`` (name and error) and the others still load.
    """
    from cellnet_core import __version__
    from cellnet_core.builtin import plugin as builtin_plugin

    pm = CellnetPluginManager()
    register_plugin(pm, builtin_plugin, BUILTIN_NAME, __version__, CORE_DISTRIBUTION)
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
        if ep.name == BUILTIN_NAME:
            pm.report.plugins.append(PluginInfo(ep.name, "", ep.value, "", error=(
                f"the plugin name '{BUILTIN_NAME}' belongs to cellnet-core; not loaded")))
            continue
        dist = getattr(ep, "dist", None)
        dist_name = (dist.metadata["Name"] or "") if dist is not None else ""
        version = dist.version if dist is not None else ""
        why = incompatibility(dist, __version__)
        if why is not None:
            pm.report.plugins.append(PluginInfo(ep.name, version, ep.value, dist_name, error=why))
            continue
        try:
            plugin = ep.load()
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - any import failure is reported, not raised
            pm.report.plugins.append(PluginInfo(ep.name, version, ep.value, dist_name,
                                                error=f"importing {ep.value} {_fault(exc)}"))
            continue
        try:
            register_plugin(pm, plugin, ep.name, version, dist_name)
        except ValueError:  # pluggy refuses one module under two entry-point names
            other = next((n for n, p in pm.list_name_plugin() if p is plugin), "?")
            pm.report.plugins.append(PluginInfo(ep.name, version, ep.value, dist_name, error=(
                f"{ep.value} is already loaded as plugin '{other}'; not loaded twice")))
    return pm


class _Staging(Registry):
    """What one plugin's ``cellnet_register_components`` receives: ``add`` records the part for
    :func:`collect_registry` to check and commit after the hook returned; lookups
    (``names``, ``get``…) see the parts committed so far."""

    def __init__(self, target: Registry, plugin: str) -> None:
        super().__init__()
        self._entries = target._entries  # read-only view: add() below never writes it
        self.current_plugin = plugin
        self.staged: list[tuple[Entry, dict[str, Any]]] = []

    def add(self, kind: str, name: str, config_cls: type, factory: Any, **options: Any) -> None:  # noqa: D102
        entry = Entry(str(kind), str(name), config_cls, factory, str(options.get("summary", "")),
                      self.current_plugin)
        self.staged.append((entry, options))


def component_problem(registry: Registry, entry: Entry) -> str | None:
    """Why ``entry`` cannot join ``registry`` (one line), or None.

    Checks the kind, that the config class is a :class:`~cellnet_core.config.ComponentConfig`
    subclass whose ``name`` is ``Literal[<the registered name>]``, the factory, and that the
    (kind, name) is not taken."""
    from cellnet_core.config import ComponentConfig

    kinds = registry.kinds()
    if entry.kind not in kinds:
        close = difflib.get_close_matches(entry.kind, kinds, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"unknown kind '{entry.kind}' (kinds: {', '.join(kinds)}){hint}"
    cls = entry.config_cls
    cls_name = getattr(cls, "__qualname__", None) or _short(cls)
    if not (isinstance(cls, type) and issubclass(cls, ComponentConfig)):
        return (f"its config {cls_name} is not a cellnet_core.config.ComponentConfig subclass "
                f"(a pydantic model with name: Literal['{entry.name}'])")
    field_info = cls.model_fields.get("name")
    literal = getattr(field_info, "annotation", None)
    if typing.get_origin(literal) is not typing.Literal:
        return f"its config {cls_name} has no name: Literal['{entry.name}'] field"
    values = typing.get_args(literal)
    if entry.name not in values:
        shown = ", ".join(repr(v) for v in values)
        return f"its config {cls_name} has name: Literal[{shown}], which differs from the registered name"
    factory = entry.factory
    if not callable(factory) and not (isinstance(factory, str) and ":" in factory):
        return f"its factory {_short(factory)} is neither callable nor a 'module:attr' string"
    existing = registry._entries[entry.kind].get(entry.name)
    if existing is not None:
        return f"already registered by plugin '{existing.plugin}', which keeps it"
    return None


def collect_registry(pm: CellnetPluginManager) -> Registry:
    """Run ``cellnet_register_components`` of every plugin into a new registry.

    Plugins are called one at a time, in discovery order (the built-in plugin first), each into a
    staging registrar so that every entry records who registered it. Only when the hook returns
    are its parts checked (:func:`component_problem`) and committed: a refused part is recorded
    in the plugin's ``problems`` and the rest of the plugin is kept; a hook that raises keeps
    none of its parts and the plugin's ``error`` says why.
    """
    registry = Registry()
    for info in pm.report.plugins:
        if info.error:
            continue
        plugin = pm.get_plugin(info.name)
        impl = getattr(plugin, "cellnet_register_components", None)
        if impl is None or "cellnet_register_components" not in info.hooks:
            continue
        staging = _Staging(registry, info.name)
        try:
            impl(registry=staging)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - reported; the plugin keeps nothing
            parts = f" ({len(staging.staged)} part(s) it had added are not kept)" if staging.staged else ""
            info.error = f"cellnet_register_components {_fault(exc)}{parts}"
            continue
        for entry, options in staging.staged:
            what = f"{entry.kind} '{entry.name}'"
            problem = component_problem(registry, entry)
            if problem is None:
                registry.current_plugin = info.name
                try:
                    registry.add(entry.kind, entry.name, entry.config_cls, entry.factory, **options)
                except (TypeError, ValueError, CellnetError) as exc:  # e.g. an option add() does not take
                    problem = f"registry.add {_fault(exc)}"
            if problem is not None:
                info.problems.append(f"{what}: {problem}")
                pm.report.warnings.append(f"plugin '{info.name}': {what} is not registered: {problem}")
            else:
                info.provides.append(f"{entry.kind}:{entry.name}")
        info.provides.sort()
    registry.current_plugin = "?"
    return registry


def load(autoload: bool | None = None) -> tuple[CellnetPluginManager, Registry]:
    """Convenience: a fresh plugin manager and the registry its plugins fill."""
    pm = create_plugin_manager(autoload)
    return pm, collect_registry(pm)
