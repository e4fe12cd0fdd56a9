"""User-file datasets (pairs, texts, selection): formats, splits, and the error message for each
kind of bad file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cellnet_core.errors import ConfigError, DataError
from cellnet_core.interfaces import SelectionItem
from cellnet_core.testing.contracts import DatasetContract

from cellnet_datasets.splits import SPLITS

DATA = Path(__file__).parent / "data"


def build(registry, **cfg):
    return registry.build("dataset", cfg)


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def jsonl(path: Path, rows) -> str:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


class TestPairsContract(DatasetContract):
    name = "pairs"
    config = {"path": str(DATA / "pairs.jsonl"), "test_fraction": 0.2}


class TestTextsContract(DatasetContract):
    name = "texts"
    config = {"path": str(DATA / "sentences.txt")}


class TestSelectionContract(DatasetContract):
    name = "selection"
    config = {"path": str(DATA / "selection.jsonl"), "val_fraction": 0.2, "test_fraction": 0.2}


# -- pairs ---------------------------------------------------------------------------------------

def test_jsonl_csv_tsv_give_the_same_pairs(registry):
    by_fmt = {ext: build(registry, name="pairs", path=str(DATA / f"pairs.{ext}")) for ext in ("jsonl", "csv", "tsv")}
    ref = {s: by_fmt["jsonl"].pairs(s) for s in SPLITS}
    assert sum(len(v) for v in ref.values()) == 30
    for ext in ("csv", "tsv"):
        assert {s: by_fmt[ext].pairs(s) for s in SPLITS} == ref, ext


def test_group_column_keeps_a_topic_on_one_side(registry):
    ds = build(registry, name="pairs", path=str(DATA / "pairs.jsonl"), val_fraction=0.2, test_fraction=0.2)
    topics = {s: {p.group for p in ds.pairs(s)} for s in SPLITS}
    assert all(len(topics[s]) >= 1 for s in SPLITS)
    assert not topics["train"] & topics["test"] and not topics["train"] & topics["val"]
    for s in SPLITS:  # three pairs per topic, never divided
        for g in topics[s]:
            assert sum(p.group == g for p in ds.pairs(s)) == 3
    again = build(registry, name="pairs", path=str(DATA / "pairs.jsonl"), val_fraction=0.2, test_fraction=0.2)
    assert again.pairs("test") == ds.pairs("test")
    other = build(registry, name="pairs", path=str(DATA / "pairs.jsonl"), val_fraction=0.2, test_fraction=0.2,
                  seed=1)
    assert {p.group for p in other.pairs("test")} != topics["test"]


def test_without_group_same_question_stays_together_and_duplicates_drop(tmp_path, registry):
    rows = [{"question": f"question {i}", "answer": f"answer {i}"} for i in range(40)]
    rows += [{"question": "  Question 3 ", "answer": "another answer"},  # same question, other case
             {"question": "question 5", "answer": "answer 5"},  # exact duplicate: dropped
             {"question": "   ", "answer": "no question"}, {"question": "no answer", "answer": ""}]
    ds = build(registry, name="pairs", path=jsonl(tmp_path / "d.jsonl", rows))
    assert sum(ds.counts().values()) == 41
    side = {s for s in SPLITS for p in ds.pairs(s) if p.question.lower() == "question 3"}
    assert len(side) == 1


def test_custom_field_names_and_numbers(tmp_path, registry):
    path = write(tmp_path / "d.csv", "q,a,topic\nhow many legs has a cat?,4,animals\nand a bird?,2,animals\n"
                                     "what colour is the sky?,blue,nature\n")
    ds = build(registry, name="pairs", path=path, question_field="q", answer_field="a", group_field="topic",
               val_fraction=0.0, test_fraction=0.3)
    got = sorted((p.question, p.answer, p.group) for s in SPLITS for p in ds.pairs(s))
    assert got[0] == ("and a bird?", "2", "group:animals")
    n = jsonl(tmp_path / "n.jsonl", [{"question": "two plus two?", "answer": 4}])
    assert build(registry, name="pairs", train=n).pairs("train")[0].answer == "4"


def test_explicit_split_files(tmp_path, registry):
    def rows(prefix, n):
        return [{"question": f"{prefix} q{i}", "answer": f"{prefix} a{i}"} for i in range(n)]

    tr = jsonl(tmp_path / "train.jsonl", rows("train", 50))
    va = jsonl(tmp_path / "val.jsonl", rows("val", 7))
    te = jsonl(tmp_path / "test.jsonl", rows("test", 9))
    ds = build(registry, name="pairs", train=tr, val=va, test=te)
    assert ds.counts() == {"train": 50, "val": 7, "test": 9}
    assert all(p.question.startswith("test") for p in ds.pairs("test"))
    # without a val file, val is carved out of train (10 %)
    carved = build(registry, name="pairs", train=tr, test=te)
    assert carved.counts() == {"train": 45, "val": 5, "test": 9}
    assert all(p.question.startswith("train") for p in carved.pairs("val"))
    # an evaluation-only file (what `cellnet eval --data FILE` builds)
    only = build(registry, name="pairs", test=te)
    assert only.counts() == {"train": 0, "val": 0, "test": 9}
    capped = build(registry, name="pairs", train=tr, val=va, test=te, max_pairs=5)
    assert capped.counts() == {"train": 5, "val": 5, "test": 5}


def test_config_needs_exactly_one_kind_of_source(registry):
    with pytest.raises(ConfigError, match="give either 'path' .* or 'train'/'val'/'test' files"):
        registry.config_for("dataset", {"name": "pairs"})
    with pytest.raises(ConfigError, match="give either 'path' or 'train'/'val'/'test', not both"):
        registry.config_for("dataset", {"name": "pairs", "path": "a.jsonl", "train": "b.jsonl"})


# -- texts ---------------------------------------------------------------------------------------

def test_texts_from_lines_and_jsonl(tmp_path, registry):
    ds = build(registry, name="texts", path=str(DATA / "sentences.txt"))
    assert sum(len(ds.texts(s)) for s in SPLITS) == 60
    assert all(p.question == p.answer for p in ds.pairs("train"))
    t = write(tmp_path / "t.txt", "first line\n\n   \nsecond line\nfirst line\n  third line  \n")
    got = build(registry, name="texts", train=t, val_fraction=0.0, test_fraction=0.0).texts("train")
    assert got == ["first line", "second line", "third line"]
    j = jsonl(tmp_path / "t.jsonl", [{"text": "alpha"}, {"text": "beta", "source": "x"}, {"text": " "}])
    assert build(registry, name="texts", train=j, val_fraction=0.0, test_fraction=0.0).texts("train") == \
        ["alpha", "beta"]
    with pytest.raises(DataError, match=r"t2.jsonl: line 2: missing field 'text'"):
        build(registry, name="texts", train=jsonl(tmp_path / "t2.jsonl", [{"text": "a"}, {"sentence": "b"}]))


# -- selection -----------------------------------------------------------------------------------

def test_selection_items_parse(registry):
    ds = build(registry, name="selection", path=str(DATA / "selection.jsonl"), val_fraction=0.2,
               test_fraction=0.2)
    items = {s: ds.selection(s) for s in SPLITS}
    assert sum(len(v) for v in items.values()) == 30
    for it in items["test"]:
        assert isinstance(it, SelectionItem)
        assert len(it.candidates) == len(it.labels) == 3 and sum(it.labels) == 1
    # pairs are the positive candidates; texts hold questions and every candidate
    test_pairs = ds.pairs("test")
    assert [(p.question, p.answer) for p in test_pairs] == \
        [(it.question, c) for it in items["test"] for c, lab in zip(it.candidates, it.labels) if lab]
    assert set(ds.texts("test")) == {t for it in items["test"] for t in (it.question, *it.candidates)}
    q = {s: {it.question for it in items[s]} for s in SPLITS}
    assert not q["train"] & q["test"]


def test_selection_drops_empty_candidates_with_their_label(tmp_path, registry):
    p = jsonl(tmp_path / "s.jsonl", [{"question": "q?", "candidates": ["yes", " ", "no"], "labels": [1, 1, False]}])
    (item,) = build(registry, name="selection", test=p).selection("test")
    assert item == SelectionItem("q?", ["yes", "no"], [1, 0])


# -- bad files -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name,content,kind,pattern", [
    ("data.jsonl", '{"question": "a", "answer": "b"}\n{"question": "c", "answer": "d"}\n{"question": "e"}\n',
     "pairs", r"data.jsonl: line 3: missing field 'answer'"),
    ("data.jsonl", '{"question": "a", "answer": "b"}\n{"question": "c", "answer": "d",}\n',
     "pairs", r"data.jsonl: line 2: invalid JSON: Expecting property name enclosed in double quotes \(column 33\)"),
    ("data.jsonl", '{"question": "a", "answer": "b"}\n["a", "b"]\n',
     "pairs", r"data.jsonl: line 2: expected a JSON object, got a list"),
    ("data.jsonl", '{"question": "a", "answer": ["b"]}\n',
     "pairs", r"data.jsonl: line 1: field 'answer' must be a string, got a list"),
    ("data.jsonl", "", "pairs", r"data.jsonl: file is empty"),
    ("data.jsonl", "\n  \n\n", "pairs", r"data.jsonl: file is empty"),
    ("data.csv", "question,reply\nhi,hello\n", "pairs",
     r"data.csv: line 1: missing column 'answer' in the CSV header \(columns: question, reply\)"),
    ("data.tsv", "question\tanswer\nhi\thello\nonly one field\n", "pairs",
     r"data.tsv: line 3: expected 2 fields as in the header, got 1"),
    ("data.csv", "question,answer\n", "pairs", r"data.csv: no usable pairs"),
    ("data.txt", "hello\n", "pairs", r"data.txt: pairs need a .jsonl, .csv or .tsv file"),
    ("sel.jsonl", '{"question": "q", "candidates": ["a", "b"], "labels": [1, 0]}\n'
                  '{"question": "q2", "candidates": ["a", "b", "c"], "labels": [1, 0]}\n',
     "selection", r"sel.jsonl: line 2: 'labels' has 2 entries but 'candidates' has 3"),
    ("sel.jsonl", '{"question": "q", "candidates": ["a", "b"], "labels": [1, 2]}\n',
     "selection", r"sel.jsonl: line 1: label 2 must be 0 or 1, got 2"),
    ("sel.jsonl", '{"question": "q", "candidates": "a", "labels": [1]}\n',
     "selection", r"sel.jsonl: line 1: field 'candidates' must be a list, got a string"),
    ("sel.jsonl", '{"question": "q", "labels": [1]}\n',
     "selection", r"sel.jsonl: line 1: missing field 'candidates'"),
])
def test_bad_file_messages(tmp_path, registry, name, content, kind, pattern):
    path = write(tmp_path / name, content)
    with pytest.raises(DataError, match=pattern):
        build(registry, name=kind, path=path)


def test_wrong_encoding_names_file_and_line(tmp_path, registry):
    path = tmp_path / "latin.csv"
    path.write_bytes("question,answer\nhi,hello\ncafé?,oui\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.csv: line 3: not valid utf-8 \(byte 0xe9 at column 4\)"):
        build(registry, name="pairs", path=str(path))
    ds = build(registry, name="pairs", path=str(path), encoding="latin-1", val_fraction=0.0, test_fraction=0.0)
    assert ("café?", "oui") in [(p.question, p.answer) for p in ds.pairs("train")]
    with pytest.raises(ConfigError, match="data.encoding: unknown encoding 'klingon-8'"):
        build(registry, name="pairs", path=str(path), encoding="klingon-8")


def test_missing_file_and_directory(tmp_path, registry):
    with pytest.raises(DataError, match=r"nope.jsonl: no such file"):
        build(registry, name="pairs", path=str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match=r"nope.txt: no such file"):
        build(registry, name="texts", train=str(DATA / "sentences.txt"), test=str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match=r"is a directory, expected a file"):
        build(registry, name="selection", path=str(tmp_path))


def test_utf8_bom_is_not_part_of_the_header(tmp_path, registry):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffquestion,answer\nhi,hello\n".encode("utf-8"))
    ds = build(registry, name="pairs", train=str(path), val_fraction=0.0, test_fraction=0.0)
    assert [(p.question, p.answer) for p in ds.pairs("train")] == [("hi", "hello")]


def test_listing_and_validating_import_no_torch():
    code = ("import sys; import cellnet_datasets.plugin, cellnet_datasets.config; "
            "from cellnet_datasets.config import PairsConfig; PairsConfig(path='x.jsonl'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
