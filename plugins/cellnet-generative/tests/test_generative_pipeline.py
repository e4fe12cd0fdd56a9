"""The decoders inside a real pipeline: run-directory save/load and the shipped run config."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellnet_core.config import load_config, validate_run_config
from cellnet_core.pipeline import Pipeline

TEXTS = ["hello there, how are you?", "i am fine, thank you.", "what is your name?", "my name is cell.",
         "do you like green tea?", "yes, with a little honey.", "where do you live?", "in a small lattice."]


def test_pipeline_save_load_keeps_generated_answers(registry, tmp_path):
    """Fake teacher (hashing encoder): fit the ret decoder, save the run, load it, same answers."""
    cfg = validate_run_config(registry, {
        "data": {"name": "chatterbot"},
        "encoder": {"name": "hashing", "dim": 64},
        "decoder": {"name": "hybrid", "bank": {"name": "nearest"}, "beams": 2, "k": 2,
                    "generator": {"name": "ret", "d_model": 48, "n_layers": 1, "n_heads": 2, "ffn_hidden": 96,
                                  "vocab_size": 300, "epochs": 40, "batch_size": 8, "lr": 1e-2,
                                  "val_fraction": 0.0}},
    })
    pipe = Pipeline.build(cfg, registry, cache_dir=tmp_path / "cache")
    pipe.decoder.fit(TEXTS, pipe.encode(TEXTS))
    before = [a.text for a in pipe.answer(TEXTS[:4])]
    pipe.save(tmp_path / "run")
    assert (tmp_path / "run" / "decoder" / "generator" / "tokenizer.json").exists()
    again = Pipeline.load(tmp_path / "run", registry, cache_dir=tmp_path / "cache")
    assert [a.text for a in again.answer(TEXTS[:4])] == before == TEXTS[:4]


def test_shipped_cct_mamba_config_validates(registry):
    path = Path(__file__).resolve().parents[3] / "configs" / "cct-mamba.yaml"
    if not path.exists():
        pytest.skip("run from the cellnet repository to check its configs")
    cfg = load_config(registry, path)
    assert cfg.decoder.name == "cct-mamba" and cfg.training.name == "decoder"
