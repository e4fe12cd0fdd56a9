"""The core's strategy contract, for each strategy of this plugin (real discovery, FakePairs data)."""

from __future__ import annotations

from cellnet_core.testing.contracts import StrategyContract

_PIPE = {
    "data": {"name": "chatterbot"},  # validated only; fit gets FakePairs
    "encoder": {"name": "hashing", "dim": 48},
    "reshaper": {"name": "flat", "shape": [4, 4, 3], "channels": 1},
    "core": {"name": "lattice", "cell": {"name": "nca", "hidden": 8}, "steps": 2, "kernel": "reference"},
}
_FAST = {"epochs": 1, "batch_size": 4, "plots": False}


class TestDialogueContract(StrategyContract):
    name = "dialogue"
    config = _FAST
    pipeline_config = _PIPE


class TestCurriculumContract(StrategyContract):
    name = "curriculum"
    config = {**_FAST, "epochs": 2}
    pipeline_config = _PIPE


class TestAutoencoderContract(StrategyContract):
    name = "autoencoder"
    config = {**_FAST, "loss": [{"name": "cosine", "weight": 1.0}, {"name": "mse", "weight": 0.1}]}
    pipeline_config = _PIPE


class TestDistillContract(StrategyContract):
    name = "distill"
    config = {**_FAST, "teachers": [{"encoder": {"name": "hashing", "dim": 32}, "weight": 1.0}]}
    pipeline_config = _PIPE


class TestDecoderContract(StrategyContract):
    name = "decoder"
    config = {"source": "both"}
    pipeline_config = _PIPE
