"""The core's embedding cache (cellnet_core.cache) around a real teacher (minilm)."""

from __future__ import annotations

import time

import pytest
import torch

from cellnet_core.cache import CachedEncoder, cache_clear, cache_info

TEXTS = [f"sentence number {i} about {topic}" for i, topic in
         enumerate(["tea", "music", "the weather", "trains", "cats", "dogs", "homework", "jazz"] * 15)]


@pytest.fixture(scope="module")
def raw(registry):
    return registry.build("encoder", {"name": "minilm"})


def test_second_encode_makes_no_model_call_and_is_50x_faster(raw, tmp_path):
    enc = CachedEncoder(raw, tmp_path / "cache")
    calls0 = raw.forward_calls
    t0 = time.perf_counter()
    cold = enc.encode(TEXTS)
    t_cold = time.perf_counter() - t0
    assert raw.forward_calls > calls0 and enc.calls == 1
    calls1 = raw.forward_calls
    # a fresh wrapper (as a new process would) reads the shard from disk
    again = CachedEncoder(raw, tmp_path / "cache")
    t0 = time.perf_counter()
    warm = again.encode(TEXTS)
    t_warm = time.perf_counter() - t0
    assert raw.forward_calls == calls1 and again.calls == 0
    torch.testing.assert_close(warm, cold)
    assert t_cold / t_warm >= 50, f"cold {t_cold:.3f}s vs cached {t_warm:.4f}s: only {t_cold / t_warm:.0f}x"
    info = cache_info(tmp_path / "cache")
    assert len(info) == 1 and info[0]["texts"] == len(TEXTS) and info[0]["fingerprint"] == raw.fingerprint


def test_only_missing_texts_are_encoded(raw, tmp_path):
    enc = CachedEncoder(raw, tmp_path / "cache")
    enc.encode(TEXTS[:10])
    seen = []
    orig = raw.base_encode

    def spy(texts):
        seen.append(list(texts))
        return orig(texts)

    raw.base_encode = spy
    try:
        out = enc.encode(TEXTS[5:15] + TEXTS[5:7])
    finally:
        del raw.base_encode
    assert seen == [TEXTS[10:15]]
    torch.testing.assert_close(out[:10], raw.encode(TEXTS[5:15]), atol=2e-5, rtol=1e-4)


def test_damaged_cache_file_is_detected_warned_and_recomputed(raw, tmp_path):
    enc = CachedEncoder(raw, tmp_path / "cache")
    good = enc.encode(TEXTS[:20])
    shards = list((tmp_path / "cache").rglob("*.safetensors"))
    assert len(shards) == 1
    data = shards[0].read_bytes()
    shards[0].write_bytes(data[: len(data) // 2])  # truncated, as by a crash or a full disk
    fresh = CachedEncoder(raw, tmp_path / "cache")
    calls = raw.forward_calls
    with pytest.warns(UserWarning, match=r"embedding cache: .*\.safetensors is damaged .*discarded, its texts will be computed again"):
        out = fresh.encode(TEXTS[:20])
    assert raw.forward_calls > calls and fresh.calls == 1
    torch.testing.assert_close(out, good, atol=2e-5, rtol=1e-4)
    # the damaged shard is gone and the recomputed one is readable
    again = CachedEncoder(raw, tmp_path / "cache")
    calls = raw.forward_calls
    torch.testing.assert_close(again.encode(TEXTS[:20]), out)
    assert raw.forward_calls == calls


def test_fitted_preprocessing_gets_its_own_cache_entry(registry, tmp_path):
    enc = registry.build("encoder", {"name": "minilm", "preprocess": "center"})
    cached = CachedEncoder(enc, tmp_path / "cache")
    enc.fit(TEXTS[:50])
    first = cached.encode(TEXTS[:5])
    enc.fit(TEXTS[100:150])  # a different fit → a different key, not stale rows
    second = cached.encode(TEXTS[:5])
    assert not torch.allclose(first, second)
    fps = {row["fingerprint"] for row in cache_info(tmp_path / "cache")}
    assert len([f for f in fps if "pre=center" in f]) == 2
    assert cache_clear(tmp_path / "cache") >= 2 and cache_info(tmp_path / "cache") == []
