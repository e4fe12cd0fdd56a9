"""Text metrics of decoded answers against reference answers: BLEU (sacrebleu), ROUGE-L
(rouge-score), token F1 and exact match (SQuAD's normalisation), and the summary that
``cellnet eval`` reports.

Every function here is pure: texts in, numbers out. The re-embedding cosine needs the run's
teacher, so :func:`score_answers` takes those cosines precomputed (``cellnet_core.evaluation``
encodes the texts through the pipeline's embedding cache).

Scales: BLEU is sacrebleu's 0–100; every other score is 0–1.

An *abstention* is an empty answer (after stripping white space): the decoder said it has no
confident match (the phrase bank below its ``min_score``, for example). It scores 0 on every text
metric and is counted apart, so a decoder cannot gain by holding back.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from typing import Any, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ASCII_PUNCT = frozenset(string.punctuation)

#: per-question scores (each 0–1, ``sentence_bleu`` 0–100), in the order they are reported
QUESTION_KEYS = ("sentence_bleu", "rouge_l", "token_f1", "exact_match", "reembed_cosine")
#: the keys of :func:`score_answers`' summary
SUMMARY_KEYS = ("bleu",) + QUESTION_KEYS + ("abstained",)


def _is_punct(ch: str) -> bool:
    return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, punctuation removed (ASCII and Unicode: "don't" →
    "dont", "’" dropped), the articles *a*, *an*, *the* removed, white space collapsed."""
    text = "".join(ch for ch in text.lower() if not _is_punct(ch))
    return " ".join(_ARTICLES.sub(" ", text).split())


def is_abstention(answer: str | None) -> bool:
    """True for an empty answer (``None`` or only white space): the decoder held its answer back."""
    return not (answer or "").strip()


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 after :func:`normalize_answer`: the harmonic mean of the shares of predicted
    and reference tokens that the two have in common (counted with multiplicity). When either side
    has no tokens left, 1.0 if both are empty, else 0.0."""
    p, r = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when both texts are equal after :func:`normalize_answer`, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def sentence_bleu(prediction: str, reference: str) -> float:
    """sacrebleu's sentence BLEU (0–100: exponential smoothing, effective n-gram order, 13a
    tokenisation, case-sensitive) of one prediction against one reference; 0 for an empty
    prediction."""
    import sacrebleu

    if is_abstention(prediction):
        return 0.0
    return float(sacrebleu.sentence_bleu(prediction, [reference]).score)


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus BLEU (0–100) with one reference per prediction: n-gram matches and
    lengths summed over the corpus before the geometric mean (not the mean of sentence BLEUs). An
    empty prediction adds its reference's length and no match."""
    import sacrebleu

    if len(predictions) != len(references):
        raise ValueError(f"corpus_bleu: {len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return 0.0
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


_ROUGE: list[Any] = []


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (rouge-score, no stemming): from the longest common subsequence of the
    two token sequences. rouge-score lower-cases and keeps only ASCII letters and digits as tokens,
    so text in other scripts scores 0 here (token F1 and the re-embedding cosine still see it)."""
    if not _ROUGE:
        from rouge_score import rouge_scorer

        _ROUGE.append(rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False))
    if is_abstention(prediction):
        return 0.0
    return float(_ROUGE[0].score(reference, prediction)["rougeL"].fmeasure)


def question_scores(answer: str, reference: str, reembed_cosine: float | None = None) -> dict[str, float]:
    """Every per-question score of ``answer`` against ``reference`` (:data:`QUESTION_KEYS`). An
    abstention scores 0 on all of them; ``reembed_cosine`` (the cosine between the teacher's
    embeddings of the two texts) is reported as given, 0 when it is ``None``."""
    if is_abstention(answer):
        return {k: 0.0 for k in QUESTION_KEYS}
    return {"sentence_bleu": sentence_bleu(answer, reference), "rouge_l": rouge_l(answer, reference),
            "token_f1": token_f1(answer, reference), "exact_match": exact_match(answer, reference),
            "reembed_cosine": float(reembed_cosine) if reembed_cosine is not None else 0.0}


def score_answers(answers: Sequence[str], references: Sequence[str],
                  reembed_cosines: Sequence[float | None] | None = None) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """Score decoded ``answers`` against ``references`` (one each).

    Returns ``(summary, per_question)``: ``summary`` has corpus ``bleu``, the means over all
    questions of every :data:`QUESTION_KEYS` score (abstentions count as 0) and ``abstained``, the
    number of empty answers; ``per_question`` one :func:`question_scores` dict per answer.
    """
    answers, references = list(answers), list(references)
    if len(answers) != len(references):
        raise ValueError(f"score_answers: {len(answers)} answers for {len(references)} references")
    cos = list(reembed_cosines) if reembed_cosines is not None else [None] * len(answers)
    if len(cos) != len(answers):
        raise ValueError(f"score_answers: {len(cos)} cosines for {len(answers)} answers")
    rows = [question_scores(a, r, c) for a, r, c in zip(answers, references, cos)]
    n = len(rows)
    summary: dict[str, Any] = {"bleu": corpus_bleu([a if not is_abstention(a) else "" for a in answers], references)}
    for k in QUESTION_KEYS:
        summary[k] = sum(r[k] for r in rows) / n if n else 0.0
    summary["abstained"] = sum(is_abstention(a) for a in answers)
    return summary, rows
