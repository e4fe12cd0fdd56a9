"""Plugin isolation: one faulty plugin is reported (name, what failed) and every other part keeps
working — at discovery, at registration, and when its hooks are called during training or
evaluation."""

from __future__ import annotations

import json
from typing import Literal

import pytest

from cellnet_core import hookimpl
from cellnet_core.builtin.configs import NearestDecoderConfig
from cellnet_core.config import ComponentConfig, run_config_model, validate_run_config
from cellnet_core.errors import ConfigError
from cellnet_core.plugins import collect_registry, create_plugin_manager, incompatibility, register_plugin
from cellnet_core.testing.fakes import GREETINGS_CONFIG

_BUILD = "cellnet_core.builtin.components:build_nearest"


class MineConfig(ComponentConfig):
    name: Literal["mine"] = "mine"


class OtherConfig(ComponentConfig):
    name: Literal["other"] = "other"


def _manager(autoload=False, **plugins):
    """A manager (autoload off: only the built-in plugin), then ``plugins`` in the order given."""
    pm = create_plugin_manager(autoload=autoload)
    for name, plugin in plugins.items():
        register_plugin(pm, plugin, name, "0")
    return pm, collect_registry(pm)


def _problems(pm, name):
    return pm.report.get(name).problems


# -- registration ---------------------------------------------------------------------------
class Duplicate:
    @hookimpl
    def cellnet_register_components(self, registry):
        registry.add("decoder", "nearest", NearestDecoderConfig, _BUILD, summary="a second 'nearest'")
        registry.add("decoder", "mine", MineConfig, _BUILD, summary="its own decoder")


def test_a_duplicate_name_disables_the_newcomer_only():
    pm, reg = _manager(dup=Duplicate())
    assert reg.get("decoder", "nearest").plugin == "builtin"  # the earlier registrant keeps it
    assert reg.get("decoder", "mine").plugin == "dup"  # the newcomer's other parts are kept
    info = pm.report.get("dup")
    assert info.error is None and info.provides == ["decoder:mine"]
    assert info.problems == ["decoder 'nearest': already registered by plugin 'builtin', which keeps it"]
    assert any(w.startswith("plugin 'dup': decoder 'nearest' is not registered: already registered by plugin "
                            "'builtin'") for w in pm.report.warnings)


def test_a_name_registered_twice_by_two_plugins_names_both():
    class Second:
        @hookimpl
        def cellnet_register_components(self, registry):
            registry.add("decoder", "mine", MineConfig, _BUILD)

    pm, reg = _manager(first=Duplicate(), second=Second())
    assert reg.get("decoder", "mine").plugin == "first"
    assert _problems(pm, "second") == ["decoder 'mine': already registered by plugin 'first', which keeps it"]


class NotPydantic:
    class PlainConfig:  # not a ComponentConfig: no validation, no schema, breaks the config union
        name = "plain"

    @hookimpl
    def cellnet_register_components(self, registry):
        registry.add("decoder", "plain", self.PlainConfig, _BUILD)
        registry.add("decoder", "mine", MineConfig, _BUILD)


def test_a_config_class_that_is_not_a_component_config_is_refused_and_the_union_still_builds():
    import yaml

    pm, reg = _manager(autoload=True, plain=NotPydantic())
    assert "plain" not in reg.names("decoder") and "mine" in reg.names("decoder")
    (problem,) = _problems(pm, "plain")
    assert problem.startswith("decoder 'plain': its config NotPydantic.PlainConfig is not a "
                              "cellnet_core.config.ComponentConfig subclass")
    decoders = run_config_model(reg).model_json_schema()["properties"]["decoder"]  # the union of all others
    assert "mine" in json.dumps(decoders) and "plain" not in json.dumps(decoders)
    data = yaml.safe_load(GREETINGS_CONFIG)
    assert validate_run_config(reg, {**data, "decoder": {"name": "mine"}}).decoder.name == "mine"
    assert validate_run_config(reg, data).decoder.name == "nearest"
    with pytest.raises(ConfigError, match="decoder: unknown 'plain'; available: .*mine"):
        validate_run_config(reg, {**data, "decoder": {"name": "plain"}})


