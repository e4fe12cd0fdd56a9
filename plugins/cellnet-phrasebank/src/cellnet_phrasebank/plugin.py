"""Registers the ``phrasebank`` decoder (this module only registers; no faiss import here)."""

from __future__ import annotations

from cellnet_core import hookimpl

from cellnet_phrasebank.config import PhrasebankConfig


@hookimpl
def cellnet_register_components(registry) -> None:
    """Register the ``phrasebank`` decoder."""
    registry.add("decoder", "phrasebank", PhrasebankConfig, "cellnet_phrasebank.decoder:build_phrasebank",
                 summary="nearest known phrase(s) via FAISS (flat/ivf/hnsw/auto); best, mmr or teacher-scored compose",
                 requires=("faiss", "numpy"), install_hint="pip install faiss-cpu numpy")
