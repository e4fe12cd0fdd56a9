"""SQuAD v1.1 / v2.0 in the official JSON layout (plain or gzip): answer-sentence selection,
question → answer-sentence pairs and sentences, split by article.

``{"version": "1.1", "data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
"answers": [{"text", "answer_start"}], "is_impossible"?}]}]}]}``

Each paragraph is cut into sentences by pysbd (rule-based, maintained; ``clean=False`` so every
sentence is a substring of the paragraph and keeps its character offsets). A sentence is a
positive candidate of a question when it overlaps the character span of one of the question's
answers; a span that crosses a sentence boundary (a splitter error or a multi-sentence answer)
makes every sentence it touches positive, and is counted in ``info["spans_crossing_sentences"]``.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from cellnet_core.errors import DataError, MissingDependencyError
from cellnet_core.interfaces import Pair, SelectionItem

from cellnet_datasets.config import SquadConfig
from cellnet_datasets.splits import (
    SPLITS,
    SelectionDataset,
    check_split,
    clean_pairs,
    split_groups,
    subsample_groups,
    unique_texts,
)

#: dev sets bundled with the package (see data/squad/README.md), by the name ``path`` accepts
BUNDLED = {"dev-v1.1": "dev-v1.1.json.gz", "dev-v2.0": "dev-v2.0.json.gz"}
DATA_DIR = Path(__file__).with_name("data") / "squad"


@dataclass
class SquadSelectionItem(SelectionItem):
    """A :class:`SelectionItem` with its SQuAD provenance. ``unanswerable`` items (v2.0
    ``is_impossible``) have every label 0: an abstention target, skipped by MAP/MRR."""

    unanswerable: bool = False
    id: str = ""
    article: str = ""


@dataclass(frozen=True)
class Question:
    """One SQuAD question: id, text, its answers ``(text, answer_start)`` and whether it is
    unanswerable."""

    id: str
    question: str
    answers: tuple[tuple[str, int], ...]  #: (text, answer_start) as in the file
    impossible: bool


@dataclass(frozen=True)
class Paragraph:
    """One SQuAD paragraph: its article title, context text and questions."""

    article: str
    context: str
    questions: tuple[Question, ...]


def resolve_path(path: str) -> Path:
    """A bundled name (``dev-v1.1``, ``dev-v2.0``) → the packaged file; anything else as given."""
    return DATA_DIR / BUNDLED[path] if path in BUNDLED else Path(path)


# -- reading ------------------------------------------------------------------------------------

def _read_json(path: Path) -> Any:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a SQuAD JSON file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if raw[:2] == b"\x1f\x8b":  # gzip by content, whatever the extension
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: damaged gzip file: {exc}") from None
    try:
        text = raw.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None


def _field(obj: Any, key: str, kind: type | tuple[type, ...], path: Path, where: str) -> Any:
    if not isinstance(obj, dict):
        raise DataError(f"{path}: {where}: expected an object, not the SQuAD layout")
    if key not in obj:
        raise DataError(f"{path}: {where}: missing '{key}' (not the SQuAD layout)")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DataError(f"{path}: {where}.{key}: expected {want}, got {type(value).__name__}")
    return value


@lru_cache(maxsize=4)
def _load(path: Path, mtime_ns: int, size: int) -> tuple[str, tuple[Paragraph, ...]]:
    doc = _read_json(path)
    articles = _field(doc, "data", list, path, "top level")
    version = str(doc.get("version", "")) if isinstance(doc, dict) else ""
    paragraphs: list[Paragraph] = []
    for i, art in enumerate(articles):
        where = f"data[{i}]"
        title = _field(art, "title", str, path, where)
        for j, par in enumerate(_field(art, "paragraphs", list, path, where)):
            pw = f"{where}.paragraphs[{j}]"
            context = _field(par, "context", str, path, pw)
            qs = []
            for k, qa in enumerate(_field(par, "qas", list, path, pw)):
                qw = f"{pw}.qas[{k}]"
                question = _field(qa, "question", str, path, qw)
                qid = str(qa.get("id", f"{title}#{j}#{k}"))
                impossible = qa.get("is_impossible", False)
                if not isinstance(impossible, bool):
                    raise DataError(f"{path}: {qw}.is_impossible: expected true or false, got {impossible!r}")
                answers = []
                for m, ans in enumerate(_field(qa, "answers", list, path, qw)):
                    aw = f"{qw}.answers[{m}]"
                    answers.append((_field(ans, "text", str, path, aw),
                                    _field(ans, "answer_start", int, path, aw)))
                if not answers and not impossible:
                    raise DataError(f"{path}: {qw}: no answers and not marked is_impossible")
                qs.append(Question(qid, question, tuple(answers), impossible))
            paragraphs.append(Paragraph(title, context, tuple(qs)))
    if not paragraphs:
        raise DataError(f"{path}: no paragraphs in 'data'")
    return version, tuple(paragraphs)


def load_squad(path: str | Path) -> tuple[str, tuple[Paragraph, ...]]:
    """``(version, paragraphs)`` of a SQuAD file, in file order; cached per file and mtime.
    Parsing only (no sentence splitting)."""
    p = resolve_path(str(path))
    try:
        st = p.stat()
    except OSError:
        raise DataError(f"{path}: no such file") from None
    return _load(p, st.st_mtime_ns, st.st_size)


# -- sentences and answer spans ----------------------------------------------------------------

@lru_cache(maxsize=1)
def _segmenter():
    try:
        import pysbd
    except ImportError:
        raise MissingDependencyError("dataset 'squad' needs pysbd to split sentences; "
                                     "install it with: pip install pysbd") from None
    return pysbd.Segmenter(language="en", clean=False)


@lru_cache(maxsize=16384)
def sentence_spans(context: str) -> tuple[tuple[int, int], ...]:
    """``(start, end)`` character offsets of the context's sentences (pysbd), whitespace trimmed."""
    spans: list[tuple[int, int]] = []
    cursor = 0
    for seg in _segmenter().segment(context):
        s = seg.strip()
        if not s:
            continue
        i = context.find(s, cursor)
        if i < 0:  # pysbd changed the text: keep the rest of the paragraph as one sentence
            rest = context[cursor:]
            lead = len(rest) - len(rest.lstrip())
            if rest.strip():
                spans.append((cursor + lead, cursor + lead + len(rest.strip())))
            break
        spans.append((i, i + len(s)))
        cursor = i + len(s)
    return tuple(spans)


