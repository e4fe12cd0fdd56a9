"""Preprocessing fitted on the training split: maths, fingerprints, save/load, the pipeline."""

from __future__ import annotations

import pytest
import torch

from cellnet_core.errors import CheckpointError, DataError
from cellnet_teachers.preprocessing import NotFittedError, Preprocessor

TRAIN = ["hello there", "how are you today", "i am fine thank you", "what is your name", "my name is cell",
         "the weather is nice", "i like green tea", "goodbye and see you soon", "where do you live",
         "i live by the sea", "do you like music", "i love jazz"]


def _data(n=200, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g)
    return torch.randn(n, d, generator=g) @ mix + 3.0


def test_center_and_l2():
    x = _data()
    c = Preprocessor("center").fit(x)
    assert c.apply(x).mean(0).abs().max() < 1e-4
    l2 = Preprocessor("l2").fit(x)
    torch.testing.assert_close(l2.apply(x).norm(dim=-1), torch.ones(len(x)))


def test_whiten_gives_identity_covariance():
    x = _data()
    w = Preprocessor("whiten").fit(x)
    y = w.apply(x)
    cov = y.T @ y / (len(y) - 1)
    torch.testing.assert_close(cov, torch.eye(16), atol=1e-3, rtol=1e-3)
    w8 = Preprocessor("whiten", 8).fit(x)
    assert w8.apply(x).shape == (200, 8)


def test_pca_keeps_top_variance_and_is_deterministic():
    x = _data()
    p = Preprocessor("pca", 4).fit(x)
    y = p.apply(x)
    assert y.shape == (200, 4)
    var = y.var(0)
    assert (var[:-1] >= var[1:] - 1e-4).all()
    total = (x - x.mean(0)).var(0).sum()
    assert var.sum() / total > 0.5
    q = Preprocessor("pca", 4).fit(x.clone())
    torch.testing.assert_close(p.apply(x), q.apply(x))
    assert p.digest() == q.digest()
    assert p.digest() != Preprocessor("pca", 4).fit(_data(seed=1)).digest()


def test_fit_errors():
    with pytest.raises(DataError, match="needs at least 8 training texts, got 5"):
        Preprocessor("pca", 8).fit(torch.randn(5, 16))
    with pytest.raises(DataError, match="at least 2 training texts"):
        Preprocessor("center").fit(torch.randn(1, 16))
    with pytest.raises(NotFittedError, match="encoder.fit"):
        Preprocessor("center").apply(torch.randn(2, 4))


@pytest.mark.parametrize("method,extra,dim", [("center", {}, 384), ("whiten", {"pca_dim": 8}, 8), ("pca", {"pca_dim": 6}, 6)])
def test_encoder_fit_save_load(registry, tmp_path, method, extra, dim):
    cfg = {"name": "minilm", "preprocess": method, **extra}
    enc = registry.build("encoder", cfg)
    assert enc.dim == dim
    unfitted_fp = enc.fingerprint
    with pytest.raises(NotFittedError):
        enc.encode(["hello"])
    assert enc.encode([]).shape == (0, dim)
    enc.fit(TRAIN)
    assert enc.fingerprint != unfitted_fp and "pre=" in enc.fingerprint
    out = enc.encode(["hello there", "something new"])
    assert out.shape == (2, dim)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))
    files = enc.save(tmp_path / "encoder")
    assert [f.name for f in files] == ["preprocessing.safetensors"]
    again = registry.build("encoder", cfg)
    again.load(tmp_path / "encoder")
    assert again.fingerprint == enc.fingerprint
    torch.testing.assert_close(again.encode(["hello there", "something new"]), out)
    # refitting on other texts changes the fingerprint
    other = registry.build("encoder", cfg).fit(TRAIN[::-1][:10] + ["a whole new sentence", "and another one"])
    assert other.fingerprint != enc.fingerprint


def test_fit_from_base_embeddings_equals_fit_from_texts(registry):
    a = registry.build("encoder", {"name": "minilm", "preprocess": "center"}).fit(TRAIN)
    base = registry.build("encoder", {"name": "minilm"}).encode(TRAIN)
    b = registry.build("encoder", {"name": "minilm", "preprocess": "center"}).fit_preprocessing(base)
    assert a.fingerprint == b.fingerprint


def test_load_wrong_method_or_damaged(registry, tmp_path):
    enc = registry.build("encoder", {"name": "minilm", "preprocess": "center"}).fit(TRAIN)
    enc.save(tmp_path / "enc")
    other = registry.build("encoder", {"name": "minilm", "preprocess": "l2"})
    with pytest.raises(CheckpointError, match="fitted for preprocess 'center', the config asks for 'l2'"):
        other.load(tmp_path / "enc")
    (tmp_path / "enc" / "preprocessing.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="preprocessing.safetensors: damaged"):
        registry.build("encoder", {"name": "minilm", "preprocess": "center"}).load(tmp_path / "enc")
    with pytest.raises(CheckpointError, match="missing"):
        registry.build("encoder", {"name": "minilm", "preprocess": "center"}).load(tmp_path / "nothing")


def test_pipeline_saves_and_restores_fitted_preprocessing(registry, tmp_path):
    """The run directory carries the fitted preprocessing; the cache key follows the fit."""
    from cellnet_core.config import validate_run_config
    from cellnet_core.pipeline import Pipeline

    cfg = validate_run_config(registry, {"data": {"name": "chatterbot"},
                                         "encoder": {"name": "minilm", "preprocess": "whiten", "pca_dim": 8},
                                         "reshaper": {"name": "flat", "channels": 1}})
    pipe = Pipeline.build(cfg, registry, cache_dir=tmp_path / "cache")
    assert hasattr(pipe.encoder, "fit")  # what the training strategies look for
    pipe.encoder.fit(TRAIN)
    emb = pipe.encode(["hello there", "do you like jazz"])
    assert emb.shape == (2, 8)
    pipe.decoder.fit(TRAIN, pipe.encode(TRAIN))
    pipe.save(tmp_path / "run")
    assert (tmp_path / "run" / "encoder" / "preprocessing.safetensors").exists()
    again = Pipeline.load(tmp_path / "run", registry, cache_dir=tmp_path / "cache")
    assert again.encoder.inner.fingerprint == pipe.encoder.inner.fingerprint
    torch.testing.assert_close(again.encode(["hello there", "do you like jazz"]), emb)
    assert again.answer(["hello there"])[0].text == "hello there"
