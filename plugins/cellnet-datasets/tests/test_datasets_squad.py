"""The ``squad`` dataset: official SQuAD JSON (plain and gzip) → sentence selection, pairs and texts,
split by article; v2.0 unanswerable questions; damaged files; the bundled dev sets."""

from __future__ import annotations

import gzip
import json

import pytest

from cellnet_core.cli import main
from cellnet_core.errors import DataError
from cellnet_core.testing.contracts import DatasetContract

from cellnet_datasets.splits import SPLITS
from cellnet_datasets.squad import SquadSelectionItem, answer_spans, load_squad, resolve_path

# A paragraph of three sentences; "1900" occurs twice, so its first occurrence is not always the answer.
CONTEXT = ("Alphaville is a city on the river Tem. It was founded in 1900 by traders from the coast. "
           "The bridge of 1900 was rebuilt after a flood in 1950.")


def ans(text: str, start: int | None = None, context: str = CONTEXT) -> dict:
    return {"text": text, "answer_start": context.index(text) if start is None else start}


def qa(qid: str, question: str, answers: list[dict], impossible: bool | None = None) -> dict:
    out = {"id": qid, "question": question, "answers": answers}
    if impossible is not None:
        out["is_impossible"] = impossible
    return out


def article(title: str, n_paragraphs: int = 2, questions: int = 3, impossible: int = 0) -> dict:
    """Paragraphs whose text names the article, so that a leak across splits is visible."""
    paragraphs = []
    for p in range(n_paragraphs):
        ctx = f"{title} paragraph {p} opens here. Its answer is number {p}{title}. It closes here."
        qs = [qa(f"{title}-{p}-{k}", f"What is the number of {title} {p} (asked {k})?",
                 [ans(f"{p}{title}", context=ctx)], False if impossible else None) for k in range(questions)]
        qs += [qa(f"{title}-{p}-x{k}", f"Who painted {title} {p} ({k})?", [], True) for k in range(impossible)]
        paragraphs.append({"context": ctx, "qas": qs})
    return {"title": title, "paragraphs": paragraphs}


def write(path, doc, gz: bool = False):
    raw = json.dumps(doc).encode("utf-8")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def build(registry, path, **cfg):
    return registry.build("dataset", {"name": "squad", "path": str(path), **cfg})