def test_a_config_whose_name_literal_differs_is_refused_at_registration():
    class Misnamed:
        @hookimpl
        def cellnet_register_components(self, registry):
            registry.add("decoder", "mine-v2", MineConfig, _BUILD)  # MineConfig says name: 'mine'
            registry.add("decoder", "other", OtherConfig, _BUILD)

    pm, reg = _manager(misnamed=Misnamed())
    assert reg.names("decoder").count("other") == 1 and "mine-v2" not in reg.names("decoder")
    assert _problems(pm, "misnamed") == [
        "decoder 'mine-v2': its config MineConfig has name: Literal['mine'], which differs from the registered name"]


def test_a_config_without_a_name_literal_an_unknown_kind_and_a_bad_factory_are_refused():
    class Loose(ComponentConfig):
        pass  # name: str, no Literal — a discriminated union cannot select it

    class Odd:
        @hookimpl
        def cellnet_register_components(self, registry):
            registry.add("decoder", "loose", Loose, _BUILD)
            registry.add("decoders", "mine", MineConfig, _BUILD)
            registry.add("decoder", "other", OtherConfig, 42)

    pm, reg = _manager(odd=Odd())
    assert pm.report.get("odd").provides == []
    assert _problems(pm, "odd") == [
        "decoder 'loose': its config test_a_config_without_a_name_literal_an_unknown_kind_and_a_bad_factory_are_"
        "refused.<locals>.Loose has no name: Literal['loose'] field",
        "decoders 'mine': unknown kind 'decoders' (kinds: " + ", ".join(reg.kinds()) + "); did you mean 'decoder'?",
        "decoder 'other': its factory 42 is neither callable nor a 'module:attr' string",
    ]


def test_a_hook_that_raises_midway_keeps_none_of_its_parts():
    class Midway:
        @hookimpl
        def cellnet_register_components(self, registry):
            registry.add("decoder", "mine", MineConfig, _BUILD)
            registry.add("decoder", "other", OtherConfig, _BUILD)
            raise RuntimeError("lost its data file")

    pm, reg = _manager(midway=Midway(), dup=Duplicate())
    info = pm.report.get("midway")
    assert info.error == ("cellnet_register_components raised RuntimeError: lost its data file "
                          "(2 part(s) it had added are not kept)")
    assert info.provides == [] and "other" not in reg.names("decoder")
    assert reg.get("decoder", "mine").plugin == "dup"  # the name is free for the next plugin
    assert "nearest" in reg.names("decoder")


def test_a_registration_hook_that_calls_sys_exit_is_reported():
    class Exits:
        @hookimpl
        def cellnet_register_components(self, registry):
            raise SystemExit(3)

    pm, reg = _manager(exits=Exits())
    assert pm.report.get("exits").error == "cellnet_register_components called sys.exit(3)"
    assert reg.names("decoder") == ["nearest"]


def test_the_hook_sees_what_earlier_plugins_registered():
    seen = []

    class Looks:
        @hookimpl
        def cellnet_register_components(self, registry):
            seen.append(registry.names("encoder"))
            if "hashing" in registry.names("encoder"):
                registry.add("decoder", "mine", MineConfig, _BUILD)

    _, reg = _manager(looks=Looks())
    assert seen == [["hashing"]] and "mine" in reg.names("decoder")


# -- discovery ------------------------------------------------------------------------------
def test_a_misspelt_hook_argument_fails_that_plugin_only():
    class Misspelt:
        @hookimpl
        def cellnet_register_components(self, registy):
            registy.add("decoder", "mine", MineConfig, _BUILD)

    pm, reg = _manager(misspelt=Misspelt(), dup=Duplicate())
    info = pm.report.get("misspelt")
    assert info.error == ("hook cellnet_register_components(registy) declares 'registy', which "
                          "cellnet_register_components does not pass (it passes: registry)")
    assert not pm.has_plugin("misspelt")
    assert reg.get("decoder", "mine").plugin == "dup"


def test_a_misspelt_hook_name_is_a_warning_naming_the_plugin():
    class Typo:
        @hookimpl
        def cellnet_register_component(self, registry):
            registry.add("decoder", "mine", MineConfig, _BUILD)

    pm, reg = _manager(typo=Typo())
    assert "mine" not in reg.names("decoder")
    assert any(w.startswith("plugin 'typo' (Typo): 'cellnet_register_component' is not a cellnet hook (did you mean "
                            "'cellnet_register_components'?); it is never called") for w in pm.report.warnings)
    assert any("plugin 'typo' (Typo) does nothing" in w for w in pm.report.warnings)


