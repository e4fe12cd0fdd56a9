"""Run directories: one folder is one run, written aside and moved into place when complete;
interrupted runs resume; validation catches what training would refuse, before any file exists."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cellnet_core import api
from cellnet_core.cli import main
from cellnet_core.errors import CheckpointError, ConfigError
from cellnet_core.run import partial_dir

from cellnet_core.testing.fakes import GREETINGS_CONFIG as GREET

LATTICE = """
seed: 0
device: cpu
data: {name: greetings}
encoder: {name: hashing, dim: 64}
reshaper: {name: surface, shape: [4, 4, 2], channels: 4}
core: {name: lattice, cell: {name: mlp, hidden: 8}, steps: 2}
decoder: {name: nearest}
training: {name: dialogue, epochs: 3, batch_size: 16, plots: false}
"""

FAST = {"name": "dialogue", "epochs": 3, "batch_size": 32, "lr": 3e-3, "early_stopping": 0, "plots": False}


def _cli(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cellnet_core.cli", *argv], capture_output=True, text=True,
                          cwd=cwd)


@pytest.fixture
def greet(tmp_path) -> Path:
    cfg = tmp_path / "greet.yaml"
    cfg.write_text(GREET)
    return cfg


@pytest.fixture
def lattice_cfg(tmp_path) -> Path:
    cfg = tmp_path / "lattice.yaml"
    cfg.write_text(LATTICE)
    return cfg


class Crash:
    """An observer that kills training after ``epoch`` was logged (before its checkpoint)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    from cellnet_core import hookimpl

    @hookimpl
    def cellnet_on_epoch_end(self, run_dir, epoch, metrics):
        if epoch == self.epoch:
            raise KeyboardInterrupt("simulated kill")  # a kill; observer faults are skipped


def test_non_empty_run_dir_refused_with_one_line(greet, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("someone else's files")
    r = _cli("train", str(greet), "--run-dir", str(run))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "not empty" in lines[0] and "--overwrite" in lines[0] and "Traceback" not in r.stderr
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    assert not partial_dir(run).exists()


def test_empty_run_dir_is_used(greet, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert main(["train", str(greet), "--run-dir", str(run)]) == 0
    assert (run / "manifest.json").exists()


def test_overwrite_replaces_the_old_run(greet, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(greet), "--run-dir", str(run)]) == 0
    (run / "stale.png").write_bytes(b"old picture")
    (run / "best.safetensors").write_bytes(b"old weights")
    assert main(["train", str(greet), "--run-dir", str(run), "--set", "decoder.k=3"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["train", str(greet), "--run-dir", str(run), "--set", "decoder.k=3", "--overwrite"]) == 0
    assert not (run / "stale.png").exists() and not (run / "best.safetensors").exists()
    manifest = json.loads((run / "manifest.json").read_text())
    assert set(manifest["files"]) <= {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}
    assert api.load_run(run).config.decoder.k == 3
    assert not partial_dir(run).exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial, no .old left


def test_a_crash_leaves_no_loadable_half_run_and_resume_finishes_it(lattice_cfg, tmp_path, capsys):
    from cellnet_core.plugins import collect_registry, create_plugin_manager, register_plugin

    pm = create_plugin_manager(autoload=True)
    register_plugin(pm, Crash(epoch=2), "crash")
    plugins = (pm, collect_registry(pm))
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt, match="simulated kill"):
        api.train(lattice_cfg, run, plugins=plugins)
    err = capsys.readouterr().err
    assert f"cellnet train --resume {run}" in err
    partial = partial_dir(run)
    assert not run.exists() and partial.is_dir()
    assert not (partial / "manifest.json").exists()
    for path in (partial, run):
        with pytest.raises(CheckpointError, match="not complete; an interrupted run waits"):
            api.load_run(path)
    r = _cli("ask", str(run), "hello")
    assert r.returncode == 2 and "--resume" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # a fresh train into the same run directory is refused while the interrupted run waits
    assert main(["train", str(lattice_cfg), "--run-dir", str(run)]) == 2
    assert "--resume" in capsys.readouterr().err
    # the command line finds the interrupted run from the run directory's name
    assert main(["train", "--resume", str(run)]) == 0
    assert not partial.exists()
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2, 3]
    assert api.load_run(run, warn=False).run_dir == run

    # the same run uninterrupted: the resumed one ends with the same weights
    again = tmp_path / "again"
    api.train(lattice_cfg, again, echo=None)
    want = api.load_run(again, warn=False).state_tensors()
    got = api.load_run(run, warn=False).state_tensors()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)


def test_kill_and_resume_through_the_api_matches_uninterrupted(tmp_path):
    from cellnet_training.testing import fake_config, fake_registry

    full = api.train(fake_config(FAST), tmp_path / "full", plugins=fake_registry(), echo=None)
    assert full.train_info["untrained"] is False and full.train_info["best_epoch"] > 0

    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt, match="simulated kill"):
        api.train(fake_config(FAST), killed, plugins=fake_registry({"crash": Crash(epoch=2)}), echo=None)
    assert not killed.exists()
    resumed = api.train(None, killed, resume=True, plugins=fake_registry(), echo=None)
    def val(info):
        return {k: v for k, v in info["metrics"].items() if k.startswith("val_")}

    assert val(resumed.train_info) == val(full.train_info)
    for k, v in full.state_tensors().items():
        torch.testing.assert_close(resumed.state_tensors()[k], v, rtol=0, atol=0)


