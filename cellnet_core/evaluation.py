"""``cellnet eval``: how well a run maps questions to answers, beside baselines computed in the
same command on the same split.

Ranking protocol: for each held-out question, its predicted embedding is compared by cosine with
the embeddings of every candidate answer (the split's unique answers, or all answers); the rank of
the true answer gives recall@1, recall@10 and MRR; ``cosine`` is the mean cosine between the
prediction and the true answer's embedding. Baselines come from the ``cellnet_eval_baselines`` hook.

Answer text (``text=True``): the run answers each held-out question through its decoder, as
``cellnet ask`` does, and each baseline's predicted embedding is decoded by the same decoder; the
texts are scored against the reference answers by :mod:`cellnet_core.text_metrics` (BLEU, ROUGE-L,
token F1, exact match) and by the re-embedding cosine: the cosine between the run's teacher
embeddings of the decoded text and of the reference (through the pipeline's embedding cache).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from cellnet_core import metrics as M
from cellnet_core import text_metrics as T


class Baseline:
    """A question-embedding → answer-embedding map fitted on the training split."""

    name = "baseline"
    description = ""

    def fit(self, train_q, train_a, pipeline: Any) -> None:  # pragma: no cover - interface
        """Learn from training question embeddings ``train_q [N, D]`` and answers ``train_a [N,
        D']``."""
        pass

    def predict(self, q):  # pragma: no cover - interface
        """Predicted answer embeddings ``[B, D']`` for question embeddings ``q [B, D]``."""
        raise NotImplementedError


class IdentityBaseline(Baseline):
    """Predicts the question's own embedding (what an untrained lattice returns)."""

    name, description = "identity", "the question's own embedding"

    def predict(self, q):
        """Returns ``q`` unchanged."""
        return q


class MeanBaseline(Baseline):
    """Predicts the mean training answer embedding for every question."""

    name, description = "mean", "the mean training answer embedding, for every question"

    def fit(self, train_q, train_a, pipeline=None):
        """Store the mean of ``train_a``."""
        self.mu = train_a.float().mean(0, keepdim=True)

    def predict(self, q):
        """The mean training answer, repeated for each row of ``q``."""
        return self.mu.expand(q.shape[0], -1)


class RidgeBaseline(Baseline):
    """Closed-form ridge regression ``a ≈ [q, 1] W``; the penalty is picked on a held-out tenth of
    the training pairs."""

    name, description = "ridge", "ridge regression q → a (penalty chosen on a training hold-out)"

    def fit(self, train_q, train_a, pipeline=None):
        """Choose the penalty among 0.01 … 100 by cosine on a seeded tenth of the pairs, then solve
        on all of them."""
        import torch

        q, a = train_q.double(), train_a.double()
        n = q.shape[0]
        g = torch.Generator().manual_seed(0)
        perm = torch.randperm(n, generator=g)
        hold = perm[: max(1, n // 10)]
        keep = perm[max(1, n // 10):] if n > 10 else perm
        best = (None, -1.0)
        for lam in (0.01, 0.1, 1.0, 10.0, 100.0):
            w = self._solve(q[keep], a[keep], lam)
            score = M.cosine(self._apply(q[hold], w), a[hold]).mean().item()
            if score > best[1]:
                best = (lam, score)
        self.lam = best[0]
        self.w = self._solve(q, a, self.lam)

    @staticmethod
    def _solve(q, a, lam):
        import torch

        x = torch.cat([q, torch.ones(q.shape[0], 1, dtype=q.dtype)], 1)
        reg = lam * torch.eye(x.shape[1], dtype=q.dtype)
        reg[-1, -1] = 0
        return torch.linalg.solve(x.T @ x + reg, x.T @ a)

    @staticmethod
    def _apply(q, w):
        import torch

        return torch.cat([q, torch.ones(q.shape[0], 1, dtype=q.dtype)], 1) @ w

    def predict(self, q):
        """``[q, 1] W`` for ``q [B, D]``."""
        return self._apply(q.double(), self.w).float()


@dataclass
class EvalRow:
    """Metrics of one predictor (the run or a baseline) on the test questions; ``ranks`` keeps each
    question's rank."""

    name: str
    recall_at_1: float
    recall_at_10: float
    mrr: float
    cosine: float
    extra: dict[str, float] = field(default_factory=dict)
    ranks: list[int] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """The row as printed and written in JSON: name, recall@1, recall@10, mrr, cosine and
        extras."""
        return {"name": self.name, "recall@1": self.recall_at_1, "recall@10": self.recall_at_10,
                "mrr": self.mrr, "cosine": self.cosine, **self.extra}


def rank_metrics(name: str, pred, cand, targets: Sequence[int], true_a) -> EvalRow:
    """Rank every candidate answer ``cand [N, D]`` by cosine to each prediction ``pred [B, D]``;
    ``targets`` are the true answers' rows."""
    import torch

    pred = torch.nn.functional.normalize(pred.float(), dim=-1)
    cand = torch.nn.functional.normalize(cand.float(), dim=-1)
    ranks = M.ranks_of_targets(pred @ cand.T, targets)
    return EvalRow(name, M.recall_at_k(ranks, 1), M.recall_at_k(ranks, 10), M.mrr(ranks),
                   float(M.cosine(pred, true_a).mean()), ranks=list(ranks))


def predict_run(pipeline, q, batch: int = 256):
    """The run's predicted answer embeddings for question embeddings ``q [B, D]``, in batches,
    without gradients."""
    import torch

    pipeline.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, q.shape[0], batch):
            outs.append(pipeline.think(q[i:i + batch]).detach().cpu())
    return torch.cat(outs) if outs else q[:0]


def run_answers(pipeline, questions: Sequence[str], k: int = 5, batch: int = 64) -> list[Any]:
    """The run's :class:`~cellnet_core.pipeline.Answer` for each question (text, score, top ``k``
    candidates), decoded as ``cellnet ask`` decodes them, in batches with a progress bar."""
    from cellnet_core.run import progress

    out: list[Any] = []
    starts = range(0, len(questions), batch)
    for i in progress(starts, log_every=30, desc="decoding answers", unit="batch", total=len(starts)):
        out.extend(pipeline.answer(list(questions[i:i + batch]), k=k))
    return out


def decode_predictions(pipeline, pred, batch: int = 256) -> list[str]:
    """Texts of predicted answer embeddings ``pred [B, D']`` through the run's decoder (``""``
    where the decoder abstains)."""
    texts: list[str] = []
    for i in range(0, pred.shape[0], batch):
        texts.extend(pipeline.decode(pred[i:i + batch].float()))
    return texts


def reembed_cosines(pipeline, answers: Sequence[str], references: Sequence[str]) -> list[float | None]:
    """Cosine between the run teacher's embeddings of each answer and its reference (``None`` for
    an abstention). Each distinct text is encoded once, through the pipeline's embedding cache."""
    import torch

    texts = list(dict.fromkeys([a for a in answers if not T.is_abstention(a)] + list(references)))
    if not texts:
        return [None] * len(answers)
    emb = torch.nn.functional.normalize(pipeline.encode(texts).float().cpu(), dim=-1)
    row = {t: i for i, t in enumerate(texts)}
    return [None if T.is_abstention(a) else float(emb[row[a]] @ emb[row[r]]) for a, r in zip(answers, references)]


def text_info(pipeline) -> dict[str, Any]:
    """What decoded the answers: the decoder's name and, where it has one, its ``min_score``."""
    config = getattr(pipeline, "config", None)
    info: dict[str, Any] = {"decoder": getattr(getattr(config, "decoder", None), "name", type(pipeline.decoder).__name__)}
    limit = getattr(getattr(pipeline.decoder, "cfg", None), "min_score", None)
    if limit is not None:
        info["min_score"] = limit
    return info


def question_row(pair, answer: str, scores: dict[str, float], **extra: Any) -> dict[str, Any]:
    """One row of ``cellnet eval --dump``: ``question``, ``reference``, ``answer``, ``abstained``,
    ``scores`` (:data:`cellnet_core.text_metrics.QUESTION_KEYS`) and whatever ``extra`` adds
    (``answer_score``, ``rank``, ``candidates``, ``baselines``)."""
    return {"question": pair.question, "reference": pair.answer, "answer": answer,
            "abstained": T.is_abstention(answer), "scores": scores, **extra}


def text_rows(pipeline, test_pairs, predictions: dict[str, Any], ranks: dict[str, Sequence[int]] | None = None,
              k: int = 5) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Decode and score the answer text of the run and of each baseline.

    ``predictions``: predicted answer embeddings by row name, ``"run"`` first; the run's answers
    come from :func:`run_answers`, each baseline's from :func:`decode_predictions` (a baseline
    whose embeddings do not have the run's output size cannot be decoded: its ``scores`` are
    ``None`` and ``note`` says why). Returns ``(summaries, per_question)``: per row name
    ``{"scores": summary or None, "note"?}`` (summary as :func:`cellnet_core.text_metrics.score_answers`),
    and one :func:`question_row` per pair with the run's top-``k`` candidates, its embedding
    ``rank`` (from ``ranks``) and ``baselines``: each baseline's answer, scores and rank.
    """
    test_pairs = list(test_pairs)
    questions = [p.question for p in test_pairs]
    refs = [p.answer for p in test_pairs]
    ranks = ranks or {}
    run = run_answers(pipeline, questions, k=k)
    texts = {"run": [a.text for a in run]}
    summaries: dict[str, dict[str, Any]] = {}
    width = predictions["run"].shape[-1]
    for name, pred in predictions.items():
        if name == "run":
            continue
        if pred.shape[-1] != width:
            summaries[name] = {"scores": None, "note": f"predicts {pred.shape[-1]}-dim embeddings; the run's "
                                                       f"decoder reads {width}: no text"}
            continue
        texts[name] = decode_predictions(pipeline, pred)
    per_name: dict[str, list[dict[str, float]]] = {}
    for name, answers in texts.items():
        summary, rows = T.score_answers(answers, refs, reembed_cosines(pipeline, answers, refs))
        summaries[name] = {"scores": summary}
        per_name[name] = rows
    per_question = []
    for j, (pair, ans) in enumerate(zip(test_pairs, run)):
        extra: dict[str, Any] = {"answer_score": float(ans.score)}
        if "run" in ranks:
            extra["rank"] = int(ranks["run"][j])
        extra["candidates"] = [{"text": c["text"], "score": float(c["score"])} for c in ans.candidates[:k]]
        base = {}
        for name in predictions:
            if name == "run" or name not in texts:
                continue
            base[name] = {"answer": texts[name][j], "abstained": T.is_abstention(texts[name][j]),
                          "scores": per_name[name][j]}
            if name in ranks:
                base[name]["rank"] = int(ranks[name][j])
        extra["baselines"] = base
        per_question.append(question_row(pair, ans.text, per_name["run"][j], **extra))
    return {name: summaries[name] for name in predictions}, per_question


def compare_to_baselines(rows: Sequence[EvalRow], resamples: int = 2000) -> list[dict[str, Any]]:
    """Run − baseline MRR per baseline with a paired-bootstrap 95% interval over the test questions:
    whether the run's lead (or loss) is more than the noise of a small test set."""
    run = [1.0 / k for k in rows[0].ranks]
    out = []
    for r in rows[1:]:
        bs = M.paired_bootstrap(run, [1.0 / k for k in r.ranks], resamples=resamples)
        out.append({"baseline": r.name, "mrr_diff": bs["diff"], "ci95": [bs["lo"], bs["hi"]],
                    "verdict": M.bootstrap_verdict(bs)})
    return out


def compare_text(per_question: Sequence[dict[str, Any]], metric: str = "token_f1",
                 resamples: int = 2000) -> list[dict[str, Any]]:
    """Run − baseline mean ``metric`` (a per-question text score) for each baseline with answers in
    ``per_question`` (:func:`text_rows`' rows), with a paired-bootstrap 95% interval over the
    questions and its verdict, as :func:`compare_to_baselines` does for MRR (``same`` only when the two
    means are equal)."""
    if not per_question:
        return []
    run = [r["scores"][metric] for r in per_question]
    out = []
    for name in per_question[0].get("baselines", {}):
        other = [r["baselines"][name]["scores"][metric] for r in per_question]
        bs = M.paired_bootstrap(run, other, resamples=resamples)
        # "same" only for equal scores: text scores move in steps far coarser than float noise
        out.append({"baseline": name, "metric": metric, f"{metric}_diff": bs["diff"], "ci95": [bs["lo"], bs["hi"]],
                    "verdict": M.bootstrap_verdict(bs, min_effect=1e-12)})
    return out


def evaluate_pairs(pipeline, train_pairs, test_pairs, baselines: Sequence[Baseline] = (),
                   candidate_pool: Sequence[str] | None = None, max_questions: int = 2000,
                   return_ranks: bool = False, text: bool = False, k: int = 5) -> dict[str, Any]:
    """Metrics of the run and each baseline on ``test_pairs``.

    With ``return_ranks`` the result also holds ``ranks``: per row name, the 1-based rank of each test
    question's true answer (for paired significance tests, :func:`cellnet_core.metrics.paired_bootstrap`).

    With ``text`` every row also gets ``text``: the scores of its decoded answers
    (:func:`text_rows`; ``None`` with a ``text_note`` for a baseline the run's decoder cannot read),
    the result gets ``text`` (the decoder, the seconds the text part took) and ``per_question``: one
    :func:`question_row` per test question, with the top ``k`` candidates of the run's decoder."""
    test_pairs = list(test_pairs)[:max_questions]
    if not test_pairs:
        from cellnet_core.errors import DataError

        raise DataError("evaluation: the held-out split has no pairs")
    answers = list(dict.fromkeys(candidate_pool if candidate_pool is not None else [p.answer for p in test_pairs]))
    index = {a: i for i, a in enumerate(answers)}
    for p in test_pairs:
        if p.answer not in index:
            index[p.answer] = len(answers)
            answers.append(p.answer)
    q = pipeline.encode([p.question for p in test_pairs])
    cand = pipeline.encode(answers)
    targets = [index[p.answer] for p in test_pairs]
    true_a = cand[targets]
    t0 = time.perf_counter()
    preds = {"run": predict_run(pipeline, q)}
    rows = [rank_metrics("run", preds["run"], cand, targets, true_a)]
    rows[0].extra["seconds"] = time.perf_counter() - t0
    if baselines:
        train_pairs = list(train_pairs)
        tq = pipeline.encode([p.question for p in train_pairs])
        ta = pipeline.encode([p.answer for p in train_pairs])
        for b in baselines:
            t0 = time.perf_counter()
            b.fit(tq, ta, pipeline)
            preds[b.name] = b.predict(q).detach().cpu()
            row = rank_metrics(b.name, preds[b.name], cand, targets, true_a)
            row.extra["seconds"] = time.perf_counter() - t0
            rows.append(row)
    out = {"questions": len(test_pairs), "candidates": len(answers), "rows": [r.as_dict() for r in rows]}
    if len(rows) > 1:
        out["compare"] = compare_to_baselines(rows)
    if text:
        t0 = time.perf_counter()
        ranks = {r.name: r.ranks for r in rows}
        summaries, per_question = text_rows(pipeline, test_pairs, preds, ranks=ranks, k=k)
        for row in out["rows"]:
            summary = summaries[row["name"]]
            row["text"] = summary["scores"]
            if summary.get("note"):
                row["text_note"] = summary["note"]
        out["text"] = {**text_info(pipeline), "seconds": round(time.perf_counter() - t0, 2)}
        compare = compare_text(per_question)
        if compare:
            out["text"]["compare"] = compare
        out["per_question"] = per_question
    if return_ranks:
        out["ranks"] = {r.name: r.ranks for r in rows}
    return out


def evaluate_selection(pipeline, items, baselines: Sequence[Baseline] = (), train_pairs=()) -> dict[str, Any]:
    """MAP and MRR over answer-selection items (a question, candidates, 0/1 labels)."""
    import torch

    items = list(items)
    if not items:
        from cellnet_core.errors import DataError

        raise DataError("evaluation: no answer-selection items")
    q = pipeline.encode([it.question for it in items])
    pair_run = bool(getattr(pipeline, "scores_pairs", False))
    # a pair-scoring run ranks each candidate by its own score; any other run by cosine to think(q)
    predictors = {} if pair_run else {"run": predict_run(pipeline, q)}
    if baselines and train_pairs:
        tq = pipeline.encode([p.question for p in train_pairs])
        ta = pipeline.encode([p.answer for p in train_pairs])
        for b in baselines:
            b.fit(tq, ta, pipeline)
            predictors[b.name] = b.predict(q).detach().cpu()
    elif baselines:
        predictors["identity"] = q
    rows = []
    if pair_run:
        import torch

        flat_q = [it.question for it in items for _ in it.candidates]
        flat_c = [c for it in items for c in it.candidates]
        pipeline.eval()
        with torch.no_grad():
            flat = pipeline.score_pairs(flat_q, flat_c).float().cpu().tolist()
        scored, at = [], 0
        for it in items:
            scored.append((flat[at:at + len(it.candidates)], it.labels))
            at += len(it.candidates)
        rows.append({"name": "run", "map": M.mean_average_precision(scored), "mrr": M.selection_mrr(scored)})
        aps = {"run": [M.average_precision(s, l) for s, l in scored if any(l)]}
        if not baselines:
            predictors = {}
        elif "identity" not in predictors:
            predictors["identity"] = q
    else:
        aps = {}
    for name, pred in predictors.items():
        scored = []
        for i, it in enumerate(items):
            c = pipeline.encode(it.candidates)
            s = torch.nn.functional.cosine_similarity(pred[i:i + 1].float(), c.float(), dim=-1).tolist()
            scored.append((s, it.labels))
        rows.append({"name": name, "map": M.mean_average_precision(scored), "mrr": M.selection_mrr(scored)})
        aps[name] = [M.average_precision(s, l) for s, l in scored if any(l)]
    out: dict[str, Any] = {"questions": len(items), "rows": rows}
    if len(rows) > 1 and aps.get("run"):
        # per-question average precision, paired over the same questions
        out["compare"] = []
        for r in rows[1:]:
            bs = M.paired_bootstrap(aps["run"], aps[r["name"]], resamples=2000)
            out["compare"].append({"baseline": r["name"], "metric": "map", "map_diff": bs["diff"],
                                   "ci95": [bs["lo"], bs["hi"]], "verdict": M.bootstrap_verdict(bs)})
    return out


#: the text columns of :func:`format_table`: (summary key, header)
TEXT_COLUMNS = (("bleu", "bleu"), ("sentence_bleu", "sent-bleu"), ("rouge_l", "rouge-l"), ("token_f1", "token-f1"),
                ("exact_match", "exact"), ("reembed_cosine", "re-embed"), ("abstained", "abstained"))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_table(result: dict[str, Any]) -> str:
    """The evaluation result as a text table, with the paired-bootstrap comparisons under it and,
    when the result has answer-text scores, a second table of them with the abstentions."""
    rows = result["rows"]
    if not rows:
        return "(no rows)"
    cols = [c for c, v in rows[0].items() if c not in ("name", "seconds") and _is_number(v)]
    head = f"{'':12s}" + "".join(f"{c:>11s}" for c in cols)
    lines = [head]
    for r in rows:
        lines.append(f"{r['name']:12s}" + "".join(f"{r[c]:11.4f}" for c in cols))
    if result.get("compare"):
        lines.append("")
        metric = result["compare"][0].get("metric", "mrr")
        lines.append(f"run − baseline {metric.upper()}, 95% paired-bootstrap interval over the test questions:")
        for c in result["compare"]:
            lo, hi = c["ci95"]
            lines.append(f"  vs {c['baseline']:10s} {c[metric + '_diff']:+.4f}  [{lo:+.4f}, {hi:+.4f}]  {c['verdict']}")
    lines.extend(format_text_table(result))
    return "\n".join(lines)


def format_text_table(result: dict[str, Any]) -> list[str]:
    """The answer-text part of :func:`format_table` as lines: a one-line note when it was skipped
    for a reason worth saying, nothing when there is none."""
    info = result.get("text")
    if not info:
        return []
    if info.get("skipped"):
        return ["", f"text metrics: {info['skipped']}"]
    limit = f", min_score {info['min_score']:g}" if info.get("min_score") is not None else ""
    lines = ["", f"answer text, decoded by the run's decoder ({info['decoder']}{limit}); BLEU 0–100, the others "
                 f"0–1, an abstention scores 0:",
             f"{'':12s}" + "".join(f"{h:>11s}" for _, h in TEXT_COLUMNS)]
    n = result.get("questions", 0)
    held = []
    for r in result["rows"]:
        t = r.get("text")
        if t is None:
            lines.append(f"{r['name']:12s} ({r.get('text_note', 'no text')})")
            continue
        lines.append(f"{r['name']:12s}" + "".join(
            f"{t[key]:11d}" if key == "abstained" else f"{t[key]:11.4f}" for key, _ in TEXT_COLUMNS))
        if t["abstained"]:
            held.append(f"{r['name']} {t['abstained']}/{n}")
    if held:
        lines.append(f"abstentions (empty answers, scored 0 above): {', '.join(held)}")
    if info.get("compare"):
        metric = info["compare"][0]["metric"]
        lines += ["", f"run − baseline {metric.replace('_', ' ')}, 95% paired-bootstrap interval over the test questions:"]
        for c in info["compare"]:
            lo, hi = c["ci95"]
            lines.append(f"  vs {c['baseline']:10s} {c[metric + '_diff']:+.4f}  [{lo:+.4f}, {hi:+.4f}]  {c['verdict']}")
    return lines
