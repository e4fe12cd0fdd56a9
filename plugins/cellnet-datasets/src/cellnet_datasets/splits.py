"""Seeded, grouped, process-independent splitting and the dataset object every component returns.

Every random choice here goes through :func:`stable_unit`, a SHA-256 of ``(seed, purpose, key)``:
Python's ``hash()`` is salted per process, ``random`` depends on call order; a hash of the group
name gives the same split in every process and does not move a group when other groups are
added or removed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence, TypeVar

from cellnet_core.errors import ConfigError
from cellnet_core.interfaces import Pair, SelectionItem

SPLITS: tuple[str, ...] = ("train", "val", "test")

T = TypeVar("T")


@dataclass
class ContextItem:
    """A conversation's last turns → its next turn. ``turns`` oldest first, the last one being the
    question of the matching :class:`Pair`; ``group`` as in :class:`Pair`."""

    turns: list[str]
    answer: str
    group: str = ""


def stable_unit(seed: int, purpose: str, key: str) -> float:
    """A number in ``[0, 1)`` fixed by ``(seed, purpose, key)``, the same in every process."""
    digest = hashlib.sha256(f"{seed}\x1f{purpose}\x1f{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def clean_text(text: str) -> str:
    """Strip surrounding whitespace (inner text is kept as written)."""
    return text.strip()


def question_key(text: str) -> str:
    """Key under which two questions count as the same: case and whitespace folded."""
    return " ".join(text.casefold().split())


def clean_pairs(pairs: Iterable[Pair]) -> list[Pair]:
    """Strip texts, drop pairs with an empty side, drop exact duplicate (question, answer) pairs
    (the first occurrence stays, with its group)."""
    seen: set[tuple[str, str]] = set()
    out: list[Pair] = []
    for p in pairs:
        q, a = clean_text(p.question), clean_text(p.answer)
        if not q or not a or (q, a) in seen:
            continue
        seen.add((q, a))
        out.append(Pair(q, a, p.group))
    return out


def merge_groups_sharing_questions(pairs: Sequence[Pair]) -> list[Pair]:
    """Union of groups that contain the same (normalised) question, so that a question asked in
    several groups cannot land in train and test at once. The merged group is named after its
    first member."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        root = x
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    first_group_of_question: dict[str, str] = {}
    for p in pairs:
        find(p.group)
        key = question_key(p.question)
        other = first_group_of_question.setdefault(key, p.group)
        ra, rb = find(other), find(p.group)
        if ra != rb:
            parent[rb] = ra  # keep the earlier group as the root
    return [Pair(p.question, p.answer, find(p.group)) for p in pairs]


def _group_order(groups: Iterable[str], seed: int, purpose: str) -> list[str]:
    return sorted(set(groups), key=lambda g: (stable_unit(seed, purpose, g), g))


def subsample_groups(items: Sequence[T], group_of: Callable[[T], str], max_items: int | None,
                     seed: int) -> list[T]:
    """Keep at most ``max_items`` items, taking whole groups in a seeded order (the last group
    taken may be cut). Items keep their original order."""
    if max_items is None or len(items) <= max_items:
        return list(items)
    sizes: dict[str, int] = {}
    for it in items:
        g = group_of(it)
        sizes[g] = sizes.get(g, 0) + 1
    budget: dict[str, int] = {}
    left = max_items
    for g in _group_order(sizes, seed, "subsample"):
        if left <= 0:
            break
        budget[g] = min(sizes[g], left)
        left -= budget[g]
    out: list[T] = []
    for it in items:
        g = group_of(it)
        if budget.get(g, 0) > 0:
            budget[g] -= 1
            out.append(it)
    return out


def split_groups(items: Sequence[T], group_of: Callable[[T], str], seed: int, val_fraction: float,
                 test_fraction: float) -> dict[str, list[T]]:
    """Grouped split: groups are visited in a seeded order (SHA-256 of seed and group name); test
    is filled first until it holds ``test_fraction`` of the items, then val, the rest is train.
    Every group lies on exactly one side; proportions are met up to one group, and a group that
    would leave train empty stays in train."""
    sizes: dict[str, int] = {}
    for it in items:
        g = group_of(it)
        sizes[g] = sizes.get(g, 0) + 1
    total = len(items)
    targets = {"test": test_fraction * total, "val": val_fraction * total}
    filled = {"test": 0, "val": 0}
    side: dict[str, str] = {}
    for g in _group_order(sizes, seed, "split"):
        for name in ("test", "val"):
            # never give the last of the data away: train keeps at least one group
            if filled[name] < targets[name] and filled["test"] + filled["val"] + sizes[g] < total:
                side[g] = name
                filled[name] += sizes[g]
                break
        else:
            side[g] = "train"
    out: dict[str, list[T]] = {s: [] for s in SPLITS}
    for it in items:
        out[side[group_of(it)]].append(it)
    return out


