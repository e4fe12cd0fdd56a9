"""The example plugin, tested the way any third-party plugin would be: through real discovery
and the core's contract classes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cellnet_core.testing.contracts import CellContract, DatasetContract, EncoderContract, LossContract


class TestGreetings(DatasetContract):
    name = "greetings"


class TestCharNgram(EncoderContract):
    name = "char-ngram"
    config = {"dim": 64}


class TestResidualTanhCell(CellContract):
    name = "residual-tanh"
    config = {"hidden": 8, "scale": 0.5}


class TestCosineMarginLoss(LossContract):
    name = "cosine-margin"
    config = {"scale": 10.0, "margin": 0.3}


def test_listed_by_cellnet_plugins():
    out = subprocess.run([sys.executable, "-m", "cellnet_core.cli", "plugins"], capture_output=True, text=True)
    assert out.returncode == 0
    line = next(line for line in out.stdout.splitlines() if line.startswith("example"))
    assert "cellnet-example-plugin" in line and "0.1.0" in line and "dataset:greetings" in line


def _cellnet(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cellnet_core.cli", *args], capture_output=True, text=True,
                          cwd=cwd)


def test_components_lists_the_cell_and_loss_beside_the_built_ins():
    """``cellnet components --kind cell`` / ``--kind loss`` show this plugin's parts with the others."""
    pytest.importorskip("cellnet_lattice")
    pytest.importorskip("cellnet_training")
    cells = _cellnet("components", "--kind", "cell", "--json")
    assert cells.returncode == 0, cells.stderr
    rows = {r["name"]: r["plugin"] for r in json.loads(cells.stdout)}
    assert rows["residual-tanh"] == "example" and {"mlp", "gmlp", "nca"} <= set(rows)
    losses = _cellnet("components", "--kind", "loss")
    assert losses.returncode == 0, losses.stderr
    names = [line.split()[0] for line in losses.stdout.splitlines()[1:] if line.strip()]
    assert {"cosine-margin", "infonce", "cosine", "mse", "triplet"} <= set(names)


TRAIN_CONFIG = """
seed: 0
data: {name: greetings}
encoder: {name: char-ngram, dim: 48}
reshaper: {name: flat, shape: [4, 4, 1], channels: 3}
core: {name: lattice, cell: {name: residual-tanh, hidden: 8}, steps: 3, kernel: auto}
decoder: {name: nearest}
training:
  name: dialogue
  epochs: 6
  batch_size: 16
  lr: 0.01
  warmup_epochs: 0
  plots: false
  early_stopping: 0
  restore_best: false
  loss: [{name: cosine-margin, margin: 0.3, weight: 1.0}, {name: cosine, weight: 0.5}]
"""


def test_cell_and_loss_train_through_cellnet_train(tmp_path):
    """``cellnet train`` with this plugin's cell in the lattice and its loss in the objective: the
    resolved config names both, the loss falls, and the cell's weights left their start."""
    pytest.importorskip("cellnet_lattice")
    pytest.importorskip("cellnet_training")
    from safetensors.torch import load_file

    cfg = tmp_path / "example.yaml"
    cfg.write_text(TRAIN_CONFIG, encoding="utf-8")
    out = _cellnet("train", str(cfg), "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    run = tmp_path / "run"
    import yaml

    resolved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert resolved["core"]["cell"] == {"name": "residual-tanh", "hidden": 8, "scale": 1.0}
    assert resolved["training"]["loss"][0] == {"name": "cosine-margin", "scale": 20.0, "margin": 0.3, "weight": 1.0}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    assert len(losses) == 6 and losses[-1] < losses[0]
    weights = load_file(str(run / "weights.safetensors"))
    out_weight = next(v for k, v in weights.items() if k.endswith("cell.out.weight"))
    assert out_weight.abs().sum() > 0  # zero at init: the cell was trained
