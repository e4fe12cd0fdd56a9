"""The split helpers on their own: stable hashing, grouped proportions, subsampling, merging."""

from __future__ import annotations

from cellnet_core.interfaces import Pair

from cellnet_datasets.splits import (
    clean_pairs,
    merge_groups_sharing_questions,
    split_groups,
    stable_unit,
    subsample_groups,
)


def test_stable_unit_is_fixed_and_seeded():
    assert stable_unit(0, "split", "a") == stable_unit(0, "split", "a")
    assert stable_unit(0, "split", "a") != stable_unit(1, "split", "a")
    # pinned value: a change here silently changes every dataset's split
    assert round(stable_unit(0, "split", "a"), 12) == round(
        int.from_bytes(__import__("hashlib").sha256(b"0\x1fsplit\x1fa").digest()[:8], "big") / 2**64, 12)
    values = [stable_unit(0, "x", str(i)) for i in range(2000)]
    assert all(0 <= v < 1 for v in values) and 0.45 < sum(values) / len(values) < 0.55


def test_split_proportions_and_groups():
    items = [(f"g{i // 4}", i) for i in range(4000)]  # 1000 groups of 4
    parts = split_groups(items, lambda it: it[0], seed=0, val_fraction=0.1, test_fraction=0.2)
    assert sum(map(len, parts.values())) == 4000
    assert abs(len(parts["test"]) - 800) <= 4 and abs(len(parts["val"]) - 400) <= 4
    sides = {}
    for s, its in parts.items():
        for g, _ in its:
            assert sides.setdefault(g, s) == s
    # items keep their order inside a split
    assert [i for _, i in parts["train"]] == sorted(i for _, i in parts["train"])


def test_split_zero_fractions_and_tiny_data():
    items = ["a", "b", "c"]
    assert split_groups(items, str, 0, 0.0, 0.0) == {"train": items, "val": [], "test": []}
    parts = split_groups(items, str, 0, 0.1, 0.1)
    assert len(parts["test"]) == 1 and len(parts["val"]) == 1 and len(parts["train"]) == 1


def test_subsample_takes_whole_groups_in_seeded_order():
    items = [(f"g{i // 10}", i) for i in range(1000)]
    a = subsample_groups(items, lambda it: it[0], 95, seed=0)
    assert len(a) == 95 and a == subsample_groups(items, lambda it: it[0], 95, seed=0)
    assert a != subsample_groups(items, lambda it: it[0], 95, seed=1)
    counts = {}
    for g, _ in a:
        counts[g] = counts.get(g, 0) + 1
    assert sorted(counts.values()) == [5] + [10] * 9
    assert subsample_groups(items, lambda it: it[0], None, 0) == items


def test_merge_groups_sharing_questions():
    pairs = [Pair("Hi", "Hello", "a"), Pair("How are you?", "Fine", "b"), Pair("hi ", "Hey", "c"),
             Pair("Fine?", "Yes", "c"), Pair("Other", "x", "d")]
    merged = merge_groups_sharing_questions(pairs)
    assert [p.group for p in merged] == ["a", "b", "a", "a", "d"]


def test_clean_pairs_strips_drops_and_dedups():
    pairs = [Pair(" q ", " a ", "g1"), Pair("q", "a", "g2"), Pair("", "a", "g3"), Pair("q2", "\n", "g4")]
    assert clean_pairs(pairs) == [Pair("q", "a", "g1")]
