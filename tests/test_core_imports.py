"""The core imports no plugin, and its modules import each other without a circle.

Every module under ``cellnet_core/`` (``cellnet_core/testing/`` included) is read with :mod:`ast`:
every ``import`` and ``from … import`` wherever it stands (inside functions and ``TYPE_CHECKING``
blocks too) and every ``importlib.import_module("…")`` / ``__import__("…")`` with a literal name.
What a plugin offers reaches the core through hooks only; factories named as ``"module:attr"``
strings in a plugin's registration are the plugin's own imports, not the core's.
"""

from __future__ import annotations

import ast
from importlib import metadata
from pathlib import Path

import cellnet_core

CORE = Path(cellnet_core.__file__).resolve().parent

#: The plugin packages of this project; the installed ``cellnet.plugins`` entry points add the rest.
PLUGIN_PACKAGES = {"cellnet_lattice", "cellnet_training", "cellnet_kernels", "cellnet_teachers", "cellnet_phrasebank",
                   "cellnet_generative", "cellnet_datasets", "cellnet_serve", "cellnet_sweep", "cellnet_example"}


def plugin_packages() -> set[str]:
    """Top-level packages of every installed plugin (entry points of ``cellnet.plugins``) and of this
    project's plugins."""
    found = {ep.value.split(":")[0].split(".")[0] for ep in metadata.entry_points(group="cellnet.plugins")}
    return (found | PLUGIN_PACKAGES) - {"cellnet_core"}


def imports_of(source: str, module: str) -> list[tuple[int, str]]:
    """``(line, imported module)`` of every import in ``source`` (the module ``module``), relative
    imports resolved, function-local ones included."""
    out: list[tuple[int, str]] = []
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]  # `from pkg import submodule`
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
            if name in ("import_module", "__import__"):
                out.append((node.lineno, node.args[0].value))
    return out


def core_modules() -> dict[str, Path]:
    """Every module of ``cellnet_core`` by dotted name."""
    mods = {}
    for path in sorted(CORE.rglob("*.py")):
        rel = path.relative_to(CORE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def test_the_walk_sees_every_kind_of_import():
    src = ("import cellnet_lattice.viz\nfrom cellnet_training import distributed\n"
           "def f():\n    from cellnet_kernels.fused import FusedKernel\n"
           "    importlib.import_module('cellnet_teachers.hf')\n"
           "from . import config\nfrom .builtin import plugin\n")
    found = {name for _, name in imports_of(src, "cellnet_core.cli")}
    assert {"cellnet_lattice.viz", "cellnet_training", "cellnet_kernels.fused", "cellnet_teachers.hf",
            "cellnet_core.config", "cellnet_core.builtin.plugin"} <= found


def test_no_core_module_imports_a_plugin():
    plugins = plugin_packages()
    assert {"cellnet_lattice", "cellnet_training"} <= plugins
    modules = core_modules()
    assert {"cellnet_core.cli", "cellnet_core.commands", "cellnet_core.testing.plugin"} <= set(modules)
    bad = [f"{path.relative_to(CORE.parent)}:{line}: imports {name}"
           for mod, path in modules.items() for line, name in imports_of(path.read_text(encoding="utf-8"), mod)
           if name.split(".")[0] in plugins]
    assert not bad, "the core imports plugins (offer them through a hook instead):\n" + "\n".join(bad)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_core_modules_import_each_other_without_a_circle():
    """``config`` ↔ ``registry`` was such a circle; each module sits on one floor now. The package's
    ``__init__`` (which only re-exports the API) is left out: ``from cellnet_core import hookimpl``
    reaches ``hookspecs``, not the whole package."""
    modules = core_modules()
    graph: dict[str, set[str]] = {}
    for mod, path in modules.items():
        if mod == "cellnet_core":
            continue
        targets = set()
        for _, name in imports_of(path.read_text(encoding="utf-8"), mod):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != "cellnet_core" and name != mod:
                targets.add(name)
        graph[mod] = targets
    assert "cellnet_core.registry" in graph["cellnet_core.config"]
    assert "cellnet_core.config" not in graph["cellnet_core.registry"]
    cycle = _cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