def _occurrences(context: str, text: str) -> list[int]:
    out, i = [], context.find(text)
    while i >= 0:
        out.append(i)
        i = context.find(text, i + 1)
    return out


def answer_spans(context: str, answers: tuple[tuple[str, int], ...]) -> tuple[list[tuple[int, int]], int]:
    """Character spans of the answers in ``context`` and how many could not be found.

    ``answer_start`` is trusted when the text is there and occurs once. When the text occurs
    several times (the bundled files give the *first* occurrence, not always the annotated one),
    the occurrence overlapping another answer's unambiguous span is taken (``1973`` inside
    ``October 1973``), else the given offset. A text not at its offset is looked up; one that
    is not in the context at all is skipped."""
    found = [_occurrences(context, text.strip()) if text.strip() else [] for text, _ in answers]
    anchors = [(occ[0], occ[0] + len(t.strip())) for (t, _), occ in zip(answers, found) if len(occ) == 1]
    spans, missing = [], 0
    for (text, start), occ in zip(answers, found):
        n = len(text.strip())
        if not occ:
            missing += 1
            continue
        if len(occ) == 1:
            spans.append((occ[0], occ[0] + n))
            continue
        inside = [o for o in occ if any(o < e and a < o + n for a, e in anchors)]
        best = inside[0] if inside else (start if start in occ else occ[0])
        spans.append((best, best + n))
    return spans, missing


def sentences_of_span(sentences: tuple[tuple[int, int], ...], span: tuple[int, int]) -> list[int]:
    """Indices of the sentences that overlap ``span``."""
    a, e = span
    return [i for i, (s, t) in enumerate(sentences) if s < e and a < t]


# -- the dataset --------------------------------------------------------------------------------

class SquadDataset(SelectionDataset):
    """SQuAD as answer selection (:class:`SquadSelectionItem`), pairs and texts, split by article."""

    def selection(self, split: str) -> list[SquadSelectionItem]:
        """The ``split``'s items: question → its paragraph's sentences, label 1 for the sentence(s)
        holding an answer span; v2.0's unanswerable questions have no positive and
        ``unanswerable=True``."""
        return [SquadSelectionItem(it.question, list(it.candidates), list(it.labels), it.unanswerable, it.id,
                                   it.article)
                for it in self._selection[check_split(split)]]

    def questions(self) -> dict[str, int]:
        """Questions per split (answerable and unanswerable; the split's sizes)."""
        return {s: len(self._selection[s]) for s in SPLITS}


