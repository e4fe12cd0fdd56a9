"""Autoregressive generation on top of a model's ``prefill``/``step`` interface: greedy,
top-k/top-p/temperature sampling and beam search, with an optional repetition penalty.

All functions take ``emb [B, D]`` and return token id lists without ``<bos>``/``<eos>``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cellnet_generative.models import reorder_cache


@dataclass
class GenerationOptions:
    """Token ids and settings of one generation call: begin/end token, length limit, sampling and
    beam penalties."""

    bos: int
    eos: int
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0


def _penalise(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style repetition penalty: logits of tokens in ``seen [B, V] bool`` are divided by
    ``penalty`` when positive and multiplied when negative."""
    if penalty == 1.0:
        return logits
    pen = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, pen, logits)


def _filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest set whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    return logits


@torch.no_grad()
def generate(model, emb: torch.Tensor, opts: GenerationOptions, sample: bool = False,
             generator: torch.Generator | None = None) -> list[list[int]]:
    """Greedy (``sample=False``) or sampled decoding with the model's incremental cache."""
    b = emb.shape[0]
    start = torch.full((b, 1), opts.bos, dtype=torch.long, device=emb.device)
    logits, cache = model.prefill(emb, start)
    seen = torch.zeros(b, model.vocab, dtype=torch.bool, device=emb.device)
    done = torch.zeros(b, dtype=torch.bool, device=emb.device)
    out: list[torch.Tensor] = []
    for i in range(opts.max_new_tokens):
        logits = _penalise(logits.float(), seen, opts.repetition_penalty)
        if sample:
            logits = _filter(logits / opts.temperature, opts.top_k, opts.top_p)
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
        else:
            nxt = logits.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, opts.eos), nxt)
        out.append(nxt)
        done |= nxt == opts.eos
        seen[torch.arange(b), nxt] = True
        if bool(done.all()) or i == opts.max_new_tokens - 1:
            break
        logits, cache = model.step(nxt, cache)
    ids = torch.stack(out, dim=1).tolist() if out else [[] for _ in range(b)]
    return [row[:row.index(opts.eos)] if opts.eos in row else row for row in ids]


@torch.no_grad()
def beam_search(model, emb: torch.Tensor, opts: GenerationOptions, beams: int) -> list[list[tuple[list[int], float]]]:
    """Batched beam search. Returns, per row, ``beams`` (tokens, score) best first, where score is
    the summed log-probability divided by ``length ** length_penalty`` (length counts ``<eos>``)."""
    b, k = emb.shape[0], beams
    dev = emb.device
    emb_k = emb.repeat_interleave(k, dim=0)
    start = torch.full((b * k, 1), opts.bos, dtype=torch.long, device=dev)
    logits, cache = model.prefill(emb_k, start)
    v = logits.shape[-1]
    scores = torch.full((b, k), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # all beams start identical: keep one
    tokens = torch.zeros(b * k, 0, dtype=torch.long, device=dev)
    done = torch.zeros(b * k, dtype=torch.bool, device=dev)
    lengths = torch.zeros(b * k, device=dev)
    seen = torch.zeros(b * k, v, dtype=torch.bool, device=dev)
    for i in range(opts.max_new_tokens):
        logp = F.log_softmax(_penalise(logits.float(), seen, opts.repetition_penalty), dim=-1)
        # a finished beam can only continue with <eos> at no cost (it stays as it is)
        frozen = torch.full_like(logp, float("-inf"))
        frozen[:, opts.eos] = 0.0
        logp = torch.where(done[:, None], frozen, logp)
        total = (scores.view(-1, 1) + logp).view(b, k * v)
        top, idx = total.topk(k, dim=-1)
        src = (idx // v) + torch.arange(b, device=dev)[:, None] * k  # [B, k] flat beam index
        nxt = (idx % v).view(-1)
        src = src.view(-1)
        scores = top
        tokens = torch.cat([tokens[src], nxt[:, None]], dim=1)
        was_done = done[src]
        lengths = lengths[src] + (~was_done).float()
        done = was_done | (nxt == opts.eos)
        seen = seen[src]
        seen[torch.arange(b * k, device=dev), nxt] = True
        if bool(done.all()) or i == opts.max_new_tokens - 1:
            break
        cache = reorder_cache(cache, src)
        logits, cache = model.step(nxt, cache)
    norm = scores.view(-1) / lengths.clamp(min=1).pow(opts.length_penalty)
    results = []
    for r in range(b):
        rows = []
        for j in range(r * k, r * k + k):
            if not torch.isfinite(scores.view(-1)[j]):
                continue
            seq = tokens[j].tolist()
            seq = seq[:seq.index(opts.eos)] if opts.eos in seq else seq
            rows.append((seq, float(norm[j])))
        rows.sort(key=lambda x: -x[1])
        results.append(rows)
    return results
