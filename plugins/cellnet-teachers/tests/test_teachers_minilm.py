"""minilm: parity with sentence-transformers, semantics, batching, truncation, empty strings."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def minilm(registry):
    return registry.build("encoder", {"name": "minilm"})


def test_matches_sentence_transformers(minilm, minilm_dir, sentences):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(minilm_dir), device="cpu")
    ref = torch.as_tensor(model.encode(sentences, batch_size=16, convert_to_numpy=True))
    ours = minilm.encode(sentences)
    assert ours.shape == (50, 384) and ours.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(ours, ref, dim=-1)
    assert cos.min() >= 0.9999, f"worst sentence: {sentences[int(cos.argmin())]!r} cos={cos.min():.6f}"


def test_paraphrase_close_unrelated_far(minilm):
    e = minilm.encode(["How old are you?", "What is your age?", "The stock market fell sharply this afternoon."])
    assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert float(e[0] @ e[1]) > 0.7
    assert float(e[0] @ e[2]) < 0.2


def test_batch_order_and_size_do_not_change_output(registry, minilm, sentences):
    texts = sentences[:20]
    full = minilm.encode(texts)
    small = registry.build("encoder", {"name": "minilm", "batch_size": 3}).encode(list(reversed(texts)))
    torch.testing.assert_close(small.flip(0), full, atol=2e-5, rtol=1e-4)
    one = torch.cat([minilm.encode([t]) for t in texts[:5]])
    torch.testing.assert_close(one, full[:5], atol=2e-5, rtol=1e-4)


def test_empty_string_is_embedded_like_any_text(minilm):
    out = minilm.encode(["", "hello"])
    assert torch.isfinite(out).all() and abs(float(out[0].norm()) - 1.0) < 1e-5
    torch.testing.assert_close(minilm.encode([""])[0], out[0], atol=2e-5, rtol=1e-4)
    assert minilm.encode([]).shape == (0, 384)


def test_max_length_truncates(registry):
    a = "one two three four five six seven eight nine ten"
    b = "one two three four five six apples pears plums cherries"
    short = registry.build("encoder", {"name": "minilm", "max_length": 8})
    ea, eb = short.encode([a, b])
    torch.testing.assert_close(ea, eb)  # [CLS] + 6 shared words + [SEP]
    full = registry.build("encoder", {"name": "minilm"}).encode([a, b])
    assert float(full[0] @ full[1]) < 0.99
    assert short.fingerprint != registry.build("encoder", {"name": "minilm"}).fingerprint


def test_progress_bar_on_long_encodes(minilm, monkeypatch):
    import cellnet_core.run
    import cellnet_teachers.hf

    monkeypatch.setattr(cellnet_teachers.hf, "PROGRESS_MIN_TEXTS", 12)  # the real threshold is 256 texts

    calls = []

    def fake_progress(iterable=None, **kw):
        calls.append(kw)
        return iterable

    monkeypatch.setattr(cellnet_core.run, "progress", fake_progress)
    minilm.encode([f"w{i}" for i in range(12)])
    assert not calls
    minilm.encode([f"w{i}" for i in range(13)])
    assert len(calls) == 1 and "13 texts" in calls[0]["desc"]
