"""The kernel modules sit on plain layers: ``slots`` (the slot maths) imports no other kernel
module, ``chunked`` builds on ``slots`` only, ``fused`` on both, and no import — function-local
ones included — closes a circle (``fused`` ↔ ``chunked`` was one)."""

from __future__ import annotations

import ast
from pathlib import Path

import cellnet_kernels

PKG = Path(cellnet_kernels.__file__).resolve().parent


def kernel_imports(pkg: Path = PKG) -> dict[str, set[str]]:
    """Module name → the ``cellnet_kernels`` modules it imports anywhere in its source."""
    graph: dict[str, set[str]] = {}
    for path in sorted(pkg.glob("*.py")):
        mod = path.stem
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "cellnet_kernels" and len(parts) > 1 and (pkg / f"{parts[1]}.py").exists():
                    found.add(parts[1])
        found.discard(mod)
        graph[mod] = found
    return graph


def test_each_kernel_module_sits_on_one_layer():
    graph = kernel_imports()
    assert graph["slots"] == set()
    assert graph["chunked"] == {"slots"}
    assert graph["fused"] == {"chunked", "slots"}
    assert "fused" not in graph["chunked"]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else path + [node, nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for mod in sorted(graph):
        if mod not in state:
            found = visit(mod, [mod])
            if found:
                return found
    return None


def test_no_import_circle_between_kernel_modules():
    cycle = find_cycle(kernel_imports())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_check_finds_the_old_circle(tmp_path):
    """The old layout, fused importing chunked inside a method and chunked importing fused, is a
    circle the check reports."""
    (tmp_path / "fused.py").write_text("def f():\n    from cellnet_kernels.chunked import ChunkedKernel\n")
    (tmp_path / "chunked.py").write_text("from cellnet_kernels.fused import FusedKernel, cell_delta\n")
    assert find_cycle(kernel_imports(tmp_path)) == ["chunked", "fused", "chunked"]
