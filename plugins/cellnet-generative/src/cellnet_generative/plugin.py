"""Registers the generative decoders (no model code imported here)."""

from __future__ import annotations

from cellnet_core import hookimpl

from cellnet_generative import config as c

_IMPL = "cellnet_generative"


@hookimpl
def cellnet_register_components(registry) -> None:
    """Register the ``ret``, ``cct-mamba``, ``prefix-lm`` and ``hybrid`` decoders."""
    registry.add("decoder", "ret", c.RetDecoderConfig, f"{_IMPL}.decoder:build_ret",
                 summary="tiny decoder-only transformer (RMSNorm, SwiGLU, RoPE, KV cache) conditioned "
                         "on the embedding through learned prefix vectors",
                 requires=("tokenizers",), install_hint="pip install tokenizers")
    registry.add("decoder", "cct-mamba", c.CctMambaDecoderConfig, f"{_IMPL}.decoder:build_cct_mamba",
                 summary="causal depthwise-conv front + Mamba-style selective state-space blocks "
                         "(pure PyTorch, recurrent decoding)",
                 requires=("tokenizers",), install_hint="pip install tokenizers")
    registry.add("decoder", "hybrid", c.HybridDecoderConfig, f"{_IMPL}.hybrid:build_hybrid",
                 summary="phrase-bank top-k + generated beams, re-embedded by the teacher; closest wins",
                 requires=("tokenizers",), install_hint="pip install tokenizers")
    registry.add("decoder", "prefix-lm", c.PrefixLMDecoderConfig, f"{_IMPL}.prefix_lm:build_prefix_lm",
                 summary="frozen causal LM (default SmolLM2-135M-Instruct) behind a learned prefix adapter: "
                         "embedding → k prefix vectors → the LM writes the sentence; only the adapter trains",
                 requires=("transformers", "tokenizers"), install_hint="pip install 'cellnet-generative[llm]'")
