"""Staged training: ``init_from`` warm starts, ``input_noise``, ``mix`` of two objectives, and the
progress lines a run prints without a terminal."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from cellnet_core.errors import CheckpointError

FAST = {"epochs": 2, "batch_size": 32, "lr": 3e-3, "early_stopping": 0, "plots": False}


def _weights(pipe):
    return {k: v.detach().clone() for k, v in pipe.state_tensors().items()}


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


@pytest.fixture
def source_run(make_run, tmp_path):
    """A trained and saved run (manifest, weights.safetensors) to warm-start from."""
    pipe, data, strategy, run = make_run({"name": "dialogue", **FAST})
    strategy.fit(pipe, data, run("source-train"))
    pipe.save(tmp_path / "source")
    return tmp_path / "source", _weights(pipe)


def test_init_from_loads_the_source_weights_before_epoch_0(make_run, source_run):
    src, want = source_run
    pipe, data, strategy, run = make_run({"name": "dialogue", **FAST, "epochs": 0, "init_from": str(src)})
    assert any(not torch.equal(v, want[k]) for k, v in _weights(pipe).items())  # a fresh pipeline differs
    ctx = run("warm")
    result = strategy.fit(pipe, data, ctx)
    _same(_weights(pipe), want)
    # epoch 0 (the start that training must beat) is the warm-started model
    cold_pipe, data, cold, run = make_run({"name": "dialogue", **FAST, "epochs": 0})
    cold_ctx = run("cold")
    cold.fit(cold_pipe, data, cold_ctx)
    assert ctx.read_metrics()[0]["val_mrr"] > cold_ctx.read_metrics()[0]["val_mrr"]
    assert result.best_epoch == 0


def test_init_from_with_other_shapes_names_the_tensor_and_both_shapes(make_run, source_run):
    src, _ = source_run
    pipe, data, strategy, run = make_run({"name": "dialogue", **FAST, "init_from": str(src)},
                                         core={"name": "tiny-test-core", "hidden": 8})
    with pytest.raises(CheckpointError, match=r"training.init_from: .*weights.safetensors: tensor 'core.l1.weight' "
                                              r"has shape \[16, 4\] there but \[8, 4\] in this config"):
        strategy.fit(pipe, data, run())


def test_init_from_checks_the_source_run(make_run, source_run, tmp_path):
    src, _ = source_run
    pipe, data, strategy, run = make_run({"name": "dialogue", **FAST, "init_from": str(tmp_path / "nowhere")})
    with pytest.raises(CheckpointError, match="training.init_from: .*nowhere: no such run directory"):
        strategy.fit(pipe, data, run())
    with open(src / "weights.safetensors", "r+b") as fh:  # damage one byte of the weights
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 0xFF]))
    pipe, data, strategy, run = make_run({"name": "dialogue", **FAST, "init_from": str(src)})
    with pytest.raises(CheckpointError, match=r"training.init_from: .*weights.safetensors: damaged"):
        strategy.fit(pipe, data, run())


def test_input_noise_changes_training_only_and_is_seeded(make_run):
    runs = {}
    for name, sigma in (("clean", 0.0), ("noisy", 0.3), ("noisy-again", 0.3)):
        pipe, data, strategy, run = make_run({"name": "dialogue", **FAST, "input_noise": sigma})
        ctx = run(name)
        strategy.fit(pipe, data, ctx)
        runs[name] = (_weights(pipe), ctx.read_metrics())
    assert runs["noisy"][1][0] == runs["clean"][1][0]  # validation (epoch 0) sees clean inputs
    assert runs["noisy"][1][1]["train_loss"] != runs["clean"][1][1]["train_loss"]
    assert any(not torch.equal(v, runs["clean"][0][k]) for k, v in runs["noisy"][0].items())
    _same(runs["noisy"][0], runs["noisy-again"][0])


def test_mix_adds_a_weighted_autoencoder_objective(make_run):
    from cellnet_training.strategies import sentence_texts

    def reconstruction(pipe, data):
        with torch.no_grad():
            e = pipe.encode(sentence_texts(data, "train")).float()
            return float(torch.nn.functional.cosine_similarity(pipe.think(e), e).mean())

    training = {"name": "dialogue", **FAST, "epochs": 4, "restore_best": False}
    pipe, data, strategy, run = make_run(training)
    plain = run("plain")
    strategy.fit(pipe, data, plain)
    plain_w, plain_cos = _weights(pipe), reconstruction(pipe, data)
    pipe, data, strategy, run = make_run({**training, "mix": {"autoencoder": 5.0}})
    mixed = run("mixed")
    strategy.fit(pipe, data, mixed)
    rows = mixed.read_metrics()
    assert "train_autoencoder_loss" not in plain.read_metrics()[-1]
    assert all(r["train_autoencoder_loss"] >= 0 for r in rows[1:])
    assert any(not torch.equal(v, plain_w[k]) for k, v in _weights(pipe).items())
    # the dialogue objective pulls the sentences away from themselves; the weighted
    # reconstruction term holds them back
    mixed_cos = reconstruction(pipe, data)
    assert mixed_cos > plain_cos + 0.02, (mixed_cos, plain_cos)
    assert rows[-1]["train_autoencoder_loss"] < 1.0 - plain_cos


def test_mix_beside_autoencoder_and_its_own_objective_refused(make_run):
    pipe, data, strategy, run = make_run({"name": "autoencoder", **FAST, "mix": {"dialogue": 0.5}})
    ctx = run()
    strategy.fit(pipe, data, ctx)
    assert "train_dialogue_loss" in ctx.read_metrics()[-1]
    with pytest.raises(Exception, match="mix.*own objective"):
        make_run({"name": "dialogue", **FAST, "mix": {"dialogue": 0.5}})
    with pytest.raises(Exception, match="mix"):
        make_run({"name": "dialogue", **FAST, "mix": {"ranking": 0.5}})


def test_kill_and_resume_with_noise_mix_and_warm_start_is_bit_identical(make_run, source_run):
    from cellnet_training.engine import TrainingInterrupted

    src, _ = source_run
    training = {"name": "dialogue", **FAST, "epochs": 4, "input_noise": 0.1, "mix": {"autoencoder": 0.3},
                "init_from": str(src), "hard_negatives": 2}
    pipe, data, strategy, run = make_run(training)
    full = strategy.fit(pipe, data, run("full"))
    want = _weights(pipe)

    pipe, data, strategy, run = make_run(training)
    ctx = run("killed")
    ctx.extras["stop_after_epoch"] = 2
    with pytest.raises(TrainingInterrupted):
        strategy.fit(pipe, data, ctx)
    pipe, data, strategy, run = make_run(training)
    resumed = strategy.fit(pipe, data, run("killed", resume=True))
    _same(_weights(pipe), want)
    assert {k: round(v, 6) for k, v in resumed.metrics.items() if k.startswith("val_")} == \
        {k: round(v, 6) for k, v in full.metrics.items() if k.startswith("val_")}
    assert [r["train_loss"] for r in run("killed").read_metrics()[1:]] == \
        [r["train_loss"] for r in run("full").read_metrics()[1:]]


# -- progress ------------------------------------------------------------------------------------
def test_without_a_terminal_every_epoch_prints_one_line(make_run, capsys, monkeypatch):
    monkeypatch.delenv("CELLNET_QUIET", raising=False)
    monkeypatch.delenv("CELLNET_PROGRESS", raising=False)
    pipe, data, strategy, run = make_run({"name": "dialogue", **FAST, "epochs": 3},
                                         data={"name": "fake-wordmap", "selection": True})
    strategy.fit(pipe, data, run())
    err = capsys.readouterr().err.splitlines()
    epochs = [line for line in err if line.startswith("dialogue epoch ")]
    assert len(epochs) == 4 and epochs[0].startswith("dialogue epoch 0/3 (start)")
    for k, line in enumerate(epochs[1:], start=1):
        assert line.startswith(f"dialogue epoch {k}/3  train loss ")
        assert " val map " in line and " best epoch " in line and line.endswith(" s")
    fit = [line for line in err if "decoder" in line]
    assert fit[0] == f"fitting decoder 'nearest' on {len({p.answer for p in data.pairs('train')})} sentences…"
    assert fit[1].startswith("decoder 'nearest' fitted in ") and fit[1].endswith(" s")


def test_on_a_terminal_the_bar_replaces_the_lines(make_run, capsys, monkeypatch):
    monkeypatch.delenv("CELLNET_QUIET", raising=False)
    monkeypatch.delenv("CELLNET_PROGRESS", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    pipe, data, strategy, run = make_run({"name": "dialogue", **FAST})
    strategy.fit(pipe, data, run())
    assert "dialogue epoch 1/2" not in capsys.readouterr().err


def test_quiet_prints_nothing(make_run, capsys, monkeypatch):
    monkeypatch.setenv("CELLNET_QUIET", "1")
    pipe, data, strategy, run = make_run({"name": "dialogue", **FAST})
    strategy.fit(pipe, data, run())
    assert capsys.readouterr().err == ""


# -- through the command line ---------------------------------------------------------------------
def test_cli_init_from_mismatch_exits_2_naming_the_tensor(tmp_path, capsys, monkeypatch, registry):
    """Autoencoder pre-training, then dialogue warm-started from it; a third run whose lattice has
    another size fails with exit code 2 and one line."""
    if "faq" not in registry.names("dataset") or "lattice" not in registry.names("core"):
        pytest.skip("needs the cellnet-datasets and cellnet-lattice plugins")
    from cellnet_core.cli import main

    monkeypatch.setenv("CELLNET_CACHE_DIR", str(tmp_path / "cache"))
    cfg = tmp_path / "small.yaml"
    cfg.write_text(
        "seed: 0\ndevice: cpu\ndata: {name: faq, max_pairs: 40}\nencoder: {name: hashing, dim: 32}\n"
        "reshaper: {name: surface, shape: [3, 3, 2], channels: 4}\n"
        "core: {name: lattice, cell: {name: nca, hidden: 8}, steps: 2, kernel: reference}\n"
        "decoder: {name: nearest}\n"
        "training: {name: dialogue, epochs: 1, batch_size: 16, plots: false}\n")
    ae, staged, bad = tmp_path / "ae", tmp_path / "staged", tmp_path / "bad"
    assert main(["train", str(cfg), "--run-dir", str(ae), "--set", "training.name=autoencoder",
                 "--set", "training.loss=cosine"]) == 0
    assert main(["train", str(cfg), "--run-dir", str(staged), "--set", f"training.init_from={ae}"]) == 0
    assert json.loads((staged / "manifest.json").read_text())["files"]
    capsys.readouterr()
    code = main(["train", str(cfg), "--run-dir", str(bad), "--set", f"training.init_from={ae}",
                 "--set", "core.cell.hidden=16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: training.init_from: ") and "has shape [" in err[-1] \
        and "there but [" in err[-1] and "in this config" in err[-1]
    assert not (bad / "weights.safetensors").exists()
