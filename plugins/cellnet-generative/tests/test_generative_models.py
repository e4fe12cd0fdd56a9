"""Model-level tests: incremental decoding equals full recomputation, generation helpers."""

from __future__ import annotations

import pytest
import torch

from cellnet_generative.generation import GenerationOptions, _filter, _penalise, beam_search, generate
from cellnet_generative.models import CctMambaLM, RetLM, selective_scan
from cellnet_generative.tokenizer import decode_ids, train_tokenizer


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(n)


def _incremental(model, emb, toks, first: int):
    logits, cache = model.prefill(emb, toks[:, :first])
    out = [logits]
    for i in range(first, toks.shape[1]):
        logits, cache = model.step(toks[:, i], cache)
        out.append(logits)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("model_cls,kw", [
    (RetLM, {"n_heads": 4, "ffn_hidden": 64, "n_layers": 2}),
    (CctMambaLM, {"n_layers": 2, "d_state": 4, "d_conv": 3, "front_kernel": 3}),
])
@pytest.mark.parametrize("first", [1, 4])
def test_incremental_equals_full(model_cls, kw, first):
    """KV cache (ret) / conv buffers + SSM state (cct-mamba) give the full forward's logits."""
    model = model_cls(vocab=50, emb_dim=16, d_model=32, prefix_len=3, **kw).eval()
    emb, toks = torch.randn(3, 16), torch.randint(0, 50, (3, 12))
    with torch.no_grad():
        full = model(emb, toks)[:, first - 1:]
        inc = _incremental(model, emb, toks, first)
    torch.testing.assert_close(inc, full, atol=1e-5, rtol=1e-4)


def test_selective_scan_state_continues():
    b, t, e, n = 2, 10, 6, 4
    u, delta = torch.randn(b, t, e), torch.rand(b, t, e)
    A, Bm, Cm, D = -torch.rand(e, n), torch.randn(b, t, n), torch.randn(b, t, n), torch.randn(e)
    y, h = selective_scan(u, delta, A, Bm, Cm, D)
    y1, h1 = selective_scan(u[:, :4], delta[:, :4], A, Bm[:, :4], Cm[:, :4], D)
    y2, h2 = selective_scan(u[:, 4:], delta[:, 4:], A, Bm[:, 4:], Cm[:, 4:], D, h1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y)
    torch.testing.assert_close(h2, h)


def test_beam_width_one_is_greedy():
    model = RetLM(vocab=40, emb_dim=8, d_model=32, n_layers=1, n_heads=2, ffn_hidden=32).eval()
    opts = GenerationOptions(bos=1, eos=2, max_new_tokens=10)
    emb = torch.randn(4, 8)
    greedy = generate(model, emb, opts)
    beams = beam_search(model, emb, opts, beams=1)
    assert [r[0][0] for r in beams] == greedy


def test_beam_scores_sorted_and_distinct():
    model = CctMambaLM(vocab=40, emb_dim=8, d_model=32, n_layers=1, d_state=4).eval()
    rows = beam_search(model, torch.randn(2, 8), GenerationOptions(bos=1, eos=2, max_new_tokens=6), beams=4)
    for row in rows:
        scores = [s for _, s in row]
        assert scores == sorted(scores, reverse=True) and len(row) == 4
        assert len({tuple(t) for t, _ in row}) == 4


def test_sampling_filters():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(_filter(logits, 2, 1.0))[0].tolist() == [False, False, True, True]
    # nucleus: p(0) ≈ 0.64 < 0.7, so the first two are kept
    assert torch.isinf(_filter(logits, 0, 0.7))[0].tolist() == [False, False, True, True]
    pen = _penalise(torch.tensor([[2.0, -2.0, 2.0]]), torch.tensor([[True, True, False]]), 2.0)
    assert pen.tolist() == [[1.0, -4.0, 2.0]]


def test_sampling_seeded_and_top_k_one_is_greedy():
    model = RetLM(vocab=40, emb_dim=8, d_model=32, n_layers=1, n_heads=2, ffn_hidden=32).eval()
    emb = torch.randn(3, 8)
    opts = GenerationOptions(bos=1, eos=2, max_new_tokens=8, top_k=1, temperature=0.7)
    g = torch.Generator().manual_seed(0)
    assert generate(model, emb, opts, sample=True, generator=g) == generate(model, emb, opts)
    opts = GenerationOptions(bos=1, eos=2, max_new_tokens=8, temperature=1.5, top_p=0.9)
    a = generate(model, emb, opts, sample=True, generator=torch.Generator().manual_seed(5))
    b = generate(model, emb, opts, sample=True, generator=torch.Generator().manual_seed(5))
    assert a == b


TEXTS = ["hello there, how are you?", "i am fine thanks", "what is your name", "the cat sat on the mat"] * 3


def test_byte_level_tokenizer_never_unknown():
    tok = train_tokenizer(TEXTS, "bpe", 300)
    assert [tok.token_to_id(t) for t in ("<pad>", "<bos>", "<eos>")] == [0, 1, 2]
    odd = "Zaragoza ñandú 東京 🙂"
    assert decode_ids(tok, tok.encode(odd).ids) == odd
    # a lone continuation byte and ids out of range decode without raising
    assert isinstance(decode_ids(tok, [tok.get_vocab_size() + 5, -1] + tok.encode("🙂").ids[:1]), str)


def test_unigram_tokenizer_unknown_characters_do_not_crash():
    tok = train_tokenizer(TEXTS, "unigram", 100)
    ids = tok.encode("hello 東京").ids
    assert tok.token_to_id("<unk>") in ids
    assert decode_ids(tok, ids).startswith("hello")


def test_rope_tables_extend_beyond_max_len():
    model = RetLM(vocab=30, emb_dim=8, d_model=16, n_layers=1, n_heads=2, ffn_hidden=16, prefix_len=2,
                  max_len=4).eval()
    emb, toks = torch.randn(2, 8), torch.randint(0, 30, (2, 20))
    with torch.no_grad():
        inc = _incremental(model, emb, toks, 1)
        full = model(emb, toks)
    torch.testing.assert_close(inc, full, atol=1e-5, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("model_cls", [RetLM, CctMambaLM])
def test_incremental_equals_full_on_cuda(model_cls):
    model = model_cls(vocab=50, emb_dim=16, d_model=32, n_layers=2).cuda().eval()
    emb, toks = torch.randn(3, 16, device="cuda"), torch.randint(0, 50, (3, 12), device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(_incremental(model, emb, toks, 1), model(emb, toks), atol=1e-4, rtol=1e-3)
