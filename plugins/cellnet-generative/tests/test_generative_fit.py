"""Training, overfitting, save/load and the hybrid decoder, with the core's hashing encoder as a
fake teacher (named as such) and tiny models."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from cellnet_core.builtin.components import HashingEncoder
from cellnet_core.cache import CachedEncoder
from cellnet_core.errors import CheckpointError, ConfigError
from cellnet_core.pipeline import BuildContext
from cellnet_generative.quality import degenerate_reason
from cellnet_generative.testing import SENTENCES

RET_TINY = {"name": "ret", "d_model": 64, "n_layers": 2, "n_heads": 2, "ffn_hidden": 128, "prefix_len": 2,
            "vocab_size": 400, "epochs": 60, "batch_size": 30, "lr": 1e-2, "val_fraction": 0.0, "warmup": 0.1,
            "max_len": 32}
MAMBA_TINY = {"name": "cct-mamba", "d_model": 64, "n_layers": 2, "d_state": 4, "prefix_len": 2,
              "vocab_size": 400, "epochs": 60, "batch_size": 30, "lr": 1e-2, "val_fraction": 0.0, "warmup": 0.1,
              "max_len": 32}


@pytest.fixture(scope="module")
def fake_teacher():
    """The core's hashing encoder standing in for the real teacher."""
    return CachedEncoder(HashingEncoder(dim=64), enabled=False)


def _ctx(registry, encoder):
    return BuildContext(registry=registry, device=torch.device("cpu"), seed=0, encoder=encoder,
                        embedding_dim=encoder.dim)


def _build(registry, encoder, cfg):
    return registry.build("decoder", registry.config_for("decoder", cfg), _ctx(registry, encoder))


@pytest.fixture(scope="module")
def trained_ret(registry, fake_teacher):
    torch.set_num_threads(1)
    dec = _build(registry, fake_teacher, RET_TINY)
    embs = fake_teacher.encode(SENTENCES)
    info = dec.fit(SENTENCES, embs)
    return dec, embs, info


def test_ret_overfits_and_reproduces_sentences(trained_ret):
    dec, embs, info = trained_ret
    assert 0.5e5 < info["parameters"] < 2e5 and info["epochs"] == 60
    assert dec.decode(embs) == SENTENCES
    assert dec.generate(embs, "beam") == SENTENCES


def test_cct_mamba_overfits_and_reproduces_sentences(registry, fake_teacher):
    dec = _build(registry, fake_teacher, {**MAMBA_TINY, "epochs": 50})
    embs = fake_teacher.encode(SENTENCES[:16])
    dec.fit(SENTENCES[:16], embs)
    assert dec.decode(embs) == SENTENCES[:16]


def test_untrained_decoder_says_so(registry, fake_teacher):
    dec = _build(registry, fake_teacher, RET_TINY)
    with pytest.raises(CheckpointError, match="not trained"):
        dec.decode(torch.randn(1, 64))


def test_wrong_embedding_size_is_a_config_error(trained_ret):
    dec, _, _ = trained_ret
    with pytest.raises(ConfigError, match=r"expected embeddings \[B, 64\]"):
        dec.decode(torch.randn(2, 32))


def test_save_load_same_greedy_output(registry, fake_teacher, trained_ret, tmp_path):
    dec, embs, _ = trained_ret
    files = dec.save(tmp_path / "dec")
    assert {f.name for f in files} == {"weights.safetensors", "tokenizer.json", "decoder.json"}
    meta = json.loads((tmp_path / "dec" / "decoder.json").read_text())
    assert meta["config"]["d_model"] == 64 and len(meta["tokenizer_sha256"]) == 64
    again = _build(registry, fake_teacher, RET_TINY)
    again.load(tmp_path / "dec")
    assert again.decode(embs) == dec.decode(embs)
    assert again.generate(embs[:5], "beam") == dec.generate(embs[:5], "beam")


