"""The hybrid decoder's candidate pool: how much each source of candidates buys → docs/results/hybrid.md.

    .venv/bin/python bench/bench_hybrid.py --generator DIR [--threads 2] [--quick]
    .venv/bin/python bench/bench_hybrid.py                 # trains the default ret first (600 s)

Same data as bench_generative.py (41k training sentences, 300 held-out chitchat turns, held-out
chatterbot answers, real MiniLM embeddings through the disk cache). One trained `ret` generator
(loaded from DIR, e.g. one that `bench_ret_scaling.py --save` wrote, or trained here) and the
phrase bank fitted on the training sentences are combined in `hybrid` pools of growing size: bank
top-k, beams, greedy, and `samples` sampled texts (temperature 0.8, top-p 0.9). Every candidate is
re-embedded with the teacher and the closest to the target wins. Also reported: the *oracle* of
each pool is the winner itself (the hybrid already picks the pool's best re-embedding cosine), so
the table shows directly how far larger pools move the re-embedding cosine and what they cost.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generative import data_and_bank, score  # noqa: E402

POOLS = [  # label, hybrid config overrides
    ("bank top-5 + beams 4 + greedy (default)", {"k": 5, "beams": 4}),
    ("+ 8 samples", {"k": 5, "beams": 4, "samples": 8}),
    ("+ 32 samples", {"k": 5, "beams": 4, "samples": 32}),
    ("bank top-20 + beams 8 + greedy + 32 samples", {"k": 20, "beams": 8, "samples": 32}),
]
SAMPLING = {"temperature": 0.8, "top_p": 0.9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generator", type=Path, default=None, help="a saved ret decoder folder (default: train one)")
    ap.add_argument("--quick", action="store_true", help="tiny data, a 40 s generator (development)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chitchat", type=int, default=None, help="chitchat training turns for the bank (and a "
                    "generator trained here): default 40000 as bench_generative, quick 600; 0: every turn")
    ap.add_argument("--budget", type=float, default=600.0, help="training seconds when no --generator is given")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "hybrid.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    if args.quick:
        args.budget = min(args.budget, 40.0)
    n_chit = args.chitchat if args.chitchat is not None else (600 if args.quick else 40000)
    d = data_and_bank(args.quick, n_chit or 10 ** 9, 100 if args.quick else 300)
    enc, reg, ctx, tests, bank, bank_name = d["enc"], d["reg"], d["ctx"], d["tests"], d["bank"], d["bank_name"]

    gen_cfg = {"name": "ret", "batch_size": 32, "lr": 4e-3, "epochs": 30, "max_seconds": args.budget, **SAMPLING}
    if args.generator:
        import json

        saved = json.loads((args.generator / "decoder.json").read_text(encoding="utf-8"))["config"]
        gen_cfg = {**saved, **SAMPLING}
    gen = reg.build("decoder", gen_cfg, ctx)
    if args.generator:
        gen.load(args.generator)
        source = f"loaded from `{args.generator}` ({gen.num_parameters():,} parameters, {len(gen.history)} epochs)"
    else:
        info = gen.fit(d["train"], d["train_emb"])
        source = f"trained here: {info['parameters']:,} parameters, {info['epochs']} epochs in {info['seconds']:.0f} s"
    print(source, flush=True)

    rows = []
    base = {"ret greedy": gen, f"{bank_name}": bank}
    for label, dec in base.items():
        rows.append((label, None, {t: score(dec.decode(d["test_emb"][t]), refs, d["test_emb"][t], enc)
                                for t, refs in tests.items()}, None))
    # the hybrids re-embed their candidates without the disk cache, so every row's speed includes
    # encoding all of its candidates (a later row would otherwise find an earlier row's texts cached)
    from dataclasses import replace

    from cellnet_core.cache import CachedEncoder

    cold = replace(ctx, encoder=CachedEncoder(getattr(enc, "inner", enc), enabled=False))
    for label, over in POOLS:
        hyb = reg.build("decoder", {"name": "hybrid", "bank": {"name": bank_name}, "generator": gen_cfg, **over}, cold)
        hyb.bank, hyb.generator = bank, gen
        res, pool_sizes, secs, n = {}, [], 0.0, 0
        for t, refs in tests.items():
            emb = d["test_emb"][t]
            pool_sizes += [len(p) for p in hyb.proposals(emb)]
            t0 = time.perf_counter()
            hyps = hyb.decode(emb)
            secs += time.perf_counter() - t0
            n += len(refs)
            res[t] = score(hyps, refs, emb, enc)
        rows.append((f"hybrid: {label}", sum(pool_sizes) / len(pool_sizes), res, n / secs))
        print(rows[-1], flush=True)

    lines = ["## Hybrid decoder: what a larger candidate pool buys", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
             f"torch {torch.__version__}; load average {load_before[0]:.1f} before / {os.getloadavg()[0]:.1f} "
             f"after. Run: `.venv/bin/python bench/bench_hybrid.py{' --quick' if args.quick else ''}"
             f"{' --generator ' + str(args.generator) if args.generator else ''}"
             f"{'' if args.chitchat is None else f' --chitchat {args.chitchat}'} --threads {args.threads}` "
             f"({(time.perf_counter() - t_start) / 60:.0f} min in all).", "",
             f"Data as in the generative benchmark ({len(d['train'])} training sentences; "
             f"{len(tests['chitchat (held out)'])} held-out chitchat turns, "
             f"{len(tests['chatterbot answers (held out)'])} held-out chatterbot answers). Generator `ret` {source}; "
             f"bank `{bank_name}` over the training sentences. Samples: temperature {SAMPLING['temperature']}, "
             f"top-p {SAMPLING['top_p']}, seeded. The hybrid keeps the candidate whose teacher re-embedding is "
             "closest to the target, so its cosine is the best any candidate in the pool reaches. sentences/s: "
             "`decode()` of the hybrid, re-embedding every candidate with the teacher (no disk cache), on "
             f"{torch.get_num_threads()} threads.", "",
             "| decoder | mean pool | chitchat BLEU | chitchat cos | answers BLEU | answers cos | sentences/s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, pool, res, speed in rows:
        c, a = res["chitchat (held out)"], res["chatterbot answers (held out)"]
        lines.append(f"| {label} | {'–' if pool is None else f'{pool:.1f}'} | {c['bleu']:.1f} | {c['cos']:.3f} | {a['bleu']:.1f} | {a['cos']:.3f} | "
                     f"{'' if speed is None else f'{speed:.1f}'} |")
    first, last = rows[2][2]["chitchat (held out)"]["cos"], rows[-1][2]["chitchat (held out)"]["cos"]
    lines += ["", f"Largest pool against the default pool (chitchat, held out): re-embedding cosine "
              f"{first:.3f} → {last:.3f} ({last - first:+.3f}); target for `hybrid`: 0.90."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
