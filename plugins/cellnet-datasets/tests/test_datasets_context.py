"""Context items of the conversation corpora: the last k turns → the next turn, on the pairs' split."""

from __future__ import annotations

import pytest

from cellnet_core.errors import ConfigError

from cellnet_datasets.corpora import load_chatterbot, load_chitchat
from cellnet_datasets.splits import SPLITS, ContextItem


def contiguous_in(seq: list[str], convs) -> bool:
    n = len(seq)
    return any(list(c[i:i + n]) == seq for c in convs for i in range(len(c) - n + 1))


def check_items_follow_pairs(ds, k: int) -> None:
    for s in SPLITS:
        items, pairs = ds.context(s), ds.pairs(s)
        assert len(items) == len(pairs)
        for it, p in zip(items, pairs):
            assert isinstance(it, ContextItem)
            assert it.turns[-1] == p.question and it.answer == p.answer and it.group == p.group
            assert 1 <= len(it.turns) <= k and all(t.strip() for t in it.turns)


def test_chatterbot_context_items(registry):
    ds = registry.build("dataset", {"name": "chatterbot"})
    check_items_follow_pairs(ds, 3)
    convs = [tuple(t.strip() for t in c) for _, _, cs in load_chatterbot("english") for c in cs]
    items = [it for s in SPLITS for it in ds.context(s)]
    longer = [it for it in items if len(it.turns) > 1]
    assert len(longer) > 100, "the corpus has conversations of more than two turns"
    # oldest first, consecutive turns of one real conversation, answer included
    for it in longer:
        assert contiguous_in(it.turns + [it.answer], convs), it
    # a conversation's items stay on its pairs' side of the split
    groups = {s: {it.group for it in ds.context(s)} for s in SPLITS}
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["val"]
    assert not groups["val"] & groups["test"]


def test_context_turns_option_and_override(registry):
    ds = registry.build("dataset", {"name": "chatterbot", "context_turns": 1})
    assert all(len(it.turns) == 1 for it in ds.context("train"))
    deep = ds.context("train", turns=5)
    assert max(len(it.turns) for it in deep) > 3
    assert [it.turns[-1] for it in deep] == [it.turns[0] for it in ds.context("train")]
    with pytest.raises(ConfigError, match="at least 1"):
        ds.context("train", turns=0)
    with pytest.raises(ConfigError, match="unknown 'dev'"):
        ds.context("dev")


def test_chitchat_context_items(registry):
    ds = registry.build("dataset", {"name": "chitchat", "max_pairs": 2000, "context_turns": 4})
    check_items_follow_pairs(ds, 4)
    convs = dict(load_chitchat())
    items = [it for s in SPLITS for it in ds.context(s)]
    assert sum(len(it.turns) == 4 for it in items) > len(items) // 2
    for it in items[:500]:
        # the group is the conversation id: the history comes from that conversation
        assert contiguous_in(it.turns + [it.answer], [convs[it.group]]), it