def one_paragraph(tmp_path, qas: list[dict], version: str = "1.1"):
    doc = {"version": version, "data": [{"title": "Alphaville", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]}
    return write(tmp_path / "one.json", doc)


def all_items(ds):
    return [it for s in SPLITS for it in ds.selection(s)]


# -- answer span → sentence labels ---------------------------------------------------------------

def test_answer_span_labels_its_sentence(tmp_path, registry):
    path = one_paragraph(tmp_path, [qa("q1", "When was Alphaville founded?", [ans("1900")] * 2),
                                    qa("q2", "What river is Alphaville on?", [ans("the river Tem"), ans("Tem")])])
    ds = build(registry, path)
    items = {it.question: it for it in all_items(ds)}
    first = items["When was Alphaville founded?"]
    assert first.candidates == ["Alphaville is a city on the river Tem.",
                                "It was founded in 1900 by traders from the coast.",
                                "The bridge of 1900 was rebuilt after a flood in 1950."]
    assert first.labels == [0, 1, 0]
    assert items["What river is Alphaville on?"].labels == [1, 0, 0]
    assert isinstance(first, SquadSelectionItem) and not first.unanswerable and first.article == "Alphaville"
    pairs = {p.question: p.answer for s in SPLITS for p in ds.pairs(s)}
    assert pairs["When was Alphaville founded?"] == "It was founded in 1900 by traders from the coast."
    texts = {t for s in SPLITS for t in ds.texts(s)}
    assert set(first.candidates) <= texts and "When was Alphaville founded?" in texts


def test_repeated_answer_text_placed_by_the_other_answers(tmp_path, registry):
    # "1900" given at its first occurrence (sentence 2), but the other annotator's longer answer
    # "The bridge of 1900" says which occurrence was meant
    second = CONTEXT.index("1900", CONTEXT.index("1900") + 1)
    path = one_paragraph(tmp_path, [qa("q", "When was the bridge built?", [ans("The bridge of 1900"), ans("1900")])])
    item = all_items(build(registry, path))[0]
    assert item.labels == [0, 0, 1]
    assert answer_spans(CONTEXT, (("The bridge of 1900", 0), ("1900", 0)))[0][1] == (second, second + 4)


def test_wrong_answer_start_is_located_by_text(tmp_path, registry):
    path = one_paragraph(tmp_path, [qa("q", "When was the flood?", [ans("1950", start=3)])])
    assert all_items(build(registry, path))[0].labels == [0, 0, 1]


def test_span_across_a_sentence_boundary_marks_both_and_is_counted(tmp_path, registry):
    path = one_paragraph(tmp_path, [qa("q", "What is on the river?", [ans("river Tem. It was founded")])])
    ds = build(registry, path)
    assert all_items(ds)[0].labels == [1, 1, 0]
    assert ds.info["spans_crossing_sentences"] == 1 and ds.info["questions_with_crossing_span"] == 1
    assert ds.info["answer_spans"] == 1


def test_answer_not_in_context_drops_the_question(tmp_path, registry):
    path = one_paragraph(tmp_path, [qa("q1", "Who?", [ans("nobody at all", start=0)]),
                                    qa("q2", "When was the flood?", [ans("1950")])])
    ds = build(registry, path)
    assert [it.question for it in all_items(ds)] == ["When was the flood?"]
    assert ds.info["answers_not_in_context"] == 1 and ds.info["questions_dropped_no_answer_found"] == 1


# -- split by article ----------------------------------------------------------------------------

def test_no_article_or_paragraph_in_two_splits(tmp_path, registry):
    doc = {"version": "1.1", "data": [article(f"A{i:02d}", n_paragraphs=1 + i % 3) for i in range(30)]}
    ds = build(registry, write(tmp_path / "many.json", doc), seed=0, val_fraction=0.2, test_fraction=0.2)
    arts = {s: {it.article for it in ds.selection(s)} for s in SPLITS}
    paras = {s: {tuple(it.candidates) for it in ds.selection(s)} for s in SPLITS}
    groups = {s: {p.group for p in ds.pairs(s)} for s in SPLITS}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert arts[a] and arts[b] and not arts[a] & arts[b]
        assert not paras[a] & paras[b]
        assert not groups[a] & groups[b]
    total = sum(ds.questions().values())
    assert total == sum(3 * (1 + i % 3) for i in range(30))
    assert ds.questions()["test"] >= 0.2 * total and ds.questions()["val"] >= 0.2 * total
    again = build(registry, write(tmp_path / "many.json", doc), seed=0, val_fraction=0.2, test_fraction=0.2)
    assert [it.question for it in again.selection("test")] == [it.question for it in ds.selection("test")]


def test_max_train_questions_keeps_val_and_test(tmp_path, registry):
    doc = {"version": "1.1", "data": [article(f"A{i:02d}", n_paragraphs=3) for i in range(20)]}
    path = write(tmp_path / "many.json", doc)
    full = build(registry, path, seed=1)
    small = build(registry, path, seed=1, max_train_questions=10)
    assert small.questions()["train"] == 10
    for s in ("val", "test"):
        assert [it.question for it in small.selection(s)] == [it.question for it in full.selection(s)]


# -- v2.0 unanswerable ---------------------------------------------------------------------------

def test_v2_unanswerable_kept_without_positive_and_marked(tmp_path, registry):
    doc = {"version": "v2.0", "data": [article(f"B{i}", questions=2, impossible=1) for i in range(6)]}
    path = write(tmp_path / "v2.json", doc)
    ds = build(registry, path, val_fraction=0.2, test_fraction=0.2)
    items = all_items(ds)
    impossible = [it for it in items if it.unanswerable]
    assert len(impossible) == 6 * 2 and len(items) == 6 * 2 * 3
    assert all(not any(it.labels) and len(it.labels) == len(it.candidates) == 3 for it in impossible)
    assert all(any(it.labels) for it in items if not it.unanswerable)
    pair_questions = {p.question for s in SPLITS for p in ds.pairs(s)}
    assert not pair_questions & {it.question for it in impossible}
    assert sum(ds.info["unanswerable"].values()) == 12
    dropped = build(registry, path, val_fraction=0.2, test_fraction=0.2, unanswerable=False)
    assert not any(it.unanswerable for it in all_items(dropped)) and len(all_items(dropped)) == 24


# -- gzip and damaged files ------------------------------------------------------------------------

def test_gzip_reads_like_plain(tmp_path, registry):
    doc = {"version": "1.1", "data": [article(f"C{i}") for i in range(8)]}
    plain = build(registry, write(tmp_path / "s.json", doc))
    gz = build(registry, write(tmp_path / "s.json.gz", doc, gz=True))
    for s in SPLITS:
        assert [(it.question, it.candidates, it.labels) for it in gz.selection(s)] == \
               [(it.question, it.candidates, it.labels) for it in plain.selection(s)]


def _damaged(tmp_path, kind: str):
    good = json.dumps({"version": "1.1", "data": [article("D")]}).encode()
    path = tmp_path / ("bad.json.gz" if kind == "gzip" else "bad.json")
    if kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "gzip":
        path.write_bytes(gzip.compress(good)[:-20])
    elif kind == "layout":
        path.write_text(json.dumps({"version": "1.1", "data": [{"title": "D", "paragraphs": [{"qas": []}]}]}))
    elif kind == "not-squad":
        path.write_text(json.dumps([{"question": "q", "answer": "a"}]))
    elif kind == "empty":
        path.write_text("")
    elif kind == "flag":
        doc = article("D")
        doc["paragraphs"][1]["qas"][2]["is_impossible"] = "no"
        path.write_text(json.dumps({"version": "2.0", "data": [doc]}))
    elif kind == "offset":
        doc = article("D")
        doc["paragraphs"][0]["qas"][1]["answers"][0]["answer_start"] = "12"
        path.write_text(json.dumps({"version": "1.1", "data": [doc]}))
    return path


@pytest.mark.parametrize("kind,message", [
    ("truncated", "invalid JSON at line 1"),
    ("gzip", "damaged gzip file"),
    ("layout", r"data\[0\]\.paragraphs\[0\]: missing 'context'"),
    ("not-squad", "top level: expected an object"),
    ("empty", "file is empty"),
    ("flag", r"data\[0\]\.paragraphs\[1\]\.qas\[2\]\.is_impossible: expected true or false, got 'no'"),
    ("offset", r"qas\[1\]\.answers\[0\]\.answer_start: expected int, got str"),
])
def test_damaged_file_one_line_naming_it(tmp_path, registry, kind, message):
    path = _damaged(tmp_path, kind)
    with pytest.raises(DataError, match=message) as exc:
        build(registry, path)
    assert str(exc.value).startswith(f"{path}: ") and "\n" not in str(exc.value)


def test_missing_file(tmp_path, registry):
    with pytest.raises(DataError, match="no such file"):
        build(registry, tmp_path / "nope.json")


def test_cli_exit_2_on_damaged_file(tmp_path, capsys):
    path = _damaged(tmp_path, "truncated")
    cfg = tmp_path / "squad.yaml"
    cfg.write_text(f"data: {{name: squad, path: '{path}'}}\nencoder: {{name: hashing, dim: 64}}\n"
                   "reshaper: {name: flat, channels: 1}\ncore: {name: identity}\ndecoder: {name: nearest}\n"
                   "training: {name: retrieval}\n")
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{path}: invalid JSON") and "\n" not in err


# -- the bundled dev sets ----------------------------------------------------------------------------

def test_bundled_v11_dev_counts():
    version, paragraphs = load_squad("dev-v1.1")
    assert version == "1.1"
    assert len({p.article for p in paragraphs}) == 48
    assert len(paragraphs) == 2067
    assert sum(len(p.questions) for p in paragraphs) == 10570
    assert resolve_path("dev-v1.1").name == "dev-v1.1.json.gz"


def test_bundled_v20_dev_counts():
    version, paragraphs = load_squad("dev-v2.0")
    qs = [q for p in paragraphs for q in p.questions]
    assert (version, len({p.article for p in paragraphs}), len(qs)) == ("2.0", 35, 11873)
    assert sum(q.impossible for q in qs) == 5945


def test_bundled_files_have_licence_and_provenance():
    folder = resolve_path("dev-v1.1").parent
    assert "CC BY-SA 4.0" in (folder / "LICENSE").read_text() or "Attribution-ShareAlike 4.0" in \
        (folder / "LICENSE").read_text()
    readme = (folder / "README.md").read_text()
    assert "first occurrence" in readme and "plausible_answers" in readme


class TestSquadContract(DatasetContract):
    # the bundled v1.1 dev, cut to a few articles so that sentence splitting stays fast
    name = "squad"
    config = {"max_pairs": 400}