def test_foreign_tokenizer_is_detected(registry, fake_teacher, trained_ret, tmp_path):
    dec, _, _ = trained_ret
    dec.save(tmp_path / "a")
    other = _build(registry, fake_teacher, {**RET_TINY, "vocab_size": 300, "epochs": 1})
    other.fit(SENTENCES[:20], fake_teacher.encode(SENTENCES[:20]))
    other.save(tmp_path / "b")
    shutil.copy(tmp_path / "b" / "tokenizer.json", tmp_path / "a" / "tokenizer.json")
    fresh = _build(registry, fake_teacher, RET_TINY)
    with pytest.raises(CheckpointError, match="tokenizer does not match the decoder"):
        fresh.load(tmp_path / "a")
    # even with the recorded hash forged to match, the vocabulary size gives it away
    meta_path = tmp_path / "a" / "decoder.json"
    meta = json.loads(meta_path.read_text())
    meta["tokenizer_sha256"] = json.loads((tmp_path / "b" / "decoder.json").read_text())["tokenizer_sha256"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"tokenizer has \d+ entries, the decoder expects \d+"):
        fresh.load(tmp_path / "a")


def test_other_embedding_width_is_detected(registry, fake_teacher, trained_ret, tmp_path):
    dec, _, _ = trained_ret
    dec.save(tmp_path / "dec")
    narrow = _build(registry, CachedEncoder(HashingEncoder(dim=32), enabled=False), RET_TINY)
    with pytest.raises(CheckpointError, match="decoder expects 64-dim embeddings, the run gives 32"):
        narrow.load(tmp_path / "dec")


def test_other_architecture_is_detected(registry, fake_teacher, trained_ret, tmp_path):
    dec, _, _ = trained_ret
    dec.save(tmp_path / "dec")
    wider = _build(registry, fake_teacher, {**RET_TINY, "d_model": 96, "n_heads": 2})
    with pytest.raises(CheckpointError, match="trained with d_model=64, the config says 96"):
        wider.load(tmp_path / "dec")
    mamba = _build(registry, fake_teacher, MAMBA_TINY)
    with pytest.raises(CheckpointError, match="holds a 'ret' decoder"):
        mamba.load(tmp_path / "dec")


def test_early_stopping_on_held_out_loss(registry, fake_teacher):
    texts = SENTENCES * 2
    dec = _build(registry, fake_teacher, {**RET_TINY, "epochs": 40, "val_fraction": 0.2, "patience": 2,
                                          "batch_size": 16})
    info = dec.fit(texts, fake_teacher.encode(texts))
    assert info["val_texts"] == 12 and info["train_texts"] == 48  # 6 distinct texts held out, never trained on
    assert all("val_loss" in r for r in info["history"])
    assert info["stopped_early"] and info["epochs"] < 40
    assert info["best_epoch"] == min(range(len(info["history"])), key=lambda i: info["history"][i]["val_loss"]) + 1


def test_hybrid_falls_back_to_bank_then_beats_both_parts(registry, fake_teacher):
    # the cosine ordering holds whatever the generator's quality: a short training is enough
    cfg = {"name": "hybrid", "bank": {"name": "nearest"}, "generator": {**RET_TINY, "epochs": 15}, "beams": 3,
           "k": 3}
    hyb = _build(registry, fake_teacher, cfg)
    bank_texts = SENTENCES[::2]
    hyb.bank.fit(bank_texts, fake_teacher.encode(bank_texts))
    target = fake_teacher.encode(SENTENCES[1:8:2])  # not in the bank
    assert not hyb.generator.trained
    assert set(hyb.decode(target)) <= set(bank_texts)

    hyb.fit(SENTENCES, fake_teacher.encode(SENTENCES))
    queries = torch.nn.functional.normalize(fake_teacher.encode(SENTENCES[:10]) +
                                            0.3 * torch.randn(10, 64) / 8, dim=-1)

    def cos(texts):
        return torch.nn.functional.cosine_similarity(fake_teacher.encode(texts), queries)

    h, b, g = cos(hyb.decode(queries)), cos(hyb.bank.decode(queries)), cos(hyb.generator.decode(queries))
    assert bool((h >= b - 1e-6).all()) and bool((h >= g - 1e-6).all())

    # correction rounds generate again from the pushed target and only add to the pool: never worse
    calls = []
    generated = hyb._generated
    hyb._generated = lambda e: calls.append(e.shape[0]) or generated(e)
    hyb.cfg = hyb.cfg.model_copy(update={"correction_rounds": 2})
    pool = hyb.candidates(queries)
    hc = cos(hyb.decode(queries))
    assert calls == [10] * 6  # per call (pool, decode): the first proposals, then one per round
    assert bool((hc >= h - 1e-6).all()) and len(pool) == 10

    # sampled candidates join the pool (seeded: the same call proposes the same texts), never worse
    hyb._generated = generated
    hyb.cfg = hyb.cfg.model_copy(update={"correction_rounds": 0, "samples": 6})
    samples = hyb.generator.samples(queries[:3], 6)
    # up to 6 per row: degenerate samples of this briefly trained generator are left out
    assert all(3 <= len(r) <= 6 for r in samples) and samples == hyb.generator.samples(queries[:3], 6)
    assert len({t for r in samples for t in r}) > 3  # sampling, not six copies of the greedy text
    pool = hyb.proposals(queries[:3])
    assert all(set(s) <= set(p) for s, p in zip(samples, pool))
    hs = cos(hyb.decode(queries))
    assert bool((hs >= h - 1e-6).all())


