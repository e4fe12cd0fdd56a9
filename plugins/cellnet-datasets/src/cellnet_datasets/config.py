"""Configs of the dataset components. No torch, no corpus imports: listing and validating a
config stays cheap."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from cellnet_core.config import ComponentConfig


class SplitConfig(ComponentConfig):
    """Options every dataset shares: the seeded, grouped train/val/test split and a size cap."""

    seed: int = Field(0, ge=0, description="seed of the split (and of any subsampling); the run seed does not "
                                           "change it, so runs with different seeds see the same split")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of pairs (by whole groups) in 'val'")
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of pairs (by whole groups) in 'test'")
    max_pairs: int | None = Field(None, ge=1, description="keep at most this many pairs, chosen by whole groups "
                                                          "in a seeded order before splitting (None: all)")

    @model_validator(mode="after")
    def _fractions(self):
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(f"val_fraction + test_fraction must be < 1 "
                             f"(got {self.val_fraction} + {self.test_fraction})")
        return self


class ChatterbotConfig(SplitConfig):
    """The ChatterBot corpus (package ``chatterbot-corpus``): small hand-written conversations by
    topic; each conversation ``[q, a1, a2, ...]`` gives its adjacent turns as pairs."""

    name: Literal["chatterbot"] = "chatterbot"
    language: str = Field("english", min_length=1, description="corpus language folder (english, german, ...)")
    categories: list[str] | None = Field(
        None, description="keep only these topics: file names (ai, greetings, ...) or the category names inside "
                          "the files, case-insensitive (None: all)")
    context_turns: int = Field(3, ge=1, le=64, description="turns of history in each context item (the last k turns "
                                                           "before the answer, oldest first; fewer at a conversation's start)")


class FaqConfig(SplitConfig):
    """Swedish construction-industry FAQ, English edition (package ``zaragoza-construction-faq``):
    503 question → answer pairs grounded in Swedish law. Grouped by the normalised question."""

    name: Literal["faq"] = "faq"
    lang: Literal["en", "sv"] = Field("en", description="'en' (English edition) or 'sv' (Swedish original)")
    categories: list[str] | None = Field(None, description="keep only these categories (e.g. bygglov, rot-avdrag); "
                                                           "None: all")


class ChitchatConfig(SplitConfig):
    """BYU chit-chat challenge (package ``chitchat-dataset``): 7,168 open-domain conversations;
    adjacent turns (a turn = one speaker's consecutive messages) become pairs."""

    name: Literal["chitchat"] = "chitchat"
    max_pairs: int | None = Field(20000, ge=1, description="keep at most this many pairs, by whole conversations "
                                                           "in a seeded order (None: all ~131k)")
    min_chars: int = Field(2, ge=1, le=10000, description="drop pairs where either turn is shorter (characters)")
    max_chars: int = Field(300, ge=1, le=100000, description="drop pairs where either turn is longer (characters)")
    context_turns: int = Field(3, ge=1, le=64, description="turns of history in each context item (the last k turns "
                                                           "before the answer, oldest first; fewer at a conversation's start)")

    @model_validator(mode="after")
    def _lengths(self):
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) is larger than max_chars ({self.max_chars})")
        return self


class FileConfig(SplitConfig):
    """User files: either one ``path`` split by seed, or explicit ``train`` / ``val`` / ``test``
    (any of them; a split without a file is carved out of ``train``, or empty without ``train``:
    ``cellnet eval --data FILE`` builds a dataset with only ``test``)."""

    path: str | None = Field(None, description="one file, split into train/val/test by the seeded grouped split")
    train: str | None = Field(None, description="training file (instead of 'path'); may be left out, e.g. "
                                                           "for an evaluation-only test file")
    val: str | None = Field(None, description="validation file; if left out, carved out of 'train' by val_fraction")
    test: str | None = Field(None, description="test file; if left out, carved out of 'train' by test_fraction")
    format: Literal["auto", "jsonl", "csv", "tsv", "txt"] = Field(
        "auto", description="file format; 'auto' goes by the extension (.jsonl/.json, .csv, .tsv/.tab, other: txt)")
    encoding: str = Field("utf-8", description="text encoding of the files")

    @model_validator(mode="after")
    def _sources(self):
        if self.path is None and all(x is None for x in (self.train, self.val, self.test)):
            raise ValueError("give either 'path' (one file, split by seed) or 'train'/'val'/'test' files")
        if self.path is not None and any(x is not None for x in (self.train, self.val, self.test)):
            raise ValueError("give either 'path' or 'train'/'val'/'test', not both")
        return self


class PairsConfig(FileConfig):
    """Question → answer pairs from JSONL (``{"question": ..., "answer": ...}``) or CSV/TSV with a
    header naming those columns; an optional group column keeps related pairs on one side."""

    name: Literal["pairs"] = "pairs"
    question_field: str = Field("question", min_length=1, description="JSON field / column of the question")
    answer_field: str = Field("answer", min_length=1, description="JSON field / column of the answer")
    group_field: str = Field("group", min_length=1, description="optional JSON field / column of the group; "
                                                                "rows without it are grouped by their question")


class TextsConfig(FileConfig):
    """Single sentences: one per line (.txt) or JSONL with a ``text`` field (for decoders and
    autoencoder training)."""

    name: Literal["texts"] = "texts"
    text_field: str = Field("text", min_length=1, description="JSON field / column holding the sentence")


class SelectionConfig(FileConfig):
    """Answer selection: JSONL lines ``{"question": ..., "candidates": [...], "labels": [0/1, ...]}``."""

    name: Literal["selection"] = "selection"
    format: Literal["auto", "jsonl"] = Field("auto", description="file format (JSONL only)")
    question_field: str = Field("question", min_length=1, description="JSON field of the question")
    candidates_field: str = Field("candidates", min_length=1, description="JSON field of the candidate list")
    labels_field: str = Field("labels", min_length=1, description="JSON field of the 0/1 labels")


class SquadConfig(SplitConfig):
    """SQuAD v1.1 / v2.0 (Rajpurkar et al. 2016, 2018; CC BY-SA 4.0) in the official JSON layout,
    plain or gzip. Paragraphs are cut into sentences (pysbd); answer selection ranks a paragraph's
    sentences for each question. Split by article: no paragraph is on two sides."""

    name: Literal["squad"] = "squad"
    path: str = Field("dev-v1.1", min_length=1,
                      description="a SQuAD JSON file (.json or .json.gz), or 'dev-v1.1' / 'dev-v2.0' for the dev "
                                  "sets bundled with cellnet-datasets")
    seed: int = Field(56851, ge=0, description="seed of the article split; the default gives the bundled v1.1 dev "
                                               "7,520 / 1,628 / 1,168 train / val / test questions")
    val_fraction: float = Field(0.154, ge=0.0, lt=1.0, description="share of questions (by whole articles) in 'val'")
    test_fraction: float = Field(0.11, ge=0.0, lt=1.0, description="share of questions (by whole articles) in 'test'")
    max_pairs: int | None = Field(None, ge=1, description="keep at most this many questions, by whole articles in a "
                                                          "seeded order, before splitting (None: all)")
    max_train_questions: int | None = Field(None, ge=1, description="keep at most this many training questions, by "
                                                                    "whole paragraphs in a seeded order, after the "
                                                                    "split (val and test unchanged; None: all)")
    unanswerable: bool = Field(True, description="keep v2.0's unanswerable questions as selection items without a "
                                                 "positive (marked 'unanswerable'); False drops them")