def check_split(split: str) -> str:
    """``split`` if it is ``train``, ``val`` or ``test``, else a ConfigError listing them."""
    if split not in SPLITS:
        raise ConfigError(f"split: unknown '{split}'; available: {', '.join(SPLITS)}")
    return split


def unique_texts(texts: Iterable[str]) -> list[str]:
    """Non-empty texts, each once, in order of first appearance."""
    seen: set[str] = set()
    out = []
    for t in texts:
        if t and t not in seen:
            seen.add(t)
            out.append(t)
    return out


class SplitDataset:
    """A dataset with a fixed train/val/test split of :class:`Pair` s (and optionally
    :class:`SelectionItem` s). Accessors return fresh lists of fresh objects, so a caller
    that mutates them cannot change what the next caller sees."""

    def __init__(self, name: str, pairs: dict[str, list[Pair]],
                 selection: dict[str, list[SelectionItem]] | None = None,
                 texts: dict[str, list[str]] | None = None, info: dict | None = None):
        self.name = name
        self._pairs = {s: list(pairs.get(s, [])) for s in SPLITS}
        self._selection = None if selection is None else {s: list(selection.get(s, [])) for s in SPLITS}
        self._texts = None if texts is None else {s: list(texts.get(s, [])) for s in SPLITS}
        #: provenance and counts (source files, options, dropped rows), for logs and docs
        self.info = dict(info or {})

    def pairs(self, split: str) -> list[Pair]:
        """The ``split``'s pairs (``train``, ``val`` or ``test``)."""
        return [Pair(p.question, p.answer, p.group) for p in self._pairs[check_split(split)]]

    def texts(self, split: str) -> list[str]:
        """The ``split``'s unique texts: questions and answers of its pairs (or its sentences)."""
        check_split(split)
        if self._texts is not None:
            return list(self._texts[split])
        return unique_texts(t for p in self._pairs[split] for t in (p.question, p.answer))

    def counts(self) -> dict[str, int]:
        """Pairs per split."""
        return {s: len(self._pairs[s]) for s in SPLITS}

    def __repr__(self) -> str:
        c = self.counts()
        return f"<{type(self).__name__} {self.name} train={c['train']} val={c['val']} test={c['test']}>"


class SelectionDataset(SplitDataset):
    """A split dataset that also offers answer-selection items."""

    def selection(self, split: str) -> list[SelectionItem]:
        """The ``split``'s answer-selection items: a question, candidates and 0/1 labels."""
        assert self._selection is not None
        return [SelectionItem(it.question, list(it.candidates), list(it.labels))
                for it in self._selection[check_split(split)]]


class ConversationDataset(SplitDataset):
    """A split dataset of conversations that also offers :class:`ContextItem` s: one per pair of
    the split, in the same order, with up to ``context_turns`` turns ending at the pair's question
    (same split as the pairs, so no conversation is on two sides)."""

    def __init__(self, name: str, pairs: dict[str, list[Pair]], history: dict[tuple[str, str], tuple[str, ...]],
                 context_turns: int, info: dict | None = None):
        super().__init__(name, pairs, info=info)
        #: (question, answer) → the conversation's turns up to and including the question
        self._history = dict(history)
        self.context_turns = context_turns

    def context(self, split: str, turns: int | None = None) -> list[ContextItem]:
        """The ``split``'s context items: the last ``turns`` turns (default: the dataset's
        ``context_turns``; fewer at a conversation's start), oldest first → the next turn.
        ``context(s)[i]`` belongs to ``pairs(s)[i]``."""
        k = self.context_turns if turns is None else int(turns)
        if k < 1:
            raise ConfigError(f"context: turns must be at least 1, got {k}")
        out = []
        for p in self._pairs[check_split(split)]:
            hist = self._history.get((p.question, p.answer), (p.question,))
            out.append(ContextItem(list(hist[-k:]), p.answer, p.group))
        return out
