"""Datasets from the user's own files: ``pairs``, ``texts`` and ``selection``.

Either one ``path`` is split by the seeded grouped split, or ``train`` / ``val`` / ``test`` files
are used as given (a split whose file is left out is carved out of ``train``). Relative paths
are relative to the working directory.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, TypeVar

from cellnet_core.errors import DataError
from cellnet_core.interfaces import Pair, SelectionItem

from cellnet_datasets.config import FileConfig, PairsConfig, SelectionConfig, TextsConfig
from cellnet_datasets.readers import detect_format, get_list, get_text, read_jsonl, read_records, require_file
from cellnet_datasets.splits import (
    SPLITS,
    SelectionDataset,
    SplitDataset,
    clean_pairs,
    clean_text,
    question_key,
    split_groups,
    subsample_groups,
    unique_texts,
)

T = TypeVar("T")
log = logging.getLogger("cellnet.datasets")


def _split_files(cfg: FileConfig, load: Callable[[str], list[T]], group_of: Callable[[T], str]) -> dict[str, list[T]]:
    """Load the configured file(s) and return the three splits."""
    def capped(path: str) -> list[T]:
        return subsample_groups(load(path), group_of, cfg.max_pairs, cfg.seed)

    if cfg.path is not None:
        return split_groups(capped(cfg.path), group_of, cfg.seed, cfg.val_fraction, cfg.test_fraction)
    given = {"val": cfg.val, "test": cfg.test}
    if cfg.train is None:  # e.g. an evaluation-only test file
        parts: dict[str, list[T]] = {s: [] for s in SPLITS}
    else:
        parts = split_groups(capped(cfg.train), group_of, cfg.seed,
                             0.0 if cfg.val else cfg.val_fraction, 0.0 if cfg.test else cfg.test_fraction)
    for split, path in given.items():
        if path is not None:
            parts[split] = capped(path)
    return parts


def _info(cfg: FileConfig, parts: dict[str, list[Any]]) -> dict[str, Any]:
    files = {"path": cfg.path} if cfg.path else {s: getattr(cfg, s) for s in SPLITS if getattr(cfg, s)}
    return {"source": files, "counts": {s: len(parts[s]) for s in SPLITS}}


# -- pairs --------------------------------------------------------------------------------------

def read_pairs_file(path: str, cfg: PairsConfig) -> list[Pair]:
    """Question/answer pairs of one JSONL, CSV or TSV file (fields from the config)."""
    require_file(path)
    fmt = detect_format(path, cfg.format)
    if fmt == "txt":
        raise DataError(f"{path}: pairs need a .jsonl, .csv or .tsv file (or set the dataset's 'format')")
    pairs = []
    for line, rec in read_records(path, fmt, (cfg.question_field, cfg.answer_field), cfg.encoding):
        q = get_text(rec, cfg.question_field, path, line)
        a = get_text(rec, cfg.answer_field, path, line)
        g = get_text(rec, cfg.group_field, path, line, required=False)
        g = (g or "").strip()
        # without a group, rows asking the same question stay together
        pairs.append(Pair(q, a, f"group:{g}" if g else f"question:{question_key(q)}"))
    pairs = clean_pairs(pairs)
    if not pairs:
        raise DataError(f"{path}: no usable pairs (every row has an empty question or answer)")
    return pairs


def build_pairs(cfg: PairsConfig, ctx: Any = None) -> SplitDataset:
    """Factory of the ``pairs`` dataset (one file split by seed, or one file per split)."""
    parts = _split_files(cfg, lambda p: read_pairs_file(p, cfg), lambda p: p.group)
    return SplitDataset("pairs", parts, info=_info(cfg, parts))


# -- texts --------------------------------------------------------------------------------------

def read_texts_file(path: str, cfg: TextsConfig) -> list[str]:
    """The unique non-empty texts of one .txt (one per line) or JSONL file."""
    require_file(path)
    fmt = detect_format(path, cfg.format)
    field = "text" if fmt == "txt" else cfg.text_field
    texts = unique_texts(clean_text(get_text(rec, field, path, line))
                         for line, rec in read_records(path, fmt, (field,), cfg.encoding))
    if not texts:
        raise DataError(f"{path}: no usable texts (every line is empty)")
    return texts


class TextsDataset(SplitDataset):
    """Single sentences. ``pairs(split)`` gives each sentence as its own target ``(t, t)``: the
    autoencoder objective, so pair-based strategies and evaluation also work on plain text."""


def build_texts(cfg: TextsConfig, ctx: Any = None) -> TextsDataset:
    """Factory of the ``texts`` dataset; each text is its own pair and group."""
    # group = the text itself (already unique per file)
    parts = _split_files(cfg, lambda p: read_texts_file(p, cfg), lambda t: t)
    parts = {s: unique_texts(parts[s]) for s in SPLITS}
    pairs = {s: [Pair(t, t, t) for t in parts[s]] for s in SPLITS}
    return TextsDataset("texts", pairs, texts=parts, info=_info(cfg, parts))


# -- answer selection ---------------------------------------------------------------------------

def _label(value: Any, path: str, line: int, index: int) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    raise DataError(f"{path}: line {line}: label {index} must be 0 or 1, got {value!r}")


def read_selection_file(path: str, cfg: SelectionConfig) -> list[SelectionItem]:
    """Answer-selection items (question, candidates, 0/1 labels) of one JSONL file. Items with no
    candidate labelled 1 are dropped (nothing to rank first, no MAP), with a warning that counts
    them; a file left with no item is a :class:`DataError`."""
    items: list[SelectionItem] = []
    seen: set[tuple] = set()
    no_positive: list[int] = []  # line numbers
    for line, rec in read_jsonl(path, cfg.encoding):
        q = clean_text(get_text(rec, cfg.question_field, path, line))
        cands = get_list(rec, cfg.candidates_field, path, line)
        labels = get_list(rec, cfg.labels_field, path, line)
        if len(labels) != len(cands):
            raise DataError(f"{path}: line {line}: '{cfg.labels_field}' has {len(labels)} entries but "
                            f"'{cfg.candidates_field}' has {len(cands)}")
        kept_c, kept_l = [], []
        for i, (c, lab) in enumerate(zip(cands, labels), 1):
            if not isinstance(c, str):
                raise DataError(f"{path}: line {line}: candidate {i} must be a string, got {type(c).__name__}")
            lab = _label(lab, path, line, i)
            if c.strip():  # an empty candidate is dropped with its label
                kept_c.append(c.strip())
                kept_l.append(lab)
        key = (q, tuple(kept_c), tuple(kept_l))
        if not q or not kept_c or key in seen:
            continue
        if 1 not in kept_l:
            no_positive.append(line)
            continue
        seen.add(key)
        items.append(SelectionItem(q, kept_c, kept_l))
    if no_positive:
        lines = ", ".join(map(str, no_positive[:5])) + (", …" if len(no_positive) > 5 else "")
        note = f"{len(no_positive)} item(s) without a candidate labelled 1 (line(s) {lines})"
        if not items:
            raise DataError(f"{path}: no usable items: {note}; label each question's correct candidate(s) 1")
        log.warning("%s: dropped %s: nothing to rank first; %d item(s) kept", path, note, len(items))
    if not items:
        raise DataError(f"{path}: no usable items (every line has an empty question or no candidates)")
    return items


def build_selection(cfg: SelectionConfig, ctx: Any = None) -> SelectionDataset:
    """Factory of the ``selection`` dataset; pairs are the questions with their correct candidates."""
    parts = _split_files(cfg, lambda p: read_selection_file(p, cfg), lambda it: question_key(it.question))
    group = {s: [question_key(it.question) for it in parts[s]] for s in SPLITS}
    pairs = {s: clean_pairs(Pair(it.question, c, "question:" + g)
                            for it, g in zip(parts[s], group[s])
                            for c, lab in zip(it.candidates, it.labels) if lab == 1)
             for s in SPLITS}
    texts = {s: unique_texts(t for it in parts[s] for t in (it.question, *it.candidates)) for s in SPLITS}
    return SelectionDataset("selection", pairs, selection=parts, texts=texts, info=_info(cfg, parts))
