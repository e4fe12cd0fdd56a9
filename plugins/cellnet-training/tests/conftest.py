from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def fake_reg():
    """(plugin manager, registry): real discovery plus this plugin's named fakes."""
    from cellnet_training.testing import fake_registry

    return fake_registry()


@pytest.fixture
def make_run(fake_reg, tmp_path, monkeypatch):
    """``make_run(training, run="run", **sections) -> (pipeline, data, RunContext factory)``."""
    monkeypatch.setenv("CELLNET_CACHE_DIR", str(tmp_path / "cache"))
    from cellnet_core.config import validate_run_config
    from cellnet_core.pipeline import Pipeline
    from cellnet_core.run import RunContext
    from cellnet_training.testing import fake_config

    _, reg = fake_reg

    def make(training: dict, **sections):
        cfg = validate_run_config(reg, fake_config(training, **sections))
        pipe = Pipeline.build(cfg, reg, cache_dir=tmp_path / "cache")
        data = reg.build("dataset", cfg.data)
        strategy = reg.build("strategy", cfg.training)

        def run(name: str = "run", **kw):
            return RunContext(tmp_path / name, seed=cfg.seed, **kw)

        return pipe, data, strategy, run

    return make
