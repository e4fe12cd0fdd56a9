import pytest

from cellnet_core.plugins import collect_registry, create_plugin_manager


GOOD = """
from typing import Literal
from cellnet_core import hookimpl
from cellnet_core.config import ComponentConfig

class Cfg(ComponentConfig):
    name: Literal["fakeplug-enc"] = "fakeplug-enc"

@hookimpl
def cellnet_register_components(registry):
    registry.add("encoder", "fakeplug-enc", Cfg, "cellnet_core.builtin.components:build_hashing", summary="fake")
"""


def test_entry_point_discovery_through_fake_distribution(fake_distribution):
    fake_distribution("fakeplug-good", {"fakegood": "fakeplug_good"}, {"fakeplug_good.py": GOOD}, version="2.5")
    pm = create_plugin_manager(autoload=True)
    info = next(p for p in pm.report.plugins if p.name == "fakegood")
    assert info.version == "2.5" and info.distribution == "fakeplug-good" and info.error is None
    reg = collect_registry(pm)
    assert "fakeplug-enc" in reg.names("encoder")
    assert reg.get("encoder", "fakeplug-enc").plugin == "fakegood"


def test_broken_plugin_reported_others_still_load(fake_distribution):
    fake_distribution("fakeplug-good", {"fakegood": "fakeplug_good"}, {"fakeplug_good.py": GOOD})
    fake_distribution("fakeplug-bad", {"fakebad": "fakeplug_bad"},
                      {"fakeplug_bad.py": "raise RuntimeError('boom at import')\n"})
    pm = create_plugin_manager(autoload=True)
    bad = next(p for p in pm.report.plugins if p.name == "fakebad")
    assert bad.error == "importing fakeplug_bad raised RuntimeError: boom at import"
    assert "fakeplug-enc" in collect_registry(pm).names("encoder")


def test_plugin_without_hookimpl_is_reported(fake_distribution):
    src = "def cellnet_register_components(registry):\n    pass\n"
    fake_distribution("fakeplug-lazy", {"fakelazy": "fakeplug_lazy"}, {"fakeplug_lazy.py": src})
    pm = create_plugin_manager(autoload=True)
    assert any("fakelazy" in w and "lack @hookimpl" in w for w in pm.report.warnings)


def test_env_switches(fake_distribution, monkeypatch):
    fake_distribution("fakeplug-good", {"fakegood": "fakeplug_good"}, {"fakeplug_good.py": GOOD})
    monkeypatch.setenv("CELLNET_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert [p.name for p in create_plugin_manager().report.plugins] == ["builtin"]
    monkeypatch.setenv("CELLNET_LOAD_PLUGINS", "fakegood")
    assert "fakegood" in [p.name for p in create_plugin_manager().report.plugins]
    monkeypatch.delenv("CELLNET_DISABLE_PLUGIN_AUTOLOAD")
    monkeypatch.delenv("CELLNET_LOAD_PLUGINS")
    monkeypatch.setenv("CELLNET_DISABLED_PLUGINS", "fakegood")
    assert "fakegood" not in [p.name for p in create_plugin_manager().report.plugins]


def test_fresh_manager_each_call_and_tmp_plugin(tmp_plugin):
    class Inline:
        from cellnet_core import hookimpl

        @staticmethod
        @hookimpl
        def cellnet_register_components(registry):
            from typing import Literal

            from cellnet_core.config import ComponentConfig

            class InlineConfig(ComponentConfig):
                name: Literal["inline"] = "inline"

            registry.add("strategy", "inline", InlineConfig, lambda c, x: None, summary="t")

    with tmp_plugin(Inline(), "inline") as (pm, reg):
        assert "inline" in reg.names("strategy")
    assert "inline" not in collect_registry(create_plugin_manager(autoload=False)).names("strategy")


def test_every_hookspec_is_documented():
    from cellnet_core import hookspecs

    specs = [n for n in dir(hookspecs) if n.startswith("cellnet_")]
    assert specs
    for n in specs:
        doc = getattr(hookspecs, n).__doc__ or ""
        assert "Added in" in doc, f"{n} lacks its docstring/version"
