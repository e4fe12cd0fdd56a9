"""The phrase bank inside a real pipeline (fake teacher: the core's hashing encoder): trained by the
core's retrieval strategy, saved into the run directory with the manifest, loaded back."""

from __future__ import annotations

import json

import pytest

from cellnet_core.config import validate_run_config
from cellnet_core.pipeline import Pipeline
from cellnet_core.run import RunContext
from cellnet_core.testing.fakes import FakePairs


@pytest.mark.parametrize("method", ["best", "compose"])
def test_pipeline_train_save_load_answer(registry, tmp_path, monkeypatch, method):
    if "pairs" not in registry.names("dataset"):
        pytest.skip("needs the 'pairs' dataset of cellnet-datasets for a valid run config")
    monkeypatch.setenv("CELLNET_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n"
                            for q, a in [("hi", "hello"), ("bye", "see you")]))
    cfg = validate_run_config(registry, {
        "data": {"name": "pairs", "path": str(data)},
        "encoder": {"name": "hashing", "dim": 64},
        "reshaper": {"name": "flat", "channels": 4},
        "decoder": {"name": "phrasebank", "method": method, "index": "hnsw", "recall_sample": 8},
        "training": {"name": "retrieval"},
    })
    pipe = Pipeline.build(cfg, registry, cache_dir=tmp_path / "cache")
    assert pipe.decoder.encoder is pipe.encoder  # the teacher is kept for compose / texts_file
    strategy = registry.build("strategy", cfg.training)
    strategy.fit(pipe, FakePairs(), RunContext(tmp_path / "run"))
    answers = [p.answer for p in FakePairs().pairs("train")]
    assert pipe.decode(pipe.encode(answers)) == answers
    pipe.save(tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert {"decoder/index.faiss", "decoder/texts.jsonl", "decoder/meta.json"} <= set(manifest["files"])
    again = Pipeline.load(tmp_path / "run", registry, cache_dir=tmp_path / "cache")
    assert again.decoder.index_kind == "hnsw" and len(again.decoder) == len(answers)
    out = again.answer(["i am fine thanks", "see you soon"])
    assert [a.text for a in out] == ["i am fine thanks", "see you soon"]
    assert out[0].score == pytest.approx(1.0, abs=1e-5)