def test_sys_exit_at_import_is_reported_and_the_others_load(fake_distribution):
    good = ("from typing import Literal\nfrom cellnet_core import hookimpl\n"
            "from cellnet_core.config import ComponentConfig\n"
            "class C(ComponentConfig):\n    name: Literal['fakeplug-dec'] = 'fakeplug-dec'\n"
            "@hookimpl\ndef cellnet_register_components(registry):\n"
            f"    registry.add('decoder', 'fakeplug-dec', C, '{_BUILD}')\n")
    fake_distribution("fakeplug-exit", {"fakeexit": "fakeplug_exit"},
                      {"fakeplug_exit.py": "import sys\nsys.exit('no GPU here')\n"})
    fake_distribution("fakeplug-good", {"fakegood": "fakeplug_good"}, {"fakeplug_good.py": good})
    pm = create_plugin_manager(autoload=True)
    assert pm.report.get("fakeexit").error == "importing fakeplug_exit called sys.exit('no GPU here')"
    assert "fakeplug-dec" in collect_registry(pm).names("decoder")


# -- the cellnet-core range -----------------------------------------------------------------
_PLUG = ("from cellnet_core import hookimpl\n@hookimpl\ndef cellnet_register_components(registry):\n"
         "    pass\n")


def _requires(root, dist, *lines):
    meta = next(root.glob("*.dist-info")) / "METADATA"
    meta.write_text(meta.read_text() + "".join(f"Requires-Dist: {line}\n" for line in lines))


def test_a_plugin_built_for_another_core_is_not_loaded_and_names_both_versions(fake_distribution):
    from cellnet_core import __version__

    old = fake_distribution("fakeplug-old", {"fakeold": "fakeplug_old"}, {"fakeplug_old.py": _PLUG}, version="0.0.7")
    _requires(old, "fakeplug-old", "cellnet-core<0.1,>=0.0.1", "torch>=2")
    ok = fake_distribution("fakeplug-ok", {"fakeok": "fakeplug_ok"}, {"fakeplug_ok.py": _PLUG})
    _requires(ok, "fakeplug-ok", f"cellnet-core>={__version__},<99", "cellnet-core==0.0.1; extra == 'old'")
    pm = create_plugin_manager(autoload=True)
    info = pm.report.get("fakeold")
    assert info.error == (f"fakeplug-old 0.0.7 requires cellnet-core<0.1,>=0.0.1, but cellnet-core {__version__} is "
                          f"installed; not loaded (install a fakeplug-old release made for cellnet-core {__version__})")
    assert "fakeplug_old" not in __import__("sys").modules  # never imported
    assert pm.report.get("fakeok").error is None and pm.has_plugin("fakeok")


def test_every_installed_plugin_declares_a_core_range_the_core_satisfies():
    from importlib import metadata

    from cellnet_core import __version__
    from cellnet_core.plugins import ENTRY_POINT_GROUP, core_requirement

    dists = {ep.dist.metadata["Name"]: ep.dist for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.dist}
    assert "cellnet-example-plugin" in dists and "cellnet-lattice" in dists
    for name, dist in dists.items():
        req = core_requirement(dist)
        assert req is not None and str(req.specifier), f"{name} declares no cellnet-core range"
        assert "<" in str(req.specifier), f"{name}: {req} has no upper bound"
        assert incompatibility(dist, __version__) is None
        assert incompatibility(dist, "9.0") is not None


# -- hooks called at run time ---------------------------------------------------------------
class Observer:
    def __init__(self):
        self.epochs = []
        self.ended = 0

    @hookimpl
    def cellnet_on_epoch_end(self, run_dir, epoch, metrics):
        self.epochs.append(epoch)

    @hookimpl
    def cellnet_on_train_end(self, run_dir, result):
        self.ended += 1


