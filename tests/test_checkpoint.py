import json

import pytest
import torch

from cellnet_core.checkpoint import (load_tensors, load_tree, save_tensors, save_tree, verify_manifest,
                                     write_manifest)
from cellnet_core.errors import CheckpointError


def test_tensor_round_trip(tmp_path):
    t = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    save_tensors(tmp_path / "w.safetensors", t)
    back = load_tensors(tmp_path / "w.safetensors")
    torch.testing.assert_close(back["a"], t["a"])
    assert back["b"].tolist() == [0, 1, 2, 3, 4]


def test_tree_round_trip_optimizer_state(tmp_path):
    p = torch.nn.Parameter(torch.randn(4))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones(4)
    opt.step()
    state = {"optimizer": opt.state_dict(), "epoch": 3, "rng": torch.get_rng_state(), "best": None}
    save_tree(tmp_path / "s.safetensors", state)
    back = load_tree(tmp_path / "s.safetensors")
    assert back["epoch"] == 3 and back["best"] is None
    opt2 = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone())], lr=0.1)
    opt2.load_state_dict(back["optimizer"])
    torch.testing.assert_close(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_damage_detected_and_named(tmp_path):
    save_tensors(tmp_path / "weights.safetensors", {"a": torch.zeros(10)})
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    write_manifest(tmp_path, ["config.yaml", "weights.safetensors"])
    verify_manifest(tmp_path)
    data = bytearray((tmp_path / "weights.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (tmp_path / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"weights.safetensors: damaged \(its tensors do not match the checksum"):
        load_tensors(tmp_path / "weights.safetensors")  # the file's own checksum, without a manifest
    with pytest.raises(CheckpointError, match=r"weights.safetensors: damaged \(its sha256 does not match"):
        verify_manifest(tmp_path)
    (tmp_path / "weights.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"weights.safetensors: missing"):
        verify_manifest(tmp_path)


def test_manifest_damage(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"manifest.json: damaged"):
        verify_manifest(tmp_path)


def test_truncated_safetensors_is_named(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError, match=r"x.safetensors: damaged or not a safetensors file"):
        load_tensors(tmp_path / "x.safetensors")


def test_manifest_lists_plugin_versions(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    m = write_manifest(tmp_path, ["f.txt"])
    assert m["plugins"]["cellnet-core"]
    assert json.loads((tmp_path / "manifest.json").read_text())["files"]["f.txt"]["bytes"] == 1


def test_every_saved_file_carries_a_checksum_that_reading_verifies(tmp_path):
    from cellnet_core.checkpoint import CHECKSUM_KEY, read_tensors

    path = tmp_path / "w.safetensors"
    save_tensors(path, {"a": torch.arange(6, dtype=torch.float32), "b": torch.ones(2, dtype=torch.bfloat16)},
                 metadata={"epoch": "3"})
    tensors, meta = read_tensors(path)
    assert meta["epoch"] == "3" and len(meta[CHECKSUM_KEY]) == 64
    raw = bytearray(path.read_bytes())
    raw[raw.index(b'"3"') + 1] = ord("7")  # the metadata is covered too: epoch 3 -> 7
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="damaged \\(its tensors do not match the checksum"):
        load_tensors(path)


def test_a_file_without_checksum_loads_unless_one_is_required(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2)}, str(tmp_path / "old.safetensors"))
    assert load_tensors(tmp_path / "old.safetensors")["a"].tolist() == [0.0, 0.0]
    with pytest.raises(CheckpointError, match="has no checksum"):
        load_tensors(tmp_path / "old.safetensors", require_checksum=True)
    save_tree(tmp_path / "s.safetensors", {"epoch": 1})
    assert load_tree(tmp_path / "s.safetensors", require_checksum=True) == {"epoch": 1}


def test_links_inside_a_run_are_refused_before_writing(tmp_path):
    from cellnet_core.checkpoint import refuse_links

    run = tmp_path / "run"
    (run / "decoder").mkdir(parents=True)
    refuse_links(run)
    (run / "decoder" / "index.faiss").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CheckpointError, match="index.faiss: a symbolic link"):
        refuse_links(run)
