"""The ensemble encoder: concat and projected mean, determinism, save/load."""

from __future__ import annotations

import pytest
import torch

from cellnet_core.errors import CheckpointError, ConfigError

TEXTS = ["How old are you?", "What is your age?", "I like green tea.", "The train leaves at nine."]
# the core's hashing encoder is a named fake teacher here: cheap, deterministic, different geometry
FAKE = {"name": "hashing", "dim": 64}


def cos(e):
    e = torch.nn.functional.normalize(e, dim=-1)
    return e @ e.T


def test_concat_is_weighted_mean_of_cosines(registry):
    ens = registry.build("encoder", {"name": "ensemble", "encoders": [{"name": "minilm"}, FAKE], "weights": [3, 1]})
    assert ens.dim == 384 + 64
    out = ens.encode(TEXTS)
    a = registry.build("encoder", {"name": "minilm"}).encode(TEXTS)
    b = registry.build("encoder", FAKE).encode(TEXTS)
    torch.testing.assert_close(cos(out), 0.75 * cos(a) + 0.25 * cos(b), atol=1e-5, rtol=1e-4)


def test_mean_projects_to_common_size_deterministically(registry):
    cfg = {"name": "ensemble", "encoders": [{"name": "minilm"}, FAKE], "combine": "mean"}
    a, b = registry.build("encoder", cfg), registry.build("encoder", cfg)
    assert a.dim == 384 and a.fingerprint == b.fingerprint
    out = a.encode(TEXTS)
    torch.testing.assert_close(out, b.encode(TEXTS))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(4))
    # an orthonormal-row projection keeps each teacher's own geometry: the combined cosine is close to the mean
    ref = 0.5 * cos(registry.build("encoder", {"name": "minilm"}).encode(TEXTS)) + 0.5 * cos(
        registry.build("encoder", FAKE).encode(TEXTS))
    assert (cos(out) - ref).abs().max() < 0.15
    other = registry.build("encoder", {**cfg, "seed": 1})
    assert other.fingerprint != a.fingerprint
    assert registry.build("encoder", {**cfg, "dim": 128}).encode(TEXTS).shape == (4, 128)


def test_orthogonal_projection_shapes():
    from cellnet_teachers.ensemble import orthogonal_projection

    wide = orthogonal_projection(64, 384, 0)
    torch.testing.assert_close(wide @ wide.T, torch.eye(64), atol=1e-5, rtol=0)
    narrow = orthogonal_projection(384, 64, 0)
    torch.testing.assert_close(narrow.T @ narrow, torch.eye(64), atol=1e-5, rtol=0)
    torch.testing.assert_close(orthogonal_projection(64, 384, 0), wide)


def test_save_load_projections_and_teacher_preprocessing(registry, tmp_path):
    cfg = {"name": "ensemble", "combine": "mean", "preprocess": "center",
           "encoders": [{"name": "minilm", "preprocess": "center"}, FAKE]}
    ens = registry.build("encoder", cfg)
    ens.fit(TEXTS + ["hello", "goodbye", "see you soon"])
    out = ens.encode(TEXTS)
    files = ens.save(tmp_path / "encoder")
    names = sorted(f.relative_to(tmp_path / "encoder").as_posix() for f in files)
    assert names == ["ensemble.safetensors", "preprocessing.safetensors", "teacher0/preprocessing.safetensors"]
    again = registry.build("encoder", cfg)
    again.load(tmp_path / "encoder")
    assert again.fingerprint == ens.fingerprint
    torch.testing.assert_close(again.encode(TEXTS), out)
    (tmp_path / "encoder" / "ensemble.safetensors").write_bytes(b"broken")
    with pytest.raises(CheckpointError, match="ensemble.safetensors: damaged"):
        registry.build("encoder", cfg).load(tmp_path / "encoder")


def test_config_errors(registry):
    with pytest.raises(ConfigError, match=r"encoders\[1\]: unknown 'minlm'.*did you mean 'minilm'"):
        registry.config_for("encoder", {"name": "ensemble", "encoders": [{"name": "minilm"}, {"name": "minlm"}]})
    with pytest.raises(ConfigError, match="weights has 1 values for 2 encoders"):
        registry.config_for("encoder", {"name": "ensemble", "encoders": [{"name": "minilm"}, FAKE], "weights": [1]})
    with pytest.raises(ConfigError, match=r"encoders\[0\].*pooling"):
        registry.config_for("encoder", {"name": "ensemble", "encoders": [{"name": "minilm", "pooling": "avg"}]})
    with pytest.raises(ConfigError, match="cannot contain an ensemble"):
        registry.config_for("encoder", {"name": "ensemble", "encoders": [{"name": "ensemble", "encoders": [FAKE]}]})
