"""The built-in corpora (chatterbot, faq, chitchat): real data, sane sizes, fixed grouped splits."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from cellnet_core.errors import ConfigError
from cellnet_core.testing.contracts import DatasetContract

from cellnet_datasets.splits import SPLITS, question_key


def build(registry, **cfg):
    return registry.build("dataset", cfg)


def groups(ds, split):
    return {p.group for p in ds.pairs(split)}


def assert_disjoint_groups(ds):
    g = {s: groups(ds, s) for s in SPLITS}
    assert not g["train"] & g["val"]
    assert not g["train"] & g["test"]
    assert not g["val"] & g["test"]


def assert_no_question_leak(ds):
    train_q = {question_key(p.question) for p in ds.pairs("train")}
    for split in ("val", "test"):
        leaked = [p.question for p in ds.pairs(split) if question_key(p.question) in train_q]
        assert not leaked, f"questions of {split} also in train: {leaked[:5]}"


def all_pairs(ds):
    return [(p.question, p.answer) for s in SPLITS for p in ds.pairs(s)]


# -- contract classes (real discovery) -----------------------------------------------------------

class TestChatterbotContract(DatasetContract):
    name = "chatterbot"


class TestFaqContract(DatasetContract):
    name = "faq"


class TestChitchatContract(DatasetContract):
    name = "chitchat"
    config = {"max_pairs": 3000}


# -- chatterbot ----------------------------------------------------------------------------------

def test_chatterbot_sizes_and_split(registry):
    ds = build(registry, name="chatterbot")
    c = ds.counts()
    total = sum(c.values())
    # 2,306 adjacent turns in the English corpus, ~1,176 after dropping exact duplicates
    # (tech_support.yml repeats 10 pairs ~100 times each)
    assert 1000 <= total <= 1400, c
    assert c["train"] > c["val"] > 0 and c["train"] > c["test"] > 0
    assert 0.05 <= c["test"] / total <= 0.2 and 0.05 <= c["val"] / total <= 0.2
    assert_disjoint_groups(ds)
    assert_no_question_leak(ds)
    pairs = all_pairs(ds)
    assert len(pairs) == len(set(pairs)), "exact duplicate pairs were kept"
    assert all(q.strip() and a.strip() for q, a in pairs)


def test_chatterbot_seed_changes_split(registry):
    a = build(registry, name="chatterbot", seed=0)
    b = build(registry, name="chatterbot", seed=0)
    other = build(registry, name="chatterbot", seed=1)
    assert a.pairs("test") == b.pairs("test")
    assert a.pairs("test") != other.pairs("test")
    assert sorted(all_pairs(a)) == sorted(all_pairs(other))  # same data, other split


def test_chatterbot_categories_filter(registry):
    by_file = build(registry, name="chatterbot", categories=["greetings"])
    assert {p.group.split("#")[0] for s in SPLITS for p in by_file.pairs(s)} == {"greetings"}
    assert 10 <= sum(by_file.counts().values()) <= 40
    # category names from inside the files work too, case-insensitively
    by_category = build(registry, name="chatterbot", categories=["artificial intelligence"])
    assert {p.group.split("#")[0] for s in SPLITS for p in by_category.pairs(s)} == {"ai"}
    with pytest.raises(ConfigError, match=r"data.categories: unknown 'no-such-topic'; available: ai, botprofile"):
        build(registry, name="chatterbot", categories=["no-such-topic"])
    # a filtered instance does not leak into the next unfiltered one (the loader cache is shared)
    assert sum(build(registry, name="chatterbot").counts().values()) > 1000


def test_chatterbot_other_language_and_unknown_language(registry):
    de = build(registry, name="chatterbot", language="german")
    assert 20 <= sum(de.counts().values()) <= 2000
    with pytest.raises(ConfigError, match=r"data.language: unknown 'klingon'; available: .*english"):
        build(registry, name="chatterbot", language="klingon")


def test_texts_are_unique_questions_and_answers_of_the_split(registry):
    ds = build(registry, name="chatterbot")
    texts = ds.texts("val")
    assert len(texts) == len(set(texts))
    assert set(texts) == {t for p in ds.pairs("val") for t in (p.question, p.answer)}
    with pytest.raises(ConfigError, match="split: unknown 'dev'; available: train, val, test"):
        ds.pairs("dev")


def test_returned_lists_cannot_change_the_dataset(registry):
    ds = build(registry, name="faq")
    first = ds.pairs("train")
    first[0].question = "changed"
    first.clear()
    assert ds.pairs("train") and ds.pairs("train")[0].question != "changed"


# -- faq -----------------------------------------------------------------------------------------

def test_faq_sizes_and_no_question_leak(registry):
    ds = build(registry, name="faq")
    c = ds.counts()
    assert sum(c.values()) == 503, c  # 503 entries, all distinct (question, answer) pairs
    assert 380 <= c["train"] <= 420 and 40 <= c["val"] <= 60 and 40 <= c["test"] <= 60
    assert_disjoint_groups(ds)
    # six questions are asked twice with different answers: both copies stay on one side
    assert_no_question_leak(ds)
    assert all(len(p.answer) > 20 for p in ds.pairs("test"))


def test_faq_seed_lang_and_categories(registry):
    assert build(registry, name="faq", seed=3).pairs("test") == build(registry, name="faq", seed=3).pairs("test")
    assert build(registry, name="faq", seed=3).pairs("test") != build(registry, name="faq", seed=4).pairs("test")
    sv = build(registry, name="faq", lang="sv")
    assert 450 <= sum(sv.counts().values()) <= 503
    assert any("å" in p.answer or "ä" in p.answer for p in sv.pairs("train"))
    one = build(registry, name="faq", categories=["bygglov"])
    assert sum(one.counts().values()) == 20
    with pytest.raises(ConfigError, match=r"data.categories: unknown 'roofing'; available: "):
        build(registry, name="faq", categories=["roofing"])


# -- chitchat ------------------------------------------------------------------------------------

def test_chitchat_default_cap_and_filters(registry):
    ds = build(registry, name="chitchat")
    c = ds.counts()
    assert sum(c.values()) == 20000, c  # the default max_pairs, cut by whole conversations
    assert 1500 <= c["test"] <= 2600 and 1500 <= c["val"] <= 2600
    assert_disjoint_groups(ds)
    assert all(2 <= len(p.question) <= 300 and 2 <= len(p.answer) <= 300 for s in SPLITS for p in ds.pairs(s))
    # a conversation yields adjacent turns: the answer of one pair is often the next question
    train = ds.pairs("train")
    chained = sum(a.answer == b.question for a, b in zip(train, train[1:]) if a.group == b.group)
    assert chained > len(train) // 2


def test_chitchat_all_pairs_and_length_options(registry):
    full = build(registry, name="chitchat", max_pairs=None)
    total = sum(full.counts().values())
    assert 110_000 <= total <= 131_569, total  # 131,569 adjacent turns before the length filter
    short = build(registry, name="chitchat", max_pairs=2000, min_chars=10, max_chars=40, seed=5)
    assert sum(short.counts().values()) == 2000
    assert all(10 <= len(t) <= 40 for s in SPLITS for p in short.pairs(s) for t in (p.question, p.answer))
    assert short.pairs("test") != build(registry, name="chitchat", max_pairs=2000, min_chars=10,
                                        max_chars=40, seed=6).pairs("test")
    with pytest.raises(ConfigError, match="min_chars \\(50\\) is larger than max_chars \\(10\\)"):
        build(registry, name="chitchat", min_chars=50, max_chars=10)


def test_split_is_the_same_in_another_process(registry):
    """The split hashes group names with SHA-256, not Python's salted hash(): a fresh process
    with another PYTHONHASHSEED gives the same test split."""
    code = ("import json; from cellnet_core.plugins import load; _, r = load(); "
            "ds = r.build('dataset', {'name': 'chatterbot', 'seed': 7}); "
            "print(json.dumps([[p.question, p.answer] for p in ds.pairs('test')]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "PYTHONHASHSEED": "12345"})
    here = [[p.question, p.answer] for p in build(registry, name="chatterbot", seed=7).pairs("test")]
    assert json.loads(out.stdout) == here


def test_config_validation(registry):
    with pytest.raises(ConfigError, match="val_fraction \\+ test_fraction must be < 1"):
        registry.config_for("dataset", {"name": "faq", "val_fraction": 0.5, "test_fraction": 0.5})
    with pytest.raises(ConfigError, match="max_pairs: Input should be greater than or equal to 1"):
        registry.config_for("dataset", {"name": "chatterbot", "max_pairs": 0})


def test_max_pairs_keeps_whole_groups_but_one(registry):
    ds = build(registry, name="chatterbot", max_pairs=300)
    assert sum(ds.counts().values()) == 300
    assert_disjoint_groups(ds)
    full = build(registry, name="chatterbot")
    full_sizes = Counter(p.group for s in SPLITS for p in full.pairs(s))
    sizes = Counter(p.group for s in SPLITS for p in ds.pairs(s))
    cut = [g for g, n in sizes.items() if n != full_sizes[g]]
    assert len(cut) <= 1
