"""The core's decoder contract for the three generative decoders (tiny models, fake teacher)."""

from __future__ import annotations

from cellnet_core.testing.contracts import DecoderContract

TINY = {"d_model": 32, "n_layers": 1, "prefix_len": 2, "vocab_size": 300, "epochs": 3, "batch_size": 8,
        "max_len": 24, "max_new_tokens": 12}


class TestRetContract(DecoderContract):
    name = "ret"
    config = {**TINY, "n_heads": 2, "ffn_hidden": 64}


class TestCctMambaContract(DecoderContract):
    name = "cct-mamba"
    config = {**TINY, "d_state": 4}


class TestHybridContract(DecoderContract):
    name = "hybrid"
    config = {"bank": {"name": "nearest"}, "generator": {"name": "ret", **TINY, "n_heads": 2, "ffn_hidden": 64},
              "beams": 2, "k": 3}
