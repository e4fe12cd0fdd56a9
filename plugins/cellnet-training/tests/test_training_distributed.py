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
