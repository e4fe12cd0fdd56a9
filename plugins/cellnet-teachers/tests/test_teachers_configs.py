"""The run configs this plugin owns validate against the installed components."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("name", ["smollm2.yaml", "ensemble.yaml"])
def test_run_config_validates(registry, name):
    from cellnet_core.config import load_config

    cfg = load_config(registry, ROOT / "configs" / name)
    assert cfg.encoder.name in ("smollm2", "ensemble")
    if cfg.encoder.name == "ensemble":
        assert [e["name"] for e in cfg.encoder.encoders] == ["minilm", "smollm2"]
