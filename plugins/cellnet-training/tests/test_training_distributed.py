"""Two gloo processes on CPU take the same steps as one process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    from cellnet_core.checkpoint import save_tensors
    from cellnet_core.config import validate_run_config
    from cellnet_core.pipeline import Pipeline
    from cellnet_core.run import RunContext
    from cellnet_training.testing import fake_registry, fake_config

    torch.set_num_threads(1)
    out = sys.argv[1]
    pm, reg = fake_registry()
    cfg = validate_run_config(reg, fake_config({"name": "dialogue", "epochs": 2, "batch_size": 30, "lr": 3e-3,
                                                "hard_negatives": 2, "early_stopping": 0, "plots": False}))
    pipe = Pipeline.build(cfg, reg, cache_dir=out + "/cache")
    data = reg.build("dataset", cfg.data)
    run = RunContext(out + "/run", seed=cfg.seed)
    result = reg.build("strategy", cfg.training).fit(pipe, data, run)
    if run.rank == 0:
        save_tensors(out + "/weights.safetensors", pipe.state_tensors())
        json.dump({"world": run.world_size, "metrics": result.metrics}, open(out + "/result.json", "w"))
''')


@pytest.mark.slow
def test_two_gloo_processes_match_one(tmp_path, monkeypatch):
    from cellnet_core.checkpoint import load_tensors
    from cellnet_training.distributed import launch

    monkeypatch.setenv("CELLNET_DIST_BACKEND", "gloo")
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, str(script), str(one)], check=True, timeout=300)
    assert launch(2, [str(two)], entry=[str(script)]) == 0
    r1 = json.loads((one / "result.json").read_text())
    r2 = json.loads((two / "result.json").read_text())
    assert r1["world"] == 1 and r2["world"] == 2
    for k in ("val_mrr", "val_recall@1", "val_cosine", "val_loss"):
        assert r2["metrics"][k] == pytest.approx(r1["metrics"][k], abs=2e-4), k
    w1, w2 = load_tensors(one / "weights.safetensors"), load_tensors(two / "weights.safetensors")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-3, atol=1e-4)
    assert not any(torch.equal(w1[k], torch.zeros_like(w1[k])) for k in w1 if k.endswith("mix.weight"))


def test_shard_and_strip_nproc():
    from cellnet_training.distributed import shard, strip_nproc

    idx = torch.arange(10, 17)  # 7 rows over 3 processes: 3 + 3 + 1 (+2 padding)
    parts = [shard(idx, r, 3) for r in range(3)]
    assert [int(v.sum()) for _, v in parts] == [3, 3, 1]
    assert torch.equal(torch.cat([p for p, _ in parts])[:7], idx)
    assert strip_nproc(["train", "c.yaml", "--nproc", "2", "--set", "a=1", "--nproc=3"]) == \
        ["train", "c.yaml", "--set", "a=1"]


@pytest.mark.parametrize("gpus, local_rank, device, want", [
    (8, 3, "cuda", "nccl"),   # rank 11 of 2 machines × 8 GPUs: its own GPU is local GPU 3
    (8, 7, None, "nccl"),
    (8, 8, "cuda", "gloo"),   # a 9th process on an 8-GPU machine has no GPU of its own
    (2, 0, "cpu", "gloo"),    # device: cpu keeps nccl out even where GPUs exist
    (0, 0, "cuda", "gloo"),   # no CUDA at all
])
def test_backend_follows_the_local_ranks_gpu(monkeypatch, gpus, local_rank, device, want):
    from cellnet_training import distributed as D

    monkeypatch.delenv("CELLNET_DIST_BACKEND", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setenv("WORLD_SIZE", "16")  # more processes in all than GPUs on any one machine
    monkeypatch.setenv("RANK", str(8 + local_rank))
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    assert D.choose_backend(device) == want
    monkeypatch.setenv("CELLNET_DIST_BACKEND", "gloo")
    assert D.choose_backend(device) == "gloo"


def test_setup_joins_with_the_chosen_backend(monkeypatch):
    """2 machines × 8 GPUs: process 11 (local rank 3) joins with nccl on its own GPU."""
    import torch.distributed as dist

    from cellnet_training import distributed as D

    calls = {}
    monkeypatch.delenv("CELLNET_DIST_BACKEND", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.setdefault("device", i))
    monkeypatch.setattr(dist, "is_initialized", lambda: "backend" in calls)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: calls.setdefault("backend", backend))
    monkeypatch.setattr(dist, "get_rank", lambda: 11)
    monkeypatch.setattr(dist, "get_world_size", lambda: 16)
    for k, v in {"WORLD_SIZE": "16", "RANK": "11", "LOCAL_RANK": "3"}.items():
        monkeypatch.setenv(k, v)

    class Run:
        rank, world_size = 0, 1

    run = Run()
    D.setup(run, "cuda")
    assert calls == {"device": 3, "backend": "nccl"} and (run.rank, run.world_size) == (11, 16)


TORCHRUN_CONFIG = """seed: 0
device: cpu
data: {name: pairs, path: wordmap.jsonl, val_fraction: 0.15, test_fraction: 0.15}
encoder: {name: hashing, dim: 64}
reshaper: {name: surface, shape: [4, 4, 2], channels: 4}
core: {name: lattice, cell: {name: nca, hidden: 8}, steps: 2}
decoder: {name: nearest}
training: {name: dialogue, epochs: 3, batch_size: 16, lr: 0.01, plots: false}
"""


def _wordmap(path) -> None:
    """200 pairs: three words of vocabulary A → the same words mapped into vocabulary B (learnable)."""
    import random

    rng = random.Random(0)
    b = [f"b{i}" for i in range(24)]
    rng.shuffle(b)
    seen: set = set()
    rows = []
    while len(rows) < 200:
        w = tuple(rng.sample(range(24), 3))
        if w not in seen:
            seen.add(w)
            rows.append({"question": " ".join(f"a{i}" for i in w), "answer": " ".join(b[i] for i in w)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.slow
def test_plain_torchrun_matches_cellnet_train_nproc(tmp_path):
    """``torchrun --nproc-per-node 2 -m cellnet_training.worker train …`` trains what ``--nproc 2`` does."""
    import os

    from cellnet_core import api
    from cellnet_core.checkpoint import load_tensors

    (tmp_path / "tiny.yaml").write_text(TORCHRUN_CONFIG)
    _wordmap(tmp_path / "wordmap.jsonl")
    env = {**os.environ, "CELLNET_DIST_BACKEND": "gloo", "CELLNET_CACHE_DIR": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1", "CELLNET_QUIET": "1"}
    a = subprocess.run([sys.executable, "-m", "cellnet_core.cli", "train", "tiny.yaml", "--run-dir", "nproc",
                        "--nproc", "2"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert a.returncode == 0, a.stderr
    b = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "cellnet_training.worker", "train", "tiny.yaml", "--run-dir", "torchrun"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert b.returncode == 0, b.stderr
    assert not list(tmp_path.glob(".*.partial"))  # both published their run
    wa, wb = load_tensors(tmp_path / "nproc" / "weights.safetensors"), load_tensors(tmp_path / "torchrun" / "weights.safetensors")
    assert set(wa) == set(wb)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-6)
    ma = json.loads((tmp_path / "nproc" / "manifest.json").read_text())["train"]["metrics"]
    mb = json.loads((tmp_path / "torchrun" / "manifest.json").read_text())["train"]["metrics"]
    assert mb["val_mrr"] == pytest.approx(ma["val_mrr"], abs=1e-6)
    train = json.loads((tmp_path / "torchrun" / "manifest.json").read_text())["train"]
    assert train["best_epoch"] > 0 and not train["untrained"]  # trained weights, not the start, compared
    api.check_run_dir(tmp_path / "torchrun")  # every file matches its manifest
