"""Registers the dataset components (configs only; corpora load when a dataset is built)."""

from __future__ import annotations

from cellnet_core import hookimpl

from cellnet_datasets import config as c

_CORPORA = "cellnet_datasets.corpora"
_USER = "cellnet_datasets.user"
_SQUAD = "cellnet_datasets.squad"


@hookimpl
def cellnet_register_components(registry) -> None:
    """Register the bundled corpora and the readers of the user's own files."""
    registry.add("dataset", "chatterbot", c.ChatterbotConfig, f"{_CORPORA}:build_chatterbot",
                 summary="ChatterBot corpus: short topic conversations, adjacent turns as pairs (~1k pairs)",
                 requires=("chatterbot_corpus",), install_hint="pip install chatterbot-corpus")
    registry.add("dataset", "faq", c.FaqConfig, f"{_CORPORA}:build_faq",
                 summary="Swedish construction FAQ (English): 503 factual question → answer pairs",
                 requires=("zaragoza_construction_faq",), install_hint="pip install zaragoza-construction-faq")
    registry.add("dataset", "chitchat", c.ChitchatConfig, f"{_CORPORA}:build_chitchat",
                 summary="BYU chit-chat: open-domain conversations, adjacent turns (20k of ~131k pairs by default)",
                 requires=("chitchat_dataset",), install_hint="pip install chitchat-dataset")
    registry.add("dataset", "pairs", c.PairsConfig, f"{_USER}:build_pairs",
                 summary="your question/answer pairs from JSONL, CSV or TSV")
    registry.add("dataset", "texts", c.TextsConfig, f"{_USER}:build_texts",
                 summary="your sentences, one per line or JSONL 'text' (decoders, autoencoders)")
    registry.add("dataset", "selection", c.SelectionConfig, f"{_USER}:build_selection",
                 summary="your answer-selection items: question, candidates, 0/1 labels (JSONL)")
    registry.add("dataset", "squad", c.SquadConfig, f"{_SQUAD}:build_squad",
                 summary="SQuAD v1.1/v2.0 (bundled dev sets or your file): question → its paragraph's sentences, "
                         "split by article",
                 requires=("pysbd",), install_hint="pip install pysbd")
