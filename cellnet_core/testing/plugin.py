"""pytest plugin shipped with the core (entry point ``pytest11``): fixtures for plugin tests.

- ``registry``: the registry filled by real entry-point discovery (session-scoped).
- ``plugin_manager_factory``: a fresh plugin manager with autoload off.
- ``tmp_plugin``: register an in-test plugin object; always removed afterwards.
- ``fake_distribution``: write a ``*.dist-info`` with ``entry_points.txt`` on a temporary
  ``sys.path`` entry so discovery finds a plugin exactly as if it were pip-installed.
"""

from __future__ import annotations

import contextlib
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest


@pytest.fixture(scope="session")
def registry():
    """A registry of every installed plugin (real discovery), built once per test run and shared by
    its tests."""
    from cellnet_core.plugins import load

    _, reg = load(autoload=True)
    return reg


@pytest.fixture
def plugin_manager_factory(monkeypatch) -> Callable[..., Any]:
    """A function ``make(autoload=False)`` returning a fresh plugin manager."""
    from cellnet_core.plugins import create_plugin_manager

    def make(autoload: bool = False):
        return create_plugin_manager(autoload=autoload)

    return make


@pytest.fixture
def tmp_plugin() -> Iterator[Callable[..., Any]]:
    """``with tmp_plugin(obj, name) as (pm, registry): ...`` — a fresh manager (autoload off)
    with ``obj`` registered beside the built-in plugin."""
    from cellnet_core.plugins import collect_registry, create_plugin_manager, register_plugin

    @contextlib.contextmanager
    def use(plugin: Any, name: str = "tmp"):
        pm = create_plugin_manager(autoload=False)
        register_plugin(pm, plugin, name, "0")
        try:
            yield pm, collect_registry(pm)
        finally:
            if pm.is_registered(plugin):
                pm.unregister(plugin)

    yield use


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch) -> Callable[..., Path]:
    """``fake_distribution("my-plugin", {"myplug": "my_module"}, {"my_module.py": "source"})``
    creates an importable module and a dist-info advertising it under ``cellnet.plugins``."""

    def make(dist: str, entry_points: dict[str, str], files: dict[str, str], version: str = "1.0") -> Path:
        root = tmp_path / f"site-{dist}"
        root.mkdir()
        for rel, src in files.items():
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(textwrap.dedent(src), encoding="utf-8")
        info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8")
        eps = "[cellnet.plugins]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items())
        (info / "entry_points.txt").write_text(eps, encoding="utf-8")
        monkeypatch.syspath_prepend(str(root))
        return root

    yield make
    for name in [m for m in sys.modules if m.startswith("fakeplug")]:
        sys.modules.pop(name, None)
