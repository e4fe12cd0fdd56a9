"""Datasets from pip-installed corpora: ChatterBot, the construction FAQ, BYU chit-chat.

Loaders are cached per process (``lru_cache``) and return tuples, so no instance can change
what another one reads; everything that depends on a config (filters, seed, split) happens in
the factories.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import yaml

from cellnet_core.errors import ConfigError, DataError, MissingDependencyError
from cellnet_core.interfaces import Pair

from cellnet_datasets.config import ChatterbotConfig, ChitchatConfig, FaqConfig, SplitConfig
from cellnet_datasets.splits import (
    ConversationDataset,
    SplitDataset,
    clean_pairs,
    clean_text,
    merge_groups_sharing_questions,
    question_key,
    split_groups,
    subsample_groups,
)


#: most turns of history kept per context item (the ``context_turns`` limit)
MAX_HISTORY = 64


def _finish(name: str, pairs: list[Pair], cfg: SplitConfig, info: dict[str, Any],
            history: dict[tuple[str, str], tuple[str, ...]] | None = None) -> SplitDataset:
    """Clean, cap, split: the common tail of every dataset. With ``history`` (cleaned
    (question, answer) → the turns up to the question), a :class:`ConversationDataset`."""
    pairs = clean_pairs(pairs)
    info["pairs_after_cleaning"] = len(pairs)
    pairs = subsample_groups(pairs, lambda p: p.group, cfg.max_pairs, cfg.seed)
    split = split_groups(pairs, lambda p: p.group, cfg.seed, cfg.val_fraction, cfg.test_fraction)
    if history is None:
        return SplitDataset(name, split, info=info)
    return ConversationDataset(name, split, history, cfg.context_turns, info=info)


def _remember(history: dict[tuple[str, str], tuple[str, ...]], turns: Sequence[str], j: int) -> None:
    """Record the turns up to ``turns[j]`` for the pair ``(turns[j], turns[j + 1])``, cleaned like
    :func:`clean_pairs` (the first conversation holding a pair gives its history, as it gives
    the pair)."""
    key = (clean_text(turns[j]), clean_text(turns[j + 1]))
    if key not in history:
        past = [t for t in (clean_text(x) for x in turns[max(0, j + 1 - MAX_HISTORY):j + 1]) if t]
        history[key] = tuple(past)


# -- ChatterBot ---------------------------------------------------------------------------------

def _chatterbot_dir() -> Path:
    try:
        from chatterbot_corpus.corpus import DATA_DIRECTORY
    except ImportError:
        raise MissingDependencyError("dataset 'chatterbot' needs chatterbot-corpus; "
                                     "install it with: pip install chatterbot-corpus") from None
    return Path(DATA_DIRECTORY)


@lru_cache(maxsize=8)
def load_chatterbot(language: str) -> tuple[tuple[str, tuple[str, ...], tuple[tuple[str, ...], ...]], ...]:
    """``(file stem, categories, conversations)`` per YAML file of one language, files sorted."""
    root = _chatterbot_dir()
    folder = root / language
    if not folder.is_dir():
        langs = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise ConfigError(f"data.language: unknown '{language}'; available: {', '.join(langs)}")
    out = []
    for f in sorted(folder.glob("*.yml")):
        try:
            doc = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            raise DataError(f"{f}: {where}unreadable YAML: {getattr(exc, 'problem', None) or exc}") from None
        convs = []
        for conv in doc.get("conversations") or []:
            if isinstance(conv, list):
                # YAML turns bare answers like `yes`/`42` into bools/numbers: keep them as text
                convs.append(tuple("" if t is None else str(t) for t in conv))
        cats = tuple(str(c) for c in doc.get("categories") or [])
        out.append((f.stem, cats, tuple(convs)))
    return tuple(out)


def build_chatterbot(cfg: ChatterbotConfig, ctx: Any = None) -> SplitDataset:
    """Factory of the ``chatterbot`` dataset: adjacent turns as pairs, optionally only some
    categories, split by conversation."""
    files = load_chatterbot(cfg.language)
    if cfg.categories:
        wanted = {c.casefold() for c in cfg.categories}
        known = {stem.casefold() for stem, _, _ in files} | {c.casefold() for _, cats, _ in files for c in cats}
        unknown = sorted(wanted - known)
        if unknown:
            raise ConfigError(f"data.categories: unknown {', '.join(repr(u) for u in unknown)}; available: "
                              f"{', '.join(stem for stem, _, _ in files)}")
        files = tuple(f for f in files
                      if f[0].casefold() in wanted or any(c.casefold() in wanted for c in f[1]))
    pairs = []
    history: dict[tuple[str, str], tuple[str, ...]] = {}
    for stem, _, convs in files:
        for i, conv in enumerate(convs):
            for j, (q, a) in enumerate(zip(conv, conv[1:])):
                pairs.append(Pair(q, a, f"{stem}#{i}"))
                _remember(history, conv, j)
    raw = len(pairs)
    # The corpus repeats a question over several conversations (one per alternative answer);
    # grouping by conversation alone would put "What is AI?" in train and in test.
    pairs = merge_groups_sharing_questions(clean_pairs(pairs))
    info = {"source": f"chatterbot-corpus/{cfg.language}", "files": [f[0] for f in files], "raw_pairs": raw}
    return _finish("chatterbot", pairs, cfg, info, history)


# -- construction FAQ ---------------------------------------------------------------------------

@lru_cache(maxsize=4)
def load_faq(lang: str) -> tuple[tuple[str, str, str, str], ...]:
    """``(id, category, question, answer)`` per FAQ entry."""
    try:
        import zaragoza_construction_faq as faq
    except ImportError:
        raise MissingDependencyError("dataset 'faq' needs zaragoza-construction-faq; "
                                     "install it with: pip install zaragoza-construction-faq") from None
    rows = []
    for n, q in enumerate(faq.load(lang=lang), 1):
        # the package's master JSON uses q/a; accept the long names too in case a release renames them
        question = q.get("q", q.get("question"))
        answer = q.get("a", q.get("answer"))
        if not isinstance(question, str) or not isinstance(answer, str):
            raise DataError(f"zaragoza_construction_faq ({lang}): entry {n}: missing question or answer")
        rows.append((str(q.get("id", n)), str(q.get("category", "")), question, answer))
    return tuple(rows)


def build_faq(cfg: FaqConfig, ctx: Any = None) -> SplitDataset:
    """Factory of the ``faq`` dataset (the Swedish construction FAQ), optionally only some
    categories."""
    rows = load_faq(cfg.lang)
    if cfg.categories:
        known = sorted({r[1] for r in rows})
        unknown = sorted(set(cfg.categories) - set(known))
        if unknown:
            raise ConfigError(f"data.categories: unknown {', '.join(repr(u) for u in unknown)}; "
                              f"available: {', '.join(known)}")
        rows = tuple(r for r in rows if r[1] in cfg.categories)
    # a few questions are asked twice with different answers: one group per normalised question
    pairs = [Pair(q, a, "faq:" + question_key(q)) for _, _, q, a in rows]
    info = {"source": f"zaragoza-construction-faq ({cfg.lang})", "raw_pairs": len(rows)}
    return _finish("faq", pairs, cfg, info)


# -- BYU chit-chat ------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def load_chitchat() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``(conversation id, turns)``; a turn is one speaker's consecutive messages joined by a space."""
    try:
        import chitchat_dataset
    except ImportError:
        raise MissingDependencyError("dataset 'chitchat' needs chitchat-dataset; "
                                     "install it with: pip install chitchat-dataset") from None
    path = Path(chitchat_dataset.__file__).with_name("dataset.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable: {exc}") from None
    out = []
    for cid in sorted(data):
        turns = tuple(" ".join(str(u.get("text", "")).strip() for u in msg).strip()
                      for msg in data[cid].get("messages", []))
        out.append((cid, turns))
    return tuple(out)


def build_chitchat(cfg: ChitchatConfig, ctx: Any = None) -> SplitDataset:
    """Factory of the ``chitchat`` dataset: adjacent turns of the BYU conversations within the
    length bounds."""
    convs = load_chitchat()
    pairs = []
    raw = 0
    lo, hi = cfg.min_chars, cfg.max_chars
    history: dict[tuple[str, str], tuple[str, ...]] = {}
    for cid, turns in convs:
        for j, (q, a) in enumerate(zip(turns, turns[1:])):
            raw += 1
            if lo <= len(q) <= hi and lo <= len(a) <= hi:
                pairs.append(Pair(q, a, cid))
                _remember(history, turns, j)
    info = {"source": "chitchat-dataset", "conversations": len(convs), "raw_pairs": raw,
            "pairs_after_length_filter": len(pairs)}
    return _finish("chitchat", pairs, cfg, info, history)
