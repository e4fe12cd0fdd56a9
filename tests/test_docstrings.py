"""The Python API explains itself: every public function, class and method of ``cellnet_core`` and
of the plugins' public modules has a docstring, and every package ships ``py.typed``.

Public = a name not starting with ``_``, in a module whose path has no part starting with ``_``
(``__init__.py`` counts as the package's public module). Methods are those of public classes;
nested functions are not counted. Property setters and ``typing.overload`` stubs share the
docstring of what they belong to.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: the packages whose public API is counted: the core, every plugin, the example plugin
PACKAGES = [ROOT / "cellnet_core"] + [p.parent for p in sorted(ROOT.glob("plugins/*/src/cellnet_*/__init__.py"))
                                     + sorted(ROOT.glob("examples/*/src/cellnet_*/__init__.py"))]

#: ``path::Qualified.name`` allowed without a docstring, each with the reason. Keep it short.
EXCLUDED: dict[str, str] = {}


def _public_module(path: Path, package: Path) -> bool:
    return not any(part.startswith("_") and part != "__init__.py" for part in path.relative_to(package).parts)


def _shares_a_docstring(node: ast.AST) -> bool:
    for d in getattr(node, "decorator_list", []):
        if isinstance(d, ast.Attribute) and d.attr in ("setter", "deleter"):
            return True
        if (isinstance(d, ast.Name) and d.id == "overload") or (isinstance(d, ast.Attribute) and d.attr == "overload"):
            return True
    return False


def _defs(body):
    return [n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and not n.name.startswith("_") and not _shares_a_docstring(n)]


def missing_docstrings(source: str, where: str) -> list[str]:
    """``where::name`` of every public module-level function/class and public method of a public
    class in ``source`` that has no docstring."""
    out = []
    for node in _defs(ast.parse(source).body):
        if ast.get_docstring(node) is None:
            out.append(f"{where}::{node.name}")
        if isinstance(node, ast.ClassDef):
            out += [f"{where}::{node.name}.{sub.name}" for sub in _defs(node.body) if ast.get_docstring(sub) is None]
    return out


def test_the_counter_finds_what_is_missing():
    src = '''
def f(): pass
def _private(): pass
def g():
    """doc"""
class A:
    """doc"""
    def m(self): pass
    def _h(self): pass
    @property
    def p(self):
        """doc"""
    @p.setter
    def p(self, v): pass
class B: pass
class _C:
    def m(self): pass
'''
    assert missing_docstrings(src, "x.py") == ["x.py::f", "x.py::A.m", "x.py::B"]


def test_every_public_function_class_and_method_has_a_docstring():
    missing = []
    counted = 0
    for package in PACKAGES:
        for path in sorted(package.rglob("*.py")):
            if not _public_module(path, package):
                continue
            rel = str(path.relative_to(ROOT))
            src = path.read_text(encoding="utf-8")
            tree = ast.parse(src)
            counted += sum(1 + (len(_defs(n.body)) if isinstance(n, ast.ClassDef) else 0) for n in _defs(tree.body))
            missing += [m for m in missing_docstrings(src, rel) if m not in EXCLUDED]
    assert counted > 300, f"only {counted} public definitions found: is the package list right?"
    assert not missing, f"{len(missing)} of {counted} public definitions have no docstring:\n" + "\n".join(missing)


def test_exclusions_still_exist_and_say_why():
    for key, reason in EXCLUDED.items():
        path, _, qual = key.partition("::")
        assert (ROOT / path).exists() and reason.strip(), key
        assert re.search(rf"\b(def|class) {re.escape(qual.split('.')[-1])}\b", (ROOT / path).read_text()), key


def test_every_package_ships_py_typed():
    """PEP 561: the marker sits in each package and its pyproject lists it as package data."""
    assert len(PACKAGES) >= 9
    for package in PACKAGES:
        assert (package / "py.typed").is_file(), f"{package.relative_to(ROOT)}: no py.typed"
        project = package.parent.parent if package.parent.name == "src" else package.parent
        cfg = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
        data = cfg.get("tool", {}).get("setuptools", {}).get("package-data", {})
        assert "py.typed" in data.get(package.name, []) + data.get("*", []), \
            f"{project.relative_to(ROOT)}/pyproject.toml: py.typed is not package data of {package.name}"