def test_resume_a_complete_run_trains_it_further(lattice_cfg, tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(lattice_cfg), "--run-dir", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--set", "training.epochs=5"]) == 0
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2, 3, 4, 5]
    assert api.load_run(run, warn=False).config.training.epochs == 5


def test_resume_needs_a_run(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "no run to resume" in capsys.readouterr().err


def test_validate_checks_kernel_options_before_training_writes_anything(lattice_cfg, tmp_path):
    r = _cli("validate", str(lattice_cfg), "--set", "core.kernel_options={bogus: 1}")
    assert r.returncode == 2
    assert r.stderr.strip() == f"{lattice_cfg}: core.kernel_options.bogus: unknown field"
    assert main(["validate", str(lattice_cfg), "--set", "core.kernel=fused",
                 "--set", "core.kernel_options={block_cells: 0}"]) == 0
    run = tmp_path / "run"
    r = _cli("train", str(lattice_cfg), "--run-dir", str(run), "--set", "core.kernel=reference",
             "--set", "core.kernel_options={block_cells: 0}")
    assert r.returncode == 2 and "core.kernel_options.block_cells: unknown field" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not run.exists() and not partial_dir(run).exists()


def test_validate_checks_data_files(tmp_path, capsys):
    cfg = tmp_path / "user.yaml"
    cfg.write_text(GREET.replace("data: {name: greetings}", f"data: {{name: pairs, train: {tmp_path / 'no.jsonl'}}}"))
    assert main(["validate", str(cfg)]) == 2
    assert "no.jsonl" in capsys.readouterr().err
    assert main(["validate", str(cfg), "--no-data"]) == 0  # config checks only


def test_a_lattice_without_training_section_is_refused(tmp_path):
    cfg = tmp_path / "nt.yaml"
    cfg.write_text(LATTICE.replace("training: {name: dialogue, epochs: 3, batch_size: 16, plots: false}\n", ""))
    r = _cli("validate", str(cfg))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "training: section missing" in r.stderr and "core 'lattice' untrained" in r.stderr
    assert "dialogue" in r.stderr
    r = _cli("train", str(cfg), "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2 and "trained in" not in r.stdout + r.stderr
    # asked for on purpose: accepted
    assert main(["validate", str(cfg), "--set", "training.name=retrieval"]) == 0
    with pytest.raises(ConfigError, match="training: section missing"):
        api.load_config(str(cfg))


def test_untrained_start_is_flagged_by_train_ask_and_eval(lattice_cfg, tmp_path):
    run = tmp_path / "run"
    r = _cli("train", str(lattice_cfg), "--run-dir", str(run), "--set", "training.epochs=0")
    assert r.returncode == 0, r.stderr
    assert "WARNING" in r.stderr and "untrained start" in r.stderr
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["train"]["best_epoch"] == 0 and manifest["train"]["untrained"] is True
    for argv in (["ask", str(run), "hello"], ["eval", str(run), "--baselines", "identity"]):
        r = _cli(*argv)
        assert r.returncode == 0, r.stderr
        assert any(line.startswith("warning:") and "untrained start" in line for line in r.stderr.splitlines())
    with pytest.warns(UserWarning, match="untrained start"):
        api.load_run(run)


def test_a_trained_run_is_not_flagged(tmp_path):
    from cellnet_training.testing import fake_config, fake_registry

    plugins = fake_registry()
    api.train(fake_config(FAST), tmp_path / "run", plugins=plugins, echo=None)
    assert api.untrained_warning(tmp_path / "run") is None


def test_a_failure_before_any_checkpoint_leaves_nothing_behind(greet, tmp_path, monkeypatch, capsys):
    from cellnet_core.builtin import components

    def boom(self, pipeline, data, run):
        raise RuntimeError("failed before the first checkpoint")

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(components.RetrievalStrategy, "fit", boom)
        with pytest.raises(RuntimeError, match="before the first checkpoint"):
            api.train(greet, run)
    assert not run.exists() and not partial_dir(run).exists()
    assert "--resume" not in capsys.readouterr().err  # nothing to resume: not offered
    assert main(["train", str(greet), "--run-dir", str(run)]) == 0


@pytest.mark.slow
def test_data_parallel_workers_share_one_partial_directory(lattice_cfg, tmp_path):
    """``--nproc 2``: the parent checks and prepares ``.run.partial`` once; rank 0 moves it into place."""
    run = tmp_path / "run"
    r = _cli("train", str(lattice_cfg), "--run-dir", str(run), "--nproc", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (run / "manifest.json").exists() and not partial_dir(run).exists()
    assert api.load_run(run, warn=False).config.training.epochs == 3
    r = _cli("train", str(lattice_cfg), "--run-dir", str(run), "--nproc", "2", cwd=tmp_path)
    assert r.returncode == 2 and "not empty" in r.stderr


@pytest.mark.parametrize("sets,needle", [
    (["reshaper.channels=3"], "reshaper.channels: 3 does not divide the embedding size 256 of encoder 'hashing'"),
    (["reshaper.shape=[4,4,4]", "reshaper.channels=2"], "= 128, but encoder 'hashing' gives 256 dims"),
])
def test_validate_catches_a_reshaper_that_does_not_fit_the_teacher(greet, sets, needle):
    r = _cli("validate", str(greet), *[a for s in sets for a in ("--set", s)])
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert main(["validate", str(greet), "--set", "reshaper.shape=[4,4,4]", "--set", "reshaper.channels=4"]) == 0
