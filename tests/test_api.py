"""The Python API: load plugins, load a config, train, load a run, answer, evaluate; documented."""

from __future__ import annotations

import inspect

import pytest

import cellnet_core
from cellnet_core import api
from cellnet_core.errors import ConfigError
from cellnet_core.pipeline import Answer, Pipeline

CONFIG = {
    "seed": 0,
    "data": {"name": "greetings"},
    "encoder": {"name": "hashing", "dim": 256},
    "reshaper": {"name": "flat", "channels": 1},
    "core": {"name": "identity"},
    "decoder": {"name": "nearest"},
    "training": {"name": "retrieval"},
}


@pytest.fixture(scope="module")
def plugins():
    return cellnet_core.load_plugins()


def test_reexported_from_the_package():
    for name in ("load_plugins", "load_config", "resolved_config", "train", "load_run", "answer", "evaluate",
                 "Plugins"):
        assert getattr(cellnet_core, name) is getattr(api, name)


def test_load_config_from_dict_file_and_overrides(plugins, tmp_path):
    import yaml

    cfg = cellnet_core.load_config(CONFIG, ["decoder.k=3"], plugins=plugins)
    assert cfg.decoder.k == 3 and cfg.encoder.dim == 256
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    assert cellnet_core.load_config(path, plugins=plugins).decoder.k == 5
    assert cellnet_core.load_config(cfg, ["seed=4"], plugins=plugins).seed == 4
    with pytest.raises(ConfigError, match=r"config: decoder.k: Input should be greater than or equal to 1"):
        cellnet_core.load_config(CONFIG, ["decoder.k=0"], plugins=plugins)
    assert cellnet_core.resolved_config(CONFIG, plugins=plugins)["eval"]["candidates"] == "test"


def test_train_load_answer_evaluate(plugins, tmp_path):
    pipe = cellnet_core.train(CONFIG, tmp_path / "run", plugins=plugins, echo=None)
    assert isinstance(pipe, Pipeline) and pipe.run_dir == tmp_path / "run"
    assert pipe.train_info["untrained"] is False  # nothing to train: the identity core has no weights
    answers = cellnet_core.answer(pipe, "good morning", k=2)
    assert isinstance(answers[0], Answer) and answers[0].text and len(answers[0].candidates) == 2
    loaded = cellnet_core.load_run(tmp_path / "run", plugins=plugins)
    assert loaded.run_dir == tmp_path / "run"
    assert cellnet_core.answer(tmp_path / "run", ["good morning"], plugins=plugins)[0].text == answers[0].text
    result = cellnet_core.evaluate(loaded, baselines=["identity"], plugins=plugins)
    assert [r["name"] for r in result["rows"]] == ["run", "identity"] and result["data"] == "greetings:test"
    with pytest.raises(ConfigError, match="not empty"):
        cellnet_core.train(CONFIG, tmp_path / "run", plugins=plugins, echo=None)
    again = cellnet_core.train(CONFIG, tmp_path / "run", overwrite=True, plugins=plugins, echo=None)
    assert again.run_dir == tmp_path / "run"


def test_evaluate_unknown_baseline_lists_the_available(plugins, tmp_path):
    pipe = cellnet_core.train(CONFIG, tmp_path / "run", plugins=plugins, echo=None)
    with pytest.raises(ConfigError, match="unknown 'nope'; available: .*identity"):
        cellnet_core.evaluate(pipe, baselines=["nope"], plugins=plugins)


def test_every_public_function_and_method_is_documented():
    import cellnet_core.cache
    import cellnet_core.checkpoint
    import cellnet_core.config
    import cellnet_core.registry
    import cellnet_core.run

    missing = []
    for module in (api, cellnet_core.run, cellnet_core.cache, cellnet_core.config, cellnet_core.checkpoint,
                   cellnet_core.registry):
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj) or inspect.isclass(obj):
                if not (obj.__doc__ or "").strip():
                    missing.append(f"{module.__name__}.{name}")
    for cls in (Pipeline, cellnet_core.registry.Registry, cellnet_core.run.RunContext):
        for name, member in vars(cls).items():
            if name.startswith("_") or not (inspect.isfunction(member) or isinstance(member, classmethod)):
                continue
            fn = member.__func__ if isinstance(member, classmethod) else member
            if not (fn.__doc__ or "").strip():
                missing.append(f"{cls.__name__}.{name}")
    assert not missing, missing
