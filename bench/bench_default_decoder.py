"""Which decoder the default pipeline should use, and its confidence threshold, on the validation split.

    .venv/bin/python bench/bench_default_decoder.py [--out docs/results/default_decoder.json] [--time-questions 30]

Trains `configs/default.yaml` once as it was shipped with `decoder: hybrid` (the lattice, then the
phrase bank and the `ret` generator on the training answers), so that both decoders read the same
lattice outputs. Then, on chatterbot's **validation** split (never the test split):

- per decoder (`hybrid`, and its own phrase bank alone = plain `phrasebank`): the cosine between
  the teacher's embedding of the answer and of the reference answer; how often the hybrid's winner
  is a generated text (not among the bank's top-k); fit seconds; seconds per question as
  `cellnet ask` spends them (`Pipeline.answer` on one question, no embedding cache for the
  candidates, so every re-embedding is paid);
- for the phrase bank: every question's score (cosine between the lattice output and the chosen
  answer's embedding) and whether the answer is *good* (its cosine to the reference answer is at
  least `--good`); the threshold that best separates good from bad answers (highest Youden's J,
  see `best_threshold`), with the share answered and the mean cosine of what it answers and holds
  back. A few questions outside the data (`PROBES`) show what such inputs score.

Writes a JSON report and prints it; `--rows-out FILE` also writes every validation question's
answers and scores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]

#: the hybrid decoder as configs/default.yaml shipped it before the default became the phrase bank
HYBRID = "{name: hybrid, bank: {name: phrasebank}, generator: {name: ret, max_seconds: 90}}"
PROBES = ["hi", "🤖🤖🤖", "asdfgh jkl", "what is the capital of France?", "tell me about site safety"]


def best_threshold(scores: list[float], quality: list[float], good_at: float) -> dict[str, float]:
    """The score threshold t that best separates good answers (``quality >= good_at``) from bad
    ones: the highest Youden's J = (good answered / good) − (bad answered / bad), which weighs
    both kinds of mistakes equally however rare good answers are. With what it answers."""
    good = [q >= good_at for q in quality]
    n_good, n_bad = sum(good), len(good) - sum(good)
    best: dict[str, float] | None = None
    for t in sorted(set(round(s, 3) for s in scores)):
        answered = [s >= t for s in scores]
        tp = sum(a and g for a, g in zip(answered, good))
        fp = sum(a and not g for a, g in zip(answered, good))
        j = tp / max(n_good, 1) - fp / max(n_bad, 1)
        kept = [q for a, q in zip(answered, quality) if a]
        held = [q for a, q in zip(answered, quality) if not a]
        row = {"threshold": t, "youden_j": j, "good": n_good, "answered": sum(answered) / len(scores),
               "good_among_answered": tp / max(sum(answered), 1),
               "cosine_answered": sum(kept) / len(kept) if kept else float("nan"),
               "cosine_held_back": sum(held) / len(held) if held else float("nan")}
        if best is None or j > best["youden_j"] + 1e-12:
            best = row
    return best or {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    ap.add_argument("--set", action="append", default=[], help="config overrides, as for cellnet train")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "default_decoder.json"))
    ap.add_argument("--time-questions", type=int, default=30, help="validation questions timed one at a time")
    ap.add_argument("--good", type=float, nargs="+", default=[0.4, 0.5],
                    help="an answer is good at this cosine to the reference (one threshold per value)")
    ap.add_argument("--run-dir", default=None, help="where the training run writes (default: a temporary folder)")
    ap.add_argument("--rows-out", default=None, help="also write every validation question's answers and scores "
                                                     "(JSON) to this file")
    ap.add_argument("--quick", action="store_true", help="2 training epochs, 5 timed questions (a smoke run)")
    args = ap.parse_args(argv)
    if args.quick:
        args.set = [*args.set, "training.epochs=2"]
        args.time_questions = min(args.time_questions, 5)

    import tempfile

    from cellnet_core.cache import CachedEncoder
    from cellnet_core.config import load_config
    from cellnet_core.pipeline import Pipeline
    from cellnet_core.plugins import load
    from cellnet_core.run import RunContext

    pm, registry = load()
    config = load_config(registry, args.config, [f"decoder={HYBRID}", *args.set])
    data = registry.build("dataset", config.data, None)
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="cellnet-default-decoder-"))
    pipe = Pipeline.build(config, registry)
    strategy = registry.build("strategy", config.training, None)
    t0 = time.perf_counter()
    result = strategy.fit(pipe, data, RunContext(run_dir, seed=config.seed, hook=pm.hook))
    train_s = time.perf_counter() - t0
    hyb = pipe.decoder
    bank = hyb.bank
    gen_info = getattr(hyb.generator, "history", [])

    # the bank's and the generator's fit times, measured apart
    answers = list(dict.fromkeys(p.answer for p in data.pairs("train")))
    a_emb = pipe.encode(answers)
    t = time.perf_counter()
    bank.fit(answers, a_emb)
    bank_fit_s = time.perf_counter() - t
    decoder_s = float(result.metrics.get("decoder_seconds", float("nan")))

    val = list(data.pairs("val"))
    questions = [p.question for p in val]
    with torch.no_grad():
        out = pipe.think(pipe.encode(questions)).detach().cpu()
    ref = F.normalize(pipe.encode([p.answer for p in val]).float(), dim=-1)

    def cos_to_ref(texts: list[str]) -> list[float]:
        vec = F.normalize(pipe.encode([t or " " for t in texts]).float(), dim=-1)
        return [float(c) if t else float("nan") for c, t in zip((vec * ref).sum(-1), texts)]

    # quality, batched
    bank_rows = bank.candidates(out, hyb.cfg.k)
    bank_answer = [r[0].text if r else "" for r in bank_rows]
    bank_score = [float(r[0].score) if r else 0.0 for r in bank_rows]
    hyb_rows = hyb.candidates(out, 1)
    hyb_answer = [r[0].text if r else "" for r in hyb_rows]
    generated_won = [a not in {c.text for c in b} for a, b in zip(hyb_answer, bank_rows)]
    bank_cos, hyb_cos = cos_to_ref(bank_answer), cos_to_ref(hyb_answer)

    # seconds per question, as `cellnet ask` spends them: one question at a time, candidates not cached
    n_time = min(args.time_questions, len(questions))
    cold = CachedEncoder(getattr(pipe.encoder, "inner", pipe.encoder), enabled=False)
    seconds = {}
    for name, dec in (("phrasebank", bank), ("hybrid", hyb)):
        pipe.decoder = dec
        saved_encoder, hyb.encoder = hyb.encoder, cold
        if hasattr(bank, "clear_cache"):
            bank.clear_cache()
        t = time.perf_counter()
        for q in questions[:n_time]:
            pipe.answer([q])
        seconds[name] = (time.perf_counter() - t) / max(n_time, 1)
        hyb.encoder = saved_encoder
    pipe.decoder = hyb

    thresholds = {str(g): best_threshold(bank_score, bank_cos, g) for g in args.good}
    with torch.no_grad():
        probe_out = pipe.think(pipe.encode(PROBES)).detach().cpu()
    probes = [{"question": q, "answer": r[0].text, "score": float(r[0].score)}
              for q, r in zip(PROBES, bank.candidates(probe_out, 1))]

    def mean(xs: list[float]) -> float:
        xs = [x for x in xs if x == x]
        return sum(xs) / len(xs) if xs else float("nan")

    report = {
        "command": "python bench/bench_default_decoder.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "config": os.path.relpath(args.config, ROOT), "validation_questions": len(val), "good_at": args.good,
        "train_seconds": train_s, "decoder_fit_seconds_hybrid": decoder_s, "decoder_fit_seconds_phrasebank": bank_fit_s,
        "generator_epochs": len(gen_info),
        "cosine_to_reference": {"phrasebank": mean(bank_cos), "hybrid": mean(hyb_cos)},
        "hybrid_generated_wins": sum(generated_won), "seconds_per_question": seconds, "timed_questions": n_time,
        "thresholds": thresholds,
        "score_min_median_max": [min(bank_score), sorted(bank_score)[len(bank_score) // 2], max(bank_score)],
        "lattice_metrics": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))},
        "probes": probes,
    }
    rows = {
        "rows": [{"question": q, "reference": p.answer, "phrasebank": b, "score": s, "cos_phrasebank": bc,
                  "hybrid": h, "cos_hybrid": hc, "generated_won": g}
                 for q, p, b, s, bc, h, hc, g in zip(questions, val, bank_answer, bank_score, bank_cos, hyb_answer,
                                                     hyb_cos, generated_won)],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    if args.rows_out:
        Path(args.rows_out).write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
