"""End to end on real parts: MiniLM teacher → surface reshaper → NCA lattice → FAISS phrase bank,
trained with dialogue + InfoNCE on a small real chatterbot split; ``ask`` answers from the bank
and ``eval`` beats the mean-answer baseline."""

import json

import pytest
import yaml

from cellnet_core.cli import main

CONFIG = {
    "seed": 0,
    "data": {"name": "chatterbot", "max_pairs": 400},
    "encoder": {"name": "minilm"},
    "reshaper": {"name": "surface", "shape": [4, 4, 4], "channels": 8},
    "core": {"name": "lattice", "cell": {"name": "nca", "hidden": 32}, "steps": 4, "kernel": "auto"},
    "decoder": {"name": "phrasebank"},
    "training": {"name": "dialogue", "epochs": 6, "lr": 3.0e-3, "loss": "infonce", "batch_size": 32,
                 "plots": False},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e")
    (d / "default-tiny.yaml").write_text(yaml.safe_dump(CONFIG))
    assert main(["train", str(d / "default-tiny.yaml"), "--run-dir", str(d / "run")]) == 0
    return d / "run"


def test_ask_answers_from_the_bank(run_dir, capsys):
    assert main(["ask", str(run_dir), "what is your name?", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)[0]
    bank = {json.loads(line)["text"] for line in (run_dir / "decoder" / "texts.jsonl").read_text().splitlines()
            if line.strip()}
    assert out["answer"] in bank
    assert out["candidates"] and out["steps"] is not None
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["run"]["kernel"] == "fused"


def test_eval_beats_mean_baseline(run_dir, capsys):
    assert main(["eval", str(run_dir), "--json", "--baselines", "mean,identity"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert rows["run"]["mrr"] > rows["mean"]["mrr"]
    assert rows["run"]["recall@10"] > rows["mean"]["recall@10"]