def build_squad(cfg: SquadConfig, ctx: Any = None) -> SquadDataset:
    """Factory of the ``squad`` dataset: questions grouped and split by article, optionally
    subsampled."""
    path = resolve_path(cfg.path)
    version, paragraphs = load_squad(cfg.path)
    # one record per question, grouped by article; the split counts questions
    records = [(pi, q) for pi, par in enumerate(paragraphs) for q in par.questions
               if cfg.unanswerable or not q.impossible]
    records = subsample_groups(records, lambda r: paragraphs[r[0]].article, cfg.max_pairs, cfg.seed)
    split = split_groups(records, lambda r: paragraphs[r[0]].article, cfg.seed, cfg.val_fraction,
                         cfg.test_fraction)
    split["train"] = subsample_groups(split["train"], lambda r: str(r[0]), cfg.max_train_questions, cfg.seed)
    stats = {"answer_spans": 0, "spans_crossing_sentences": 0, "questions_with_crossing_span": 0,
             "answers_not_in_context": 0, "questions_dropped_no_answer_found": 0,
             "questions_with_several_positive_sentences": 0, "single_sentence_paragraphs": 0}
    selection: dict[str, list[SquadSelectionItem]] = {s: [] for s in SPLITS}
    pairs: dict[str, list[Pair]] = {s: [] for s in SPLITS}
    texts: dict[str, list[str]] = {s: [] for s in SPLITS}
    seen_paragraphs: set[int] = set()
    for s in SPLITS:
        for pi, q in split[s]:
            par = paragraphs[pi]
            sents = sentence_spans(par.context)
            cands = [par.context[a:e] for a, e in sents]
            if pi not in seen_paragraphs:
                seen_paragraphs.add(pi)
                stats["single_sentence_paragraphs"] += len(sents) == 1
            texts[s].extend(cands)
            texts[s].append(q.question.strip())
            question = q.question.strip()
            if not question or not cands:
                continue
            if q.impossible:
                selection[s].append(SquadSelectionItem(question, cands, [0] * len(cands), True, q.id, par.article))
                continue
            spans, missing = answer_spans(par.context, q.answers)
            stats["answers_not_in_context"] += missing
            votes = [0] * len(cands)
            crossing = False
            for span in spans:
                hit = sentences_of_span(sents, span)
                stats["answer_spans"] += 1
                if len(hit) > 1:
                    stats["spans_crossing_sentences"] += 1
                    crossing = True
                for i in hit:
                    votes[i] += 1
            if not any(votes):
                stats["questions_dropped_no_answer_found"] += 1
                continue
            stats["questions_with_crossing_span"] += crossing
            labels = [int(v > 0) for v in votes]
            stats["questions_with_several_positive_sentences"] += sum(labels) > 1
            selection[s].append(SquadSelectionItem(question, cands, labels, False, q.id, par.article))
            # the pair's answer: the sentence most answers point to (the earliest on a tie)
            best = max(range(len(cands)), key=lambda i: (votes[i], -i))
            pairs[s].append(Pair(question, cands[best], par.article))
    pairs = {s: clean_pairs(pairs[s]) for s in SPLITS}
    texts = {s: unique_texts(texts[s]) for s in SPLITS}
    info = {
        "source": str(path), "version": version, "articles": len({p.article for p in paragraphs}),
        "paragraphs": len(paragraphs), "questions_in_file": sum(len(p.questions) for p in paragraphs),
        "split_articles": {s: len({paragraphs[pi].article for pi, _ in split[s]}) for s in SPLITS},
        "split_questions": {s: len(split[s]) for s in SPLITS},
        "selection_items": {s: len(selection[s]) for s in SPLITS},
        "unanswerable": {s: sum(it.unanswerable for it in selection[s]) for s in SPLITS},
        **stats,
    }
    if not any(selection.values()):
        raise DataError(f"{path}: no usable questions")
    return SquadDataset("squad", pairs, selection=selection, texts=texts, info=info)
