"""Metrics: embedding similarity, ranking (recall@k, MRR, MAP) and paired bootstrap intervals.

The text metrics (BLEU, ROUGE-L, token F1, exact match) live in :mod:`cellnet_core.text_metrics`;
the ones scripts import from here are re-exported.
"""

from __future__ import annotations

from typing import Any, Sequence

from cellnet_core.text_metrics import corpus_bleu, exact_match, normalize_answer, rouge_l, sentence_bleu, token_f1

__all__ = ["cosine", "ranks_of_targets", "recall_at_k", "mrr", "paired_bootstrap", "bootstrap_verdict", "compare_paired",
           "average_precision", "reciprocal_rank", "mean_average_precision", "selection_mrr", "mean",
           "corpus_bleu", "exact_match", "normalize_answer", "rouge_l", "sentence_bleu", "token_f1"]


def cosine(a, b):
    """Row-wise cosine of two ``[B, D]`` tensors → ``[B]``."""
    import torch

    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


def ranks_of_targets(scores, targets) -> list[int]:
    """1-based rank of ``targets[i]`` in row ``i`` of ``scores [B, N]`` (higher is better).
    Ties count against the target (pessimistic), so a constant predictor gets no credit."""
    import torch

    scores = scores.float()
    tgt = torch.as_tensor(targets, dtype=torch.long)
    target_scores = scores.gather(1, tgt[:, None])
    return ((scores >= target_scores).sum(dim=1)).tolist()


def recall_at_k(ranks: Sequence[int], k: int) -> float:
    """Fraction of 1-based ``ranks`` that are ≤ ``k``."""
    return sum(r <= k for r in ranks) / len(ranks) if ranks else 0.0


def mrr(ranks: Sequence[int]) -> float:
    """Mean reciprocal rank of 1-based ``ranks``."""
    return sum(1.0 / r for r in ranks) / len(ranks) if ranks else 0.0


def paired_bootstrap(a: Sequence[float], b: Sequence[float], resamples: int = 10000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """Paired bootstrap of ``mean(a) - mean(b)`` over items (e.g. per-question reciprocal ranks of two
    models on the same test questions): the difference, its ``level`` confidence interval and the share
    of resamples where ``a`` does not beat ``b`` (a one-sided p-value)."""
    import torch

    if len(a) != len(b) or not len(a):
        raise ValueError(f"paired_bootstrap: need two equally long, non-empty lists (got {len(a)} and {len(b)})")
    d = torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    chunk = max(1, 4_000_000 // len(d))  # bound the index tensor to ~32 MB
    means = torch.cat([d[torch.randint(0, len(d), (min(chunk, resamples - i), len(d)), generator=g)].mean(dim=1)
                       for i in range(0, resamples, chunk)])
    lo, hi = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)).tolist()
    return {"diff": float(d.mean()), "lo": lo, "hi": hi, "p": float((means <= 0).double().mean())}


def bootstrap_verdict(bs: dict[str, float], min_effect: float = 1e-3) -> str:
    """``same`` (|diff| below ``min_effect``: float noise), ``better`` / ``worse`` (the interval
    excludes 0) or ``within noise``, for a :func:`paired_bootstrap` result."""
    if abs(bs["diff"]) < min_effect:
        return "same"
    return "better" if bs["lo"] > 0 else "worse" if bs["hi"] < 0 else "within noise"


def compare_paired(a: Sequence[float], b: Sequence[float], resamples: int = 10000,
                   min_effect: float = 1e-3) -> dict[str, Any]:
    """``{"diff", "lo", "hi", "verdict"}``: :func:`paired_bootstrap` of ``mean(a) - mean(b)`` and its
    :func:`bootstrap_verdict`, the record a benchmark writes for one comparison."""
    bs = paired_bootstrap(a, b, resamples=resamples)
    return {"diff": bs["diff"], "lo": bs["lo"], "hi": bs["hi"], "verdict": bootstrap_verdict(bs, min_effect)}


def average_precision(scores: Sequence[float], labels: Sequence[int]) -> float:
    """AP of one ranked candidate list; ties broken against the positives. 0 if no positive."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], labels[i]))
    hits, total = 0, 0.0
    for pos, i in enumerate(order, start=1):
        if labels[i]:
            hits += 1
            total += hits / pos
    return total / hits if hits else 0.0


def reciprocal_rank(scores: Sequence[float], labels: Sequence[int]) -> float:
    """1 / the position of the first positive label when sorted by score (ties: negatives first); 0
    without one."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], labels[i]))
    for pos, i in enumerate(order, start=1):
        if labels[i]:
            return 1.0 / pos
    return 0.0


def mean_average_precision(items: Sequence[tuple[Sequence[float], Sequence[int]]]) -> float:
    """MAP over questions that have at least one positive candidate."""
    aps = [average_precision(s, l) for s, l in items if any(l)]
    return sum(aps) / len(aps) if aps else 0.0


def selection_mrr(items: Sequence[tuple[Sequence[float], Sequence[int]]]) -> float:
    """Mean :func:`reciprocal_rank` over ``(scores, labels)`` items that have a positive label."""
    rrs = [reciprocal_rank(s, l) for s, l in items if any(l)]
    return sum(rrs) / len(rrs) if rrs else 0.0


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; 0.0 for no values."""
    return sum(values) / len(values) if values else 0.0
