"""The ONNX Runtime backend of minilm / hf: fidelity to torch on real sentences, int8, cache keys,
the stored export (reuse, damage, staleness), threads, config errors, onnxruntime missing."""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
import torch

from cellnet_core.errors import ConfigError, MissingDependencyError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def onnx_home(tmp_path_factory):
    """One CELLNET_HOME for this module: minilm exported once (fp32, then int8 from it)."""
    return tmp_path_factory.mktemp("cellnet-home-onnx")


@pytest.fixture
def use_onnx_home(onnx_home, monkeypatch):
    monkeypatch.setenv("CELLNET_HOME", str(onnx_home))
    return onnx_home


@pytest.fixture(scope="module")
def encoders(registry, onnx_home, sentences):
    """torch, onnx fp32 and onnx int8 minilm, and their embeddings of the 50 test sentences."""
    old = os.environ.get("CELLNET_HOME")
    os.environ["CELLNET_HOME"] = str(onnx_home)
    try:
        encs = {"torch": registry.build("encoder", {"name": "minilm", "backend": "torch"}),
                "fp32": registry.build("encoder", {"name": "minilm", "backend": "onnx"}),
                "int8": registry.build("encoder", {"name": "minilm", "backend": "onnx", "quantize": "int8"})}
    finally:
        if old is None:
            os.environ.pop("CELLNET_HOME", None)
        else:
            os.environ["CELLNET_HOME"] = old
    return encs, {k: e.encode(sentences) for k, e in encs.items()}


def test_fp32_matches_torch_per_sentence(encoders, sentences):
    _, emb = encoders
    assert emb["fp32"].shape == (50, 384) and emb["fp32"].dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(emb["fp32"], emb["torch"], dim=-1)
    assert cos.min() >= 0.99999, f"worst sentence: {sentences[int(cos.argmin())]!r} cos={cos.min():.7f}"
    assert torch.allclose(emb["fp32"].norm(dim=-1), torch.ones(50), atol=1e-5)


def test_int8_mean_cosine(encoders, sentences):
    _, emb = encoders
    cos = torch.nn.functional.cosine_similarity(emb["int8"], emb["torch"], dim=-1)
    assert cos.mean() >= 0.99, f"mean cos {cos.mean():.5f}"
    assert cos.min() >= 0.95, f"worst sentence: {sentences[int(cos.argmin())]!r} cos={cos.min():.5f}"
    assert not torch.allclose(emb["int8"], emb["torch"], atol=1e-4)  # really quantised


def test_batching_and_order_do_not_change_onnx_output(encoders, registry, use_onnx_home, sentences):
    encs, emb = encoders
    small = registry.build("encoder", {"name": "minilm", "backend": "onnx", "batch_size": 3})
    torch.testing.assert_close(small.encode(list(reversed(sentences[:20]))).flip(0), emb["fp32"][:20],
                               atol=2e-5, rtol=1e-4)
    assert encs["fp32"].encode([]).shape == (0, 384)


def test_token_states_come_from_the_onnx_graph(encoders, sentences):
    encs, emb = encoders
    texts = sentences[:6]
    ref = encs["torch"].encode_tokens(texts)
    calls = encs["fp32"].forward_calls
    rows, pooled = encs["fp32"].encode_tokens(texts, return_embeddings=True)
    assert encs["fp32"].forward_calls > calls and encs["fp32"].model is None  # no torch model behind it
    for (ids_t, st_t), (ids_o, st_o) in zip(ref, rows):
        assert ids_t.tolist() == ids_o.tolist() and st_o.dtype == torch.float16
        assert torch.nn.functional.cosine_similarity(st_t.float(), st_o.float(), dim=-1).min() >= 0.999
    torch.testing.assert_close(pooled, emb["fp32"][:6], atol=2e-5, rtol=1e-4)
    assert encs["fp32"].token_fingerprint != encs["torch"].token_fingerprint


def test_fingerprints_keep_backends_apart(encoders, tmp_path, sentences):
    from cellnet_core.cache import CachedEncoder

    encs, _ = encoders
    fps = {k: e.fingerprint for k, e in encs.items()}
    assert len(set(fps.values())) == 3
    assert "backend=onnx-fp32" in fps["fp32"] and "backend=onnx-int8" in fps["int8"]
    assert "backend" not in fps["torch"]  # torch keeps the key caches were made with
    texts = sentences[:8]
    CachedEncoder(encs["torch"], tmp_path).encode(texts)
    for k in ("fp32", "int8"):
        cached = CachedEncoder(encs[k], tmp_path)
        out = cached.encode(texts)  # a cache filled by torch never serves the ONNX backends
        assert cached.calls == 1
        torch.testing.assert_close(out, encs[k].encode(texts))


def test_export_is_reused_not_rebuilt(encoders, registry, use_onnx_home, capsys):
    encs, _ = encoders
    path = encs["fp32"].runner.path
    assert path.parent.parent == use_onnx_home / "onnx" and path.parent.name.startswith("minilm-none-")
    record = json.loads((path.parent / "export.json").read_text())
    assert record["settings"]["weights"] in encs["fp32"].fingerprint and record["fused"] is True
    mtime = path.stat().st_mtime_ns
    again = registry.build("encoder", {"name": "minilm", "backend": "onnx", "batch_size": 8})
    assert again.runner.path == path and path.stat().st_mtime_ns == mtime
    assert "exporting" not in capsys.readouterr().err
    int8 = encs["int8"].runner.path
    assert int8 != path and json.loads((int8.parent / "export.json").read_text())["from"] == str(path)


