"""Run directories under hostile conditions: one writer per run, a finished run kept loadable while
it is trained further, verified resume (checksums, torn logs, a deleted state), manifest entries
that stay inside the run, cache entries that are checked, terminal escapes in questions."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from cellnet_core import api
from cellnet_core.checkpoint import MANIFEST, load_tensors, save_tensors, verify_manifest, write_manifest
from cellnet_core.cli import main
from cellnet_core.errors import CheckpointError, ConfigError
from cellnet_core.run import (CHECKPOINT_RECORD, METRICS_FILE, STATE_FILE, RunContext, lock_path, lock_run_dir,
                              partial_dir)

LATTICE = """
seed: 0
device: cpu
data: {name: greetings}
encoder: {name: hashing, dim: 64}
reshaper: {name: surface, shape: [4, 4, 2], channels: 4}
core: {name: lattice, cell: {name: mlp, hidden: 8}, steps: 2}
decoder: {name: nearest}
training: {name: dialogue, epochs: 3, batch_size: 16, lr: 3.0e-3, early_stopping: 0, plots: false}
"""


def _cli(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cellnet_core.cli", *argv], capture_output=True, text=True, **kw)


def _one_line(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def _flip(path: Path, at: int = -3) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / METRICS_FILE).read_text().splitlines()]


@pytest.fixture
def cfg(tmp_path) -> Path:
    path = tmp_path / "lattice.yaml"
    path.write_text(LATTICE)
    return path


@pytest.fixture
def finished(cfg, tmp_path) -> Path:
    """A complete 3-epoch run."""
    run = tmp_path / "run"
    api.train(cfg, run, echo=None)
    return run


def _interrupted(cfg: Path, run: Path, after: int = 1) -> Path:
    """A run stopped after the checkpoint of epoch ``after``; returns its partial directory."""
    from cellnet_training.engine import TrainingInterrupted

    with pytest.raises(TrainingInterrupted):
        api.train(cfg, run, echo=None, extras={"stop_after_epoch": after})
    return partial_dir(run)


# -- part 2: one writer, transactional runs ---------------------------------------------------------
def test_second_writer_is_refused_naming_the_holder(cfg, tmp_path):
    run = tmp_path / "run"
    lock = lock_run_dir(run)
    try:
        line = _one_line(_cli("train", str(cfg), "--run-dir", str(run)))
        assert f"locked by process {os.getpid()}" in line and str(lock_path(run)) in line
        line = _one_line(_cli("train", str(cfg), "--run-dir", str(run), "--overwrite"))
        assert f"locked by process {os.getpid()}" in line
    finally:
        lock.release()
    assert not run.exists() and not partial_dir(run).exists() and not lock_path(run).exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(cfg, tmp_path):
    run = tmp_path / "run"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path(run).write_text(f"{dead.pid}\n")  # what a killed trainer leaves (its flock died with it)
    assert main(["train", str(cfg), "--run-dir", str(run)]) == 0
    assert not lock_path(run).exists()
    verify_manifest(run)


def test_two_trainings_into_one_directory_one_wins_the_other_is_refused(cfg, tmp_path):
    run = tmp_path / "run"
    procs = [subprocess.Popen([sys.executable, "-m", "cellnet_core.cli", "train", str(cfg), "--run-dir", str(run)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in outs)
    assert codes == [0, 2], outs
    err = next(e for rc, e in outs if rc == 2)
    assert "locked by process" in err or "not empty" in err or "writing this run" in err
    assert _epochs(run) == [0, 1, 2, 3]  # one log, not two interleaved
    verify_manifest(run)


def test_a_bad_set_on_a_finished_run_changes_nothing(finished):
    before = {p.name: p.read_bytes() for p in finished.iterdir() if p.is_file()}
    r = _cli("train", "--resume", str(finished), "--set", "training.epochs=many")
    assert "training.epochs" in _one_line(r)
    r = _cli("train", "--resume", str(finished), "--set", "core.steps=-1")
    assert "core.steps" in _one_line(r)
    assert {p.name: p.read_bytes() for p in finished.iterdir() if p.is_file()} == before
    assert not partial_dir(finished).exists()
    verify_manifest(finished)


def test_resume_killed_leaves_the_finished_model_loadable(finished):
    from cellnet_training.engine import TrainingInterrupted

    want = api.load_run(finished, warn=False).state_tensors()
    with pytest.raises(TrainingInterrupted):
        api.train(None, finished, resume=True, overrides=["training.epochs=6"], echo=None,
                  extras={"stop_after_epoch": 4})
    pipe = api.load_run(finished, warn=False)  # verified against its manifest
    assert pipe.config.training.epochs == 3 and _epochs(finished) == [0, 1, 2, 3]
    for k, v in want.items():
        torch.testing.assert_close(pipe.state_tensors()[k], v, rtol=0, atol=0)
    # the further training waits in the partial directory and finishes from epoch 4
    assert main(["train", "--resume", str(finished)]) == 0
    assert api.load_run(finished, warn=False).config.training.epochs == 6 and _epochs(finished) == list(range(7))


def test_resume_out_of_disk_leaves_the_finished_model_loadable(finished, monkeypatch):
    import cellnet_core.pipeline as pipeline_mod

    def full(path, *a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(pipeline_mod, "save_tensors", full)
    with pytest.raises(Exception) as exc:
        api.train(None, finished, resume=True, overrides=["training.epochs=5"], echo=None)
    assert "No space left" in str(exc.value) or "space" in str(exc.value).lower()
    monkeypatch.undo()
    pipe = api.load_run(finished, warn=False)
    assert pipe.config.training.epochs == 3
    assert not lock_path(finished).exists()  # the failed writer let go of the run


def test_resuming_under_another_config_is_refused(finished, cfg, tmp_path):
    line = _one_line(_cli("train", "--resume", str(finished), "--set", "training.lr=0.01"))
    assert "resuming under another config is refused: training.lr" in line and "training.epochs" in line
    # the documented resumable keys are accepted
    assert main(["train", "--resume", str(finished), "--set", "training.epochs=4", "--set", "device=cpu"]) == 0
    # an interrupted run too, also when the new config comes as a file
    other = tmp_path / "other.yaml"
    other.write_text(LATTICE.replace("steps: 2", "steps: 3"))
    _interrupted(cfg, tmp_path / "cut")
    with pytest.raises(ConfigError, match="resuming under another config is refused: core.steps: 2 → 3"):
        api.train(other, tmp_path / "cut", resume=True, echo=None)


def test_killed_before_its_first_checkpoint_and_resumed_under_another_config(cfg, tmp_path, monkeypatch):
    run = tmp_path / "run"

    def killed(self, state, name=STATE_FILE):
        raise KeyboardInterrupt("killed before the first checkpoint")

    with monkeypatch.context() as m:
        m.setattr(RunContext, "save_state", killed)
        with pytest.raises(KeyboardInterrupt):
            api.train(cfg, run, echo=None)
    assert partial_dir(run).is_dir() and not (partial_dir(run) / STATE_FILE).exists()
    with pytest.raises(ConfigError, match="another config is refused: training.lr"):
        api.train(None, run, resume=True, overrides=["training.lr=0.05"], echo=None)
    api.train(None, run, resume=True, echo=None)  # under its own config it trains from the start
    assert _epochs(run) == [0, 1, 2, 3]


def test_the_config_hash_is_part_of_the_training_state(tmp_path):
    ctx = RunContext(tmp_path / "r", config_hash="aaaa")
    ctx.save_state({"epoch": 1, "w": torch.ones(2)})
    assert RunContext(tmp_path / "r", resume=True, config_hash="aaaa").load_state()["epoch"] == 1
    with pytest.raises(CheckpointError, match="made under another config"):
        RunContext(tmp_path / "r", resume=True, config_hash="bbbb").load_state()


# -- part 3: verified resume ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", [STATE_FILE, "best.safetensors", CHECKPOINT_RECORD])
def test_a_flipped_byte_in_a_finished_runs_training_files_is_named(finished, name):
    _flip(finished / name, -3 if name.endswith(".safetensors") else 5)
    line = _one_line(_cli("train", "--resume", str(finished), "--set", "training.epochs=5"))
    assert f"{finished / name}: damaged" in line
    assert not partial_dir(finished).exists()


@pytest.mark.parametrize("name", [STATE_FILE, "best.safetensors"])
def test_a_flipped_byte_in_an_interrupted_runs_state_is_named(cfg, tmp_path, name):
    partial = _interrupted(cfg, tmp_path / "run", after=2)
    _flip(partial / name)
    with pytest.raises(CheckpointError, match=f"{name}: damaged"):
        api.train(None, tmp_path / "run", resume=True, echo=None)


def test_best_weights_from_another_state_are_refused(cfg, tmp_path):
    partial = _interrupted(cfg, tmp_path / "run", after=2)
    save_tensors(partial / "best.safetensors", load_tensors(partial / "best.safetensors"), metadata={"epoch": "9"})
    with pytest.raises(CheckpointError, match="best.safetensors: does not belong to the training state"):
        api.train(None, tmp_path / "run", resume=True, echo=None)


def test_a_torn_last_metrics_line_is_cut_back_with_a_warning(cfg, tmp_path, capsys):
    run = tmp_path / "run"
    partial = _interrupted(cfg, run, after=2)
    with open(partial / METRICS_FILE, "a") as fh:
        fh.write('{"epoch": 3, "train_lo')  # what a kill in the middle of an append leaves
    capsys.readouterr()
    api.train(None, run, resume=True, echo=None)
    err = capsys.readouterr().err
    assert "warning:" in err and "metrics.jsonl: line 4 is incomplete" in err
    assert _epochs(run) == [0, 1, 2, 3]


def test_a_damaged_metrics_line_before_the_last_is_an_error(cfg, tmp_path):
    partial = _interrupted(cfg, tmp_path / "run", after=2)
    lines = (partial / METRICS_FILE).read_text().splitlines()
    lines[1] = lines[1][:10]
    (partial / METRICS_FILE).write_text("\n".join(lines) + "\n")
    with pytest.raises(CheckpointError, match="metrics.jsonl: line 2: damaged"):
        api.train(None, tmp_path / "run", resume=True, echo=None)


def test_a_deleted_training_state_needs_restart(finished, cfg, tmp_path):
    (finished / STATE_FILE).unlink()
    line = _one_line(_cli("train", "--resume", str(finished), "--set", "training.epochs=4"))
    assert f"{finished / STATE_FILE}: missing" in line and "--restart" in line
    assert main(["train", "--resume", str(finished), "--set", "training.epochs=4", "--restart"]) == 0
    assert _epochs(finished) == [0, 1, 2, 3, 4] and (finished / STATE_FILE).exists()
    verify_manifest(finished)
    # an interrupted run whose state is gone
    partial = _interrupted(cfg, tmp_path / "cut", after=2)
    (partial / STATE_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"train_state.safetensors: missing.*--restart"):
        api.train(None, tmp_path / "cut", resume=True, echo=None)
    api.train(None, tmp_path / "cut", resume=True, restart=True, echo=None)
    assert _epochs(tmp_path / "cut") == [0, 1, 2, 3]


def test_a_kill_between_the_state_and_its_best_weights_resumes_consistently(tmp_path, monkeypatch):
    import cellnet_core.run as run_mod

    ctx = RunContext(tmp_path / "r")
    ctx.stage_tensors("best.safetensors", {"w": torch.zeros(3)})
    ctx.save_state({"epoch": 1})
    ctx.stage_tensors("best.safetensors", {"w": torch.ones(3)})  # epoch 2 improved
    real = os.replace

    def killed_at_the_move(src, dst):
        if str(src).endswith(".pending"):
            raise KeyboardInterrupt("killed")
        real(src, dst)

    with monkeypatch.context() as m:
        m.setattr(run_mod.os, "replace", killed_at_the_move)
        with pytest.raises(KeyboardInterrupt):
            ctx.save_state({"epoch": 2})  # the state is written, the kill comes before the move
    again = RunContext(tmp_path / "r", resume=True)
    assert again.load_state()["epoch"] == 2
    assert again.load_tensors("best.safetensors")["w"].tolist() == [1.0, 1.0, 1.0]
    # and a kill after staging, before the state: the last state and its best weights
    again.stage_tensors("best.safetensors", {"w": torch.full((3,), 7.0)})
    third = RunContext(tmp_path / "r", resume=True)
    assert third.load_state()["epoch"] == 2
    assert third.load_tensors("best.safetensors")["w"].tolist() == [1.0, 1.0, 1.0]
    assert not list((tmp_path / "r").glob(".*.pending"))


def test_every_shipped_config_trains_on_a_step_budget_not_a_clock():
    """Two identical runs of a shipped config must agree: no wall-clock training budget."""
    for path in sorted(Path("configs").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        for section in ("decoder", "training"):
            part = data.get(section) or {}
            for key in ("max_seconds", "time_budget"):
                assert not part.get(key), f"{path}: {section}.{key} makes training depend on the clock"
            gen = part.get("generator") or {}
            assert not gen.get("max_seconds"), f"{path}: {section}.generator.max_seconds"


# -- part 5: manifest and cache integrity ---------------------------------------------------------------
def _manifest(run: Path) -> dict:
    return json.loads((run / MANIFEST).read_text())


def _rewrite(run: Path, files: dict) -> None:
    m = _manifest(run)
    m["files"] = files
    (run / MANIFEST).write_text(json.dumps(m))


def test_a_manifest_that_lists_nothing_verifies_nothing_and_is_refused(finished):
    _rewrite(finished, {})
    line = _one_line(_cli("ask", str(finished), "hello"))
    assert "manifest.json: lists no files" in line
    files = _manifest(finished)
    with pytest.raises(CheckpointError, match="lists no files"):
        verify_manifest(finished)
    del files


def test_a_manifest_must_list_every_required_file(finished):
    m = _manifest(finished)["files"]
    for required in ("config.yaml", "weights.safetensors"):
        _rewrite(finished, {k: v for k, v in m.items() if k != required})
        with pytest.raises(CheckpointError, match=f"{required}: not listed in"):
            verify_manifest(finished)
    _rewrite(finished, {k: v for k, v in m.items() if k != "decoder/bank.safetensors"})
    with pytest.raises(CheckpointError, match="decoder/bank.safetensors: not listed in"):
        verify_manifest(finished)


@pytest.mark.parametrize("entry,needle", [
    ("/etc/hostname", "is an absolute path"),
    ("../outside.txt", "leaves the run directory"),
    ("decoder/../../outside.txt", "leaves the run directory"),
    ("link-out", "a link out of the run directory"),
    ("zero", "a link out of the run directory"),
    ("fifo", "not a regular file"),
])
def test_manifest_entries_stay_inside_the_run_and_are_regular_files(finished, tmp_path, entry, needle):
    (tmp_path / "outside.txt").write_text("not the run's")
    (finished / "link-out").symlink_to(tmp_path / "outside.txt")
    (finished / "zero").symlink_to("/dev/zero")  # hashing it would never end
    os.mkfifo(finished / "fifo")  # reading it would block
    m = _manifest(finished)["files"]
    _rewrite(finished, {**m, entry: {"sha256": "0" * 64, "bytes": 1}})
    with pytest.raises(CheckpointError, match=needle):
        verify_manifest(finished)
    with pytest.raises(CheckpointError):
        write_manifest(finished, [finished / entry if not entry.startswith("/") else entry])


def test_saving_never_follows_a_symlinked_decoder_out_of_the_run(finished, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep.txt").write_text("someone's files")
    pipe = api.load_run(finished, warn=False)
    target = tmp_path / "copy"
    target.mkdir()
    (target / "decoder").symlink_to(outside, target_is_directory=True)
    with pytest.raises(CheckpointError, match="decoder: a symbolic link"):
        pipe.save(target)
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"] and not (target / "weights.safetensors").exists()
    # a run whose decoder/ was replaced by a link: resuming it is refused before anything is written
    import shutil

    shutil.rmtree(finished / "decoder")
    (finished / "decoder").symlink_to(outside, target_is_directory=True)
    line = _one_line(_cli("train", "--resume", str(finished), "--set", "training.epochs=4"))
    assert f"{finished / 'decoder'}: a symbolic link" in line
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"] and not partial_dir(finished).exists()


class CountingFake:
    """The hashing encoder, counting the texts it encodes."""

    def __init__(self):
        from cellnet_core.builtin.components import HashingEncoder

        self.enc = HashingEncoder(dim=32)
        self.dim, self.fingerprint, self.texts_seen = 32, self.enc.fingerprint, 0

    def encode(self, texts):
        self.texts_seen += len(texts)
        return self.enc.encode(texts)


class _Hashing:
    """A tiny teacher with token states (for the token cache)."""

    dim, fingerprint, token_fingerprint = 4, "fake-tokens", "fake-tokens:t"

    def __init__(self):
        self.calls = 0

    def encode(self, texts):
        return torch.stack([torch.full((4,), float(len(t))) for t in texts])

    def encode_tokens(self, texts):
        self.calls += 1
        return [(torch.arange(len(t.split())), torch.ones(len(t.split()), 4) * len(t)) for t in texts]


def test_cache_clear_removes_only_what_the_cache_wrote(tmp_path):
    from cellnet_core.cache import MARKER, CachedEncoder, cache_clear, cache_info
    from cellnet_core.token_cache import TokenCache

    root = tmp_path / "cache"
    foreign = root / "photos"
    foreign.mkdir(parents=True)
    (foreign / "fingerprint.txt").write_text("not a cache\n")  # another program's folder
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8")
    enc = CachedEncoder(CountingFake(), root)
    enc.encode(["a", "b"])
    own = Path(enc.cache.dir)
    (own / "notes.txt").write_text("put here by hand")
    tok = TokenCache(CachedEncoder(_Hashing(), root), root)
    tok.get(["one two", "three"])
    assert all(r["marked"] for r in cache_info(root) if r["dir"] != str(foreign))
    assert (own / MARKER).exists()
    r = _cli("cache", "clear", "--dir", str(root))
    assert r.returncode == 0 and "removed 2 cache file(s)" in r.stdout, r.stdout + r.stderr
    assert sorted(p.name for p in foreign.iterdir()) == ["fingerprint.txt", "holiday.jpg"]
    assert sorted(p.name for p in own.iterdir()) == ["notes.txt"]
    assert not (root / "tokens").exists()


def test_a_damaged_cache_entry_is_computed_again_with_a_warning(tmp_path):
    from cellnet_core.cache import CachedEncoder
    from cellnet_core.token_cache import TokenCache

    first = CachedEncoder(CountingFake(), tmp_path)
    want = first.encode(["x", "y"])
    shard = next(Path(first.cache.dir).glob("*.safetensors"))
    _flip(shard)  # still a valid safetensors file: only the checksum can tell
    fresh = CachedEncoder(CountingFake(), tmp_path)
    with pytest.warns(UserWarning, match=r"embedding cache: .* is damaged \(.*checksum"):
        got = fresh.encode(["x", "y"])
    assert fresh.inner.texts_seen == 2 and not shard.exists()
    torch.testing.assert_close(got, want)

    tok = TokenCache(CachedEncoder(_Hashing(), tmp_path), tmp_path)
    rows = tok.get(["one two"])
    shard = next(Path(tok.dir).glob("*.safetensors"))
    _flip(shard)
    again = TokenCache(CachedEncoder(_Hashing(), tmp_path), tmp_path)
    with pytest.warns(UserWarning, match=r"token cache: .* is damaged"):
        back = again.get(["one two"])
    assert again.calls == 1
    torch.testing.assert_close(back[0][1], rows[0][1])


def test_ask_does_not_echo_terminal_escapes(finished):
    r = _cli("ask", str(finished), "\x1b[2J\x1b]0;owned\x07hello\rthere")
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout and "\r" not in r.stdout
    assert "Q: \\x1b[2J\\x1b]0;owned\\x07hello\\rthere" in r.stdout
    r = _cli("ask", str(finished), "\x1b[31mhi", "--json")
    assert r.returncode == 0 and "\x1b" not in r.stdout and json.loads(r.stdout)[0]["question"] == "\x1b[31mhi"