def test_hybrid_bank_config_checked_with_path(registry):
    with pytest.raises(ConfigError, match="decoder.bank: unknown 'nearst'.*did you mean 'nearest'"):
        registry.config_for("decoder", {"name": "hybrid", "bank": {"name": "nearst"}})
    with pytest.raises(ConfigError, match="cannot itself be 'hybrid'"):
        registry.config_for("decoder", {"name": "hybrid", "bank": {"name": "hybrid"}})


# -- degenerate generated texts ------------------------------------------------------------------
@pytest.mark.parametrize("text", ["I", "y", ".", "IIIII.", "🤖🤖🤖", "?!?!", "no no no no", "Hmmmmm"])
def test_degenerate_texts_are_recognised(text):
    assert degenerate_reason(text) is not None


@pytest.mark.parametrize("text", ["No.", "Hi", "Yes I am.", "1945", "I am what I am.", "C++ is fine.", "Everywhere"])
def test_short_real_answers_are_not_degenerate(text):
    assert degenerate_reason(text) is None


def test_generator_and_hybrid_never_propose_degenerate_texts(registry, fake_teacher, trained_ret, monkeypatch):
    """Whatever the model writes, "I", "IIIII.", "." and "y" reach neither decode, candidates,
    samples nor the hybrid's ranking; with filter_degenerate off they pass through unchanged."""
    import cellnet_generative.decoder as decoder_module

    dec, embs, _ = trained_ret
    written = iter(["I", "IIIII.", ".", "y", "🤖🤖🤖", "my name is cell."] * 1000)
    monkeypatch.setattr(decoder_module, "decode_ids", lambda tok, ids: next(written))
    assert dec.decode(embs[:6]) == ["", "", "", "", "", "my name is cell."]
    assert [[c.text for c in r] for r in dec.candidates(embs[:1], 6)] == [["my name is cell."]]
    assert dec.samples(embs[:1], 6) == [["my name is cell."]]

    hyb = _build(registry, fake_teacher, {"name": "hybrid", "bank": {"name": "nearest"}, "generator": RET_TINY,
                                          "beams": 6, "k": 2, "samples": 6})
    hyb.bank.fit(SENTENCES[:4], fake_teacher.encode(SENTENCES[:4]))
    hyb.generator.tokenizer, hyb.generator.model, hyb.generator.embedding_dim = dec.tokenizer, dec.model, 64
    pool = hyb.proposals(fake_teacher.encode(["I", "🤖🤖🤖"]))
    assert all(degenerate_reason(t) is None for r in pool for t in r)
    assert all("my name is cell." in r for r in pool)

    raw = dec.__class__(dec.cfg.model_copy(update={"filter_degenerate": False}), embedding_dim=64)
    raw.tokenizer, raw.model = dec.tokenizer, dec.model
    written = iter(["I", "IIIII.", ".", "y", "🤖🤖🤖", "my name is cell."])
    assert raw.decode(embs[:6]) == ["I", "IIIII.", ".", "y", "🤖🤖🤖", "my name is cell."]