class BadObserver:
    @hookimpl
    def cellnet_on_epoch_end(self, run_dir, epoch, metrics):
        raise ValueError(f"tracker offline at epoch {epoch}")

    @hookimpl
    def cellnet_on_train_end(self, run_dir, result):
        import sys

        sys.exit(1)


def test_observers_that_raise_are_reported_once_and_the_others_still_run(capsys):
    good = Observer()
    pm, _ = _manager(good=good, bad=BadObserver())
    for epoch in range(3):
        assert pm.hook.cellnet_on_epoch_end(run_dir="r", epoch=epoch, metrics={}) == []
    pm.hook.cellnet_on_train_end(run_dir="r", result=None)
    assert good.epochs == [0, 1, 2] and good.ended == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["warning: plugin 'bad': cellnet_on_epoch_end raised ValueError: tracker offline at epoch 0; "
                   "training goes on",
                   "warning: plugin 'bad': cellnet_on_train_end called sys.exit(1); training goes on"]
    assert sum("cellnet_on_epoch_end raised" in w for w in pm.report.warnings) == 3


def test_a_failing_observer_never_aborts_training(tmp_path, capsys):
    from cellnet_core import api

    good = Observer()
    pm = create_plugin_manager(autoload=True)
    for name, plugin in {"good": good, "bad": BadObserver()}.items():
        register_plugin(pm, plugin, name, "0")
    cfg = """
seed: 0
device: cpu
data: {name: greetings}
encoder: {name: hashing, dim: 64}
reshaper: {name: surface, shape: [4, 4, 2], channels: 4}
core: {name: lattice, cell: {name: mlp, hidden: 8}, steps: 2}
decoder: {name: nearest}
training: {name: dialogue, epochs: 2, batch_size: 16, plots: false}
"""
    (tmp_path / "c.yaml").write_text(cfg)
    pipe = api.train(tmp_path / "c.yaml", tmp_path / "run", plugins=(pm, collect_registry(pm)), echo=None)
    assert pipe.train_info["epochs"] == 2 and (tmp_path / "run" / "manifest.json").exists()
    assert good.epochs[-1] == 2 and good.ended == 1
    err = capsys.readouterr().err
    assert "warning: plugin 'bad': cellnet_on_epoch_end raised ValueError: tracker offline at epoch" in err
    assert "warning: plugin 'bad': cellnet_on_train_end called sys.exit(1); training goes on" in err


class JunkBaselines:
    @hookimpl
    def cellnet_eval_baselines(self):
        from cellnet_core.evaluation import MeanBaseline

        class Renamed(MeanBaseline):
            name = "mean-too"

        return [Renamed(), "ridge", object()]


class StringBaselines:
    @hookimpl
    def cellnet_eval_baselines(self):
        return "identity"


class RaisingBaselines:
    @hookimpl
    def cellnet_eval_baselines(self):
        raise ImportError("no module named 'sklearn'")


def test_junk_from_the_baselines_hook_is_reported_and_skipped(capsys):
    from cellnet_core.api import _baselines

    pm, _ = _manager(junk=JunkBaselines(), text=StringBaselines(), raising=RaisingBaselines())
    groups = pm.hook.cellnet_eval_baselines()
    assert sorted(b.name for g in groups for b in g) == ["identity", "mean", "mean-too", "ridge"]
    assert [b.name for b in _baselines(pm, ["identity", "mean-too"])] == ["identity", "mean-too"]
    err = capsys.readouterr().err
    assert "warning: plugin 'junk': cellnet_eval_baselines returned 'ridge', which is not a baseline " \
           "(needs a name, fit() and predict()); skipped" in err
    assert "warning: plugin 'text': cellnet_eval_baselines returned str, not a list of baselines; skipped" in err
    assert "warning: plugin 'raising': cellnet_eval_baselines raised ImportError: no module named 'sklearn'; " \
           "its results are skipped" in err


# -- the command line -----------------------------------------------------------------------
_DUP = ("from cellnet_core import hookimpl\nfrom cellnet_core.builtin.configs import NearestDecoderConfig\n"
        "@hookimpl\ndef cellnet_register_components(registry):\n"
        f"    registry.add('decoder', 'nearest', NearestDecoderConfig, '{_BUILD}')\n")