def test_stale_record_is_detected(encoders, tmp_path):
    from cellnet_teachers.onnx_backend import check_export

    encs, _ = encoders
    folder = tmp_path / "copy"
    shutil.copytree(encs["int8"].runner.path.parent, folder)
    record = json.loads((folder / "export.json").read_text())
    settings = dict(record["settings"])
    assert check_export(folder, settings) is None
    assert "other settings" in check_export(folder, {**settings, "onnxruntime": "0.0.1"})
    assert "other settings" in check_export(folder, {**settings, "weights": "0" * 16})
    (folder / "export.json").write_text("{not json")
    assert "unreadable" in check_export(folder, settings)


def test_damaged_export_is_rebuilt_with_a_warning(encoders, registry, sentences, tmp_path, monkeypatch):
    encs, emb = encoders
    home = tmp_path / "home"
    src = encs["fp32"].runner.path.parent
    shutil.copytree(src, home / "onnx" / src.name)
    monkeypatch.setenv("CELLNET_HOME", str(home))
    model = home / "onnx" / src.name / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\x00" * 64  # flipped bytes inside a weight
    model.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=r"ONNX export .* is damaged or stale \(model.onnx does not match its "
                                         r"recorded sha256\); rebuilding it"):
        enc = registry.build("encoder", {"name": "minilm", "backend": "onnx"})
    assert enc.runner.path == model
    torch.testing.assert_close(enc.encode(sentences[:10]), emb["fp32"][:10], atol=2e-5, rtol=1e-4)
    from cellnet_teachers.onnx_backend import check_export

    settings = json.loads((model.parent / "export.json").read_text())["settings"]
    assert check_export(model.parent, settings) is None
    model.write_bytes(b"")  # truncated to nothing
    assert "does not match its recorded sha256" in check_export(model.parent, settings)
    model.unlink()
    assert "model.onnx is missing" in check_export(model.parent, settings)


def test_threads_follow_torch_unless_configured(encoders, registry, use_onnx_home):
    encs, _ = encoders
    assert encs["fp32"].runner.threads == torch.get_num_threads()
    one = registry.build("encoder", {"name": "minilm", "backend": "onnx", "threads": 1})
    assert one.runner.threads == 1
    assert one.runner.session.get_session_options().intra_op_num_threads == 1
    assert one.fingerprint == encs["fp32"].fingerprint  # threads do not change the numbers' key


def test_defaults(registry):
    minilm = registry.config_for("encoder", {"name": "minilm"}, where="encoder")
    hf = registry.config_for("encoder", {"name": "hf", "model": "/m"}, where="encoder")
    assert (minilm.backend, minilm.quantize, minilm.threads) == ("onnx", "none", None)
    assert (hf.backend, hf.quantize) == ("torch", "none")


@pytest.mark.parametrize("cfg, message", [
    ({"quantize": "int8", "backend": "torch"}, "quantize 'int8' needs backend 'onnx'"),
    ({"threads": 2, "backend": "torch"}, "threads is an ONNX Runtime setting"),
    ({"device": "cuda"}, "backend 'onnx' runs on the CPU; device 'cuda' needs backend 'torch'"),
    ({"backend": "onnx", "dtype": "float16"}, "backend 'onnx' runs float32 weights"),
    ({"backend": "onnx", "device": "cuda"}, "backend 'onnx' runs on the CPU"),
    ({"backend": "tensorrt"}, "backend"),
])
def test_config_errors(registry, cfg, message):
    with pytest.raises(ConfigError, match=message):
        registry.config_for("encoder", {"name": "minilm", **cfg}, where="encoder")


def test_onnxruntime_missing_is_one_line(registry, monkeypatch, use_onnx_home):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime → ImportError
    with pytest.raises(MissingDependencyError, match=r"^encoder backend 'onnx' needs onnxruntime, which is not "
                                                     r"installed; install it with: pip install onnxruntime$"):
        registry.build("encoder", {"name": "minilm", "backend": "onnx"})


def test_onnxruntime_missing_exits_2(tmp_path, monkeypatch, capsys, use_onnx_home):
    """`cellnet train` stops with that one line and exit code 2, no traceback."""
    from cellnet_core.cli import main

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {name: chatterbot}\nencoder: {name: minilm, backend: onnx}\n"
                   "training: {name: dialogue, epochs: 1}\n")
    assert main(["train", str(cfg), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: encoder backend 'onnx' needs onnxruntime, which is not installed; install it with: pip install onnxruntime"
    assert "Traceback" not in "\n".join(err)


@pytest.mark.slow
def test_hf_layer_choice_matches_torch(registry, minilm_dir, use_onnx_home):
    texts = ["How old are you?", "What is your age?", "I like green tea very much.", ""]
    a = registry.build("encoder", {"name": "hf", "model": str(minilm_dir), "layer": 3, "pooling": "cls"})
    b = registry.build("encoder", {"name": "hf", "model": str(minilm_dir), "layer": 3, "pooling": "cls",
                                   "backend": "onnx"})
    cos = torch.nn.functional.cosine_similarity(a.encode(texts), b.encode(texts), dim=-1)
    assert cos.min() >= 0.99999
    assert b.runner.path.parent.name.startswith("model-none-")