_HOOKS = {
    "fakeplug_args": "@hookimpl\ndef cellnet_register_components(registy):\n    pass\n",
    "fakeplug_plain": ("class Plain:\n    name = 'plain'\n@hookimpl\ndef cellnet_register_components(registry):\n"
                       f"    registry.add('decoder', 'plain', Plain, '{_BUILD}')\n"),
    "fakeplug_midway": ("@hookimpl\ndef cellnet_register_components(registry):\n"
                        f"    registry.add('decoder', 'nearest-too', Plain, '{_BUILD}')\n    raise KeyError('x')\n"),
    "fakeplug_typo": "@hookimpl\ndef cellnet_register_component(registry):\n    pass\n",
    "fakeplug_observer": ("@hookimpl\ndef cellnet_on_epoch_end(run_dir, epoch, metrics):\n    raise OSError('disk full')\n"
                          "@hookimpl\ndef cellnet_on_train_end(run_dir, result):\n    raise OSError('disk full')\n"),
    "fakeplug_junk": "@hookimpl\ndef cellnet_eval_baselines():\n    return [object(), None]\n",
}


@pytest.fixture
def broken_plugins(fake_distribution):
    """Installed plugins, each broken another way."""
    fake_distribution("fakeplug-dup", {"fakedup": "fakeplug_dup"}, {"fakeplug_dup.py": _DUP})
    fake_distribution("fakeplug-exit", {"fakeexit": "fakeplug_exit"}, {"fakeplug_exit.py": "raise SystemExit(2)\n"})
    old = fake_distribution("fakeplug-old", {"fakeold": "fakeplug_old"}, {"fakeplug_old.py": _PLUG}, version="3.0")
    _requires(old, "fakeplug-old", "cellnet-core>=3")
    head = "from cellnet_core import hookimpl\nclass Plain:\n    name = 'plain'\n"
    for module, src in _HOOKS.items():
        dist = module.replace("_", "-")
        fake_distribution(dist, {module.split("_")[1]: module}, {f"{module}.py": head + src})


def test_cellnet_plugins_shows_each_failure_and_exits_0(broken_plugins, capsys):
    from cellnet_core.cli import main

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "fakeexit" in out and "FAILED: importing fakeplug_exit called sys.exit(2)" in out
    assert "FAILED: fakeplug-old 3.0 requires cellnet-core>=3, but cellnet-core" in out
    assert ("warning: plugin 'fakedup': decoder 'nearest' is not registered: already registered by plugin "
            "'builtin', which keeps it") in out
    assert main(["plugins", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["plugins"]}
    assert rows["fakedup"]["error"] is None and rows["fakedup"]["problems"] == [
        "decoder 'nearest': already registered by plugin 'builtin', which keeps it"]
    assert rows["fakeexit"]["error"] and rows["lattice"]["error"] is None
    assert rows["args"]["error"].startswith("hook cellnet_register_components(registy) declares 'registy'")
    assert rows["plain"]["error"] is None and rows["plain"]["problems"][0].startswith(
        "decoder 'plain': its config Plain is not a cellnet_core.config.ComponentConfig subclass")
    assert rows["midway"]["error"] == ("cellnet_register_components raised KeyError: 'x' "
                                       "(1 part(s) it had added are not kept)")
    assert rows["typo"]["error"] is None and rows["typo"]["provides"] == []
    assert rows["observer"]["error"] is None and rows["junk"]["error"] is None


def test_validate_train_and_ask_work_beside_broken_plugins(broken_plugins, tmp_path, capsys):
    from cellnet_core.cli import main

    cfg = tmp_path / "greet.yaml"
    cfg.write_text(GREETINGS_CONFIG)
    assert main(["validate", str(cfg)]) == 0
    assert main(["train", str(cfg), "--run-dir", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "warning: plugin 'observer': cellnet_on_train_end raised OSError: disk full; training goes on" in err
    assert main(["ask", str(tmp_path / "run"), "hello there"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("Q: hello there")
    assert "plugin 'fakeexit' failed to load" in captured.err
    assert main(["eval", str(tmp_path / "run"), "--no-text"]) == 0
    captured = capsys.readouterr()
    assert "identity" in captured.out and "ridge" in captured.out
    assert "warning: plugin 'junk': cellnet_eval_baselines returned <object object at" in captured.err
