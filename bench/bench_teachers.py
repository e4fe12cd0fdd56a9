"""Benchmark of the teacher encoders.

1. Sentences/s for minilm and smollm2 on real chatterbot and chitchat text, cold (model) and from
   the embedding cache; sentence-transformers' own ``encode`` of the same model folder is the
   reference measured in the same run.
2. minilm's backends — torch, onnx fp32, onnx int8 — on the same real chitchat turns: sentences/s
   cold (interleaved: chunk by chunk, each backend in turn, so the load of a shared machine falls
   on all alike), fidelity against torch fp32 (cosine per sentence), and the retrieval effect:
   identity MRR on chatterbot's test split and MAP on the squad selection test split with each
   backend's embeddings; then a small sweep of ONNX Runtime settings (graph optimisation level,
   threads, batch size, IO binding).

    .venv/bin/python bench/bench_teachers.py [--quick] [--only encoders|backends] [--no-squad]

Writes docs/results/teachers.md.
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "teachers.md"


def chatterbot_texts() -> list[str]:
    import importlib.util

    import yaml

    loc = importlib.util.find_spec("chatterbot_corpus").submodule_search_locations[0]
    texts: list[str] = []
    for path in sorted(glob.glob(os.path.join(loc, "data", "english", "*.yml"))):
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
        for conv in data.get("conversations", []) or []:
            texts += [str(t).strip() for t in conv if str(t).strip()]
    return list(dict.fromkeys(texts))


def chitchat_texts() -> list[str]:
    import chitchat_dataset

    texts: list[str] = []
    for conv in chitchat_dataset.ConversationDataset():
        texts += [t.strip() for t in conv if t.strip()]
    return list(dict.fromkeys(texts))


def load_avg() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def timed_cpu(fn):
    """Wall seconds and this process's CPU seconds (all threads): on a shared machine the CPU time
    shows what the work costs independent of how long it waited for a core."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer texts (a smoke run)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--only", choices=("encoders", "backends"), help="run one part (default: both)")
    ap.add_argument("--no-squad", action="store_true", help="leave the squad selection task out")
    ap.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads (default 2)")
    args = ap.parse_args()
    os.environ.setdefault("CELLNET_QUIET", "1")

    import torch

    from cellnet_core.cache import CachedEncoder
    from cellnet_core.plugins import load

    torch.set_num_threads(args.threads)
    _, registry = load()
    lines: list[str] = []
    if args.only != "backends":
        lines += bench_encoders(args, registry)
    if args.only != "encoders":
        lines += bench_backends(args, registry)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


def bench_encoders(args, registry) -> list[str]:
    import torch

    from cellnet_core.cache import CachedEncoder
    n_minilm, n_smol = (200, 24) if args.quick else (500, 64)
    corpora = {"chatterbot": chatterbot_texts(), "chitchat": chitchat_texts()}
    print({k: len(v) for k, v in corpora.items()}, file=sys.stderr)
    load_before = load_avg()
    rows = []
    for enc_name, n in (("minilm", n_minilm), ("smollm2", n_smol)):
        enc, t_build = timed(lambda: registry.build("encoder", {"name": enc_name}))
        enc.encode(["warm up"])  # first-call allocations are not the steady state
        for corpus, all_texts in corpora.items():
            texts = all_texts[:n]
            with tempfile.TemporaryDirectory() as tmp:
                cold_enc = CachedEncoder(enc, tmp)
                emb, t_cold, cpu_cold = timed_cpu(lambda: cold_enc.encode(texts))
                warm_enc = CachedEncoder(enc, tmp)  # a fresh wrapper reads the shard from disk
                emb2, t_warm = timed(lambda: warm_enc.encode(texts))
                assert warm_enc.calls == 0 and torch.equal(emb, emb2)
            ref = ""
            if enc_name == "minilm":
                from sentence_transformers import SentenceTransformer

                from cellnet_teachers.hf import minilm_path

                st = SentenceTransformer(str(minilm_path()), device="cpu")
                st.encode(["warm up"])
                st_emb, t_st, cpu_st = timed_cpu(lambda: st.encode(texts, batch_size=enc.batch_size,
                                                                   convert_to_tensor=True))
                cos = torch.nn.functional.cosine_similarity(emb, st_emb.float().cpu()).min().item()
                ref = (f"batch {enc.batch_size}: {len(texts) / t_st:.1f}/s wall, {len(texts) / cpu_st:.1f}/CPU-s; ours/ST "
                       f"{t_st / t_cold:.2f}× wall, {cpu_st / cpu_cold:.2f}× CPU; min cos {cos:.5f}")
            rows.append({"encoder": f"{enc_name} ({getattr(enc, 'backend', 'torch')})", "corpus": corpus, "n": len(texts), "build_s": t_build,
                         "cold": len(texts) / t_cold, "cold_cpu": len(texts) / cpu_cold, "cached": len(texts) / t_warm, "ref": ref or "–"})
            print(rows[-1], file=sys.stderr)
    load_after = load_avg()

    lines = [
        "## Teacher encoders (cellnet-teachers)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}; "
        f"{'quick run' if args.quick else 'full run'} of `bench/bench_teachers.py`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"Load average (1/5/15 min) before: {load_before}, after: {load_after} (the benchmark's own threads "
        "count towards it); the ratios in a row are measured back to back.",
        "",
        "Sentences per second. *cold*: the model encodes every text (the embedding cache is empty); "
        "*cached*: a fresh `CachedEncoder` reads the same texts from the on-disk cache. *per CPU-second*: "
        "texts / CPU time of this process (all its threads) — the cost of the work whatever the wait for a core; "
        f"with {torch.get_num_threads()} threads on an idle machine the wall rate approaches "
        f"{torch.get_num_threads()}× this at best. Reference: "
        "sentence-transformers' `encode` of the same model folder, same texts, same process.",
        "",
        "| encoder | corpus | texts | build (s) | cold (wall) | cold (per CPU-second) | cached (wall) | cached / cold | sentence-transformers (reference) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['encoder']} | {r['corpus']} | {r['n']} | {r['build_s']:.1f} | {r['cold']:.1f} | {r['cold_cpu']:.1f} | "
                     f"{r['cached']:.0f} | {r['cached'] / r['cold']:.0f}× | {r['ref']} |")
    cold_minilm = min(r["cold"] for r in rows if r["encoder"].startswith("minilm"))
    lines += [
        "",
        f"Target: minilm ≥ 150 sentences/s cold — {'met' if cold_minilm >= 150 else 'missed'} "
        f"(slowest corpus: {cold_minilm:.0f}/s wall, {min(r['cold_cpu'] for r in rows if r['encoder'].startswith('minilm')):.0f}"
        "/CPU-s).",
        "The reference column is sentence-transformers (PyTorch) on the same folder in the same run: with "
        "minilm's default ONNX Runtime backend ours is the faster of the two; the torch backend, which runs the "
        "same code path as sentence-transformers, is measured against ONNX in the next section.",
        "smollm2 (135M parameters, 576-d, pooled at layer 16) is the slow teacher; its *build* after the "
        "one-time GGUF conversion is a plain safetensors load (the conversion itself is not timed here).",
        "",
    ]
    return lines


BACKENDS = {"torch": {"backend": "torch"}, "onnx fp32": {"backend": "onnx"},
            "onnx int8": {"backend": "onnx", "quantize": "int8"}}
#: throughput targets against torch (same run)
TARGETS = {"onnx fp32": 1.8, "onnx int8": 3.0}
#: int8's identity-MRR change allowed against torch fp32
MRR_TOLERANCE = 0.005


def interleaved_rates(encoders: dict, texts: list[str], chunk: int) -> dict[str, dict]:
    """Encode ``texts`` chunk by chunk with every encoder in turn (the order rotating per chunk),
    straight through the model (no cache): wall and CPU seconds summed per encoder, outputs joined."""
    names = list(encoders)
    wall = {n: 0.0 for n in names}
    cpu = {n: 0.0 for n in names}
    outs: dict[str, list] = {n: [] for n in names}
    for k, at in enumerate(range(0, len(texts), chunk)):
        part = texts[at:at + chunk]
        for n in names[k % len(names):] + names[:k % len(names)]:
            out, w, c = timed_cpu(lambda: encoders[n].encode(part))
            wall[n] += w
            cpu[n] += c
            outs[n].append((at, out))
    import torch

    return {n: {"wall": wall[n], "cpu": cpu[n], "emb": torch.cat([o for _, o in sorted(outs[n], key=lambda x: x[0])])}
            for n in names}


def identity_mrr(encoder, pairs) -> float:
    """Identity MRR: each test question's embedding ranks the test answers by cosine."""
    from cellnet_core.evaluation import rank_metrics

    answers = list(dict.fromkeys(p.answer for p in pairs))
    index = {a: i for i, a in enumerate(answers)}
    q = encoder.encode([p.question for p in pairs])
    cand = encoder.encode(answers)
    targets = [index[p.answer] for p in pairs]
    return rank_metrics("identity", q, cand, targets, cand[targets]).mrr


def selection_map(encoder, items) -> float:
    """MAP of the cosine ranking of each question's own candidates."""
    import torch

    from cellnet_core import metrics as M

    texts = list(dict.fromkeys([it.question for it in items] + [c for it in items for c in it.candidates]))
    emb = dict(zip(texts, encoder.encode(texts)))
    scored = []
    for it in items:
        c = torch.stack([emb[t] for t in it.candidates])
        scored.append((torch.nn.functional.cosine_similarity(emb[it.question][None], c, dim=-1).tolist(), it.labels))
    return M.mean_average_precision(scored)


def onnx_sweep(path: Path, tokenizer, texts: list[str], threads: int, max_length: int) -> list[dict]:
    """Sentences/s of the fp32 export under other ONNX Runtime settings: graph optimisation level,
    threads, batch size, IO binding (same texts, same length sorting, mean pooling)."""
    import numpy as np
    import onnxruntime as ort

    from cellnet_teachers.hf import pool

    import torch

    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]), reverse=True)
    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    configs = [("all", threads, 16, False), ("basic", threads, 16, False), ("extended", threads, 16, False),
               ("all", threads, 8, False), ("all", threads, 32, False), ("all", threads, 64, False),
               ("all", 1, 16, False), ("all", threads, 16, True)]
    rows = []
    for level, n_threads, batch, io_binding in configs:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = levels[level]
        opts.intra_op_num_threads = n_threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

        def run():
            for at in range(0, len(order), batch):
                b = tokenizer.pad({"input_ids": [ids[i] for i in order[at:at + batch]]}, return_tensors="np")
                feed = {"input_ids": b["input_ids"].astype(np.int64), "attention_mask": b["attention_mask"].astype(np.int64)}
                if io_binding:
                    bind = sess.io_binding()
                    for k, v in feed.items():
                        bind.bind_cpu_input(k, v)
                    bind.bind_output("hidden")
                    sess.run_with_iobinding(bind)
                    hidden = bind.copy_outputs_to_cpu()[0]
                else:
                    hidden = sess.run(None, feed)[0]
                pool(torch.from_numpy(hidden), torch.from_numpy(b["attention_mask"]), "mean")

        run()  # first-call allocations
        _, wall, cpu = timed_cpu(run)
        rows.append({"level": level, "threads": n_threads, "batch": batch, "io_binding": io_binding,
                     "wall": len(texts) / wall, "cpu": len(texts) / cpu})
        print(rows[-1], file=sys.stderr)
    return rows


def bench_backends(args, registry) -> list[str]:
    import torch

    from cellnet_core.cache import CachedEncoder

    n = 200 if args.quick else 800
    texts = chitchat_texts()[:n]
    print(f"backends: {len(texts)} chitchat turns, {args.threads} threads", file=sys.stderr)
    load_before = load_avg()
    encoders, build, exported = {}, {}, set()
    for name, extra in BACKENDS.items():
        cfg = {"name": "minilm", **extra}
        if extra["backend"] == "onnx":
            cfg["threads"] = args.threads
        t_start = time.time()
        encoders[name], build[name] = timed(lambda: registry.build("encoder", cfg))
        runner = getattr(encoders[name], "runner", None)
        if runner is not None and (runner.path.parent / "export.json").stat().st_mtime >= t_start:
            exported.add(name)  # this build exported (or quantised) the model first
        encoders[name].encode(["warm up", "a second, longer sentence to warm up with"])
    res = interleaved_rates(encoders, texts, chunk=100)
    ref = res["torch"]["emb"]
    for r in res.values():
        cos = torch.nn.functional.cosine_similarity(r["emb"], ref, dim=-1)
        r.update(cos_mean=float(cos.mean()), cos_min=float(cos.min()))
    load_mid = load_avg()

    # retrieval, through the shared embedding cache (each backend under its own key)
    chatter = registry.build("dataset", {"name": "chatterbot"}).pairs("test")
    for name, enc in encoders.items():
        res[name]["mrr"] = identity_mrr(CachedEncoder(enc), chatter)
    squad_items, squad_note = [], ""
    if not args.no_squad:
        import time as _time

        squad_items = registry.build("dataset", {"name": "squad"}).selection("test")
        if args.quick:
            squad_items = squad_items[:150]
        for name, enc in encoders.items():
            t0 = _time.perf_counter()
            res[name]["map"] = selection_map(CachedEncoder(enc), squad_items)
            res[name]["map_s"] = _time.perf_counter() - t0
        squad_note = f"{len(squad_items)} questions"
    fp32 = encoders["onnx fp32"]
    sweep = onnx_sweep(fp32.runner.path, fp32.tokenizer, texts[:300], args.threads, fp32.max_length)
    load_after = load_avg()

    t_torch = res["torch"]["wall"]
    c_torch = res["torch"]["cpu"]
    lines = [
        "",
        "## minilm backends: torch, ONNX Runtime fp32, ONNX Runtime int8",
        "",
        f"Run: `bench/bench_teachers.py`{' --quick' if args.quick else ''}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.machine()}, {os.cpu_count()} cores, "
        f"{args.threads} threads for every backend (torch {torch.__version__}, onnxruntime "
        f"{_version('onnxruntime')}). **The machine was shared** with other jobs while this ran — load average "
        f"(1/5/15 min) before: {load_before}, after the throughput part: {load_mid}, at the end: {load_after} on "
        f"{os.cpu_count()} cores — so absolute rates are lower than on an idle machine; the ratios are measured "
        "interleaved (the texts in chunks of 100, each backend in turn on every chunk, the order rotating), so "
        "the load falls on all backends alike.",
        "",
        f"Texts: the first {len(texts)} distinct chitchat turns, encoded cold (straight through the model, no "
        "embedding cache), batch 16, sorted by length as always. *per CPU-second*: texts / CPU time of this "
        "process (all threads), the cost of the work whatever the wait for a core. Fidelity: cosine per "
        "sentence against torch fp32. Retrieval: identity MRR on chatterbot's test split "
        f"({len(chatter)} questions ranking the test answers by cosine)"
        + (f" and MAP on the squad selection test split ({squad_note}, each question's own paragraph sentences "
           "ranked by cosine)" if squad_items else "; the squad selection task was left out of this run")
        + ", each with that backend's embeddings.",
        "",
        "| backend | build (s) | cold (wall /s) | × torch (wall) | cold (per CPU-s) | × torch (CPU) | target | "
        "mean cos | min cos | chatterbot MRR | Δ MRR" + (" | squad MAP | Δ MAP" if squad_items else "") + " |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:" + ("|---:|---:" if squad_items else "") + "|",
    ]
    verdicts = {}
    for name, r in res.items():
        ratio, ratio_cpu = t_torch / r["wall"], c_torch / r["cpu"]
        target = TARGETS.get(name)
        verdict = "–"
        if target is not None:
            ok = ratio >= target
            verdict = f"≥ {target}×: {'met' if ok else '**missed**'}"
            verdicts[name] = ok
        d_mrr = r["mrr"] - res["torch"]["mrr"]
        row = (f"| {name} | {build[name]:.1f}{' (export)' if name in exported else ''} | {len(texts) / r['wall']:.1f} | {ratio:.2f}× | "
               f"{len(texts) / r['cpu']:.1f} | {ratio_cpu:.2f}× | {verdict} | {r['cos_mean']:.6f} | "
               f"{r['cos_min']:.6f} | {r['mrr']:.4f} | {d_mrr:+.4f}")
        if squad_items:
            row += f" | {r['map']:.4f} | {r['map'] - res['torch']['map']:+.4f}"
        lines.append(row + " |")
    int8 = res["onnx int8"]
    d_int8 = abs(int8["mrr"] - res["torch"]["mrr"])
    lines += [
        "",
        f"Fidelity targets: onnx fp32 cosine ≥ 0.99999 per sentence — "
        f"{'met' if res['onnx fp32']['cos_min'] >= 0.99999 else '**missed**'} (min {res['onnx fp32']['cos_min']:.7f}); "
        f"int8 mean cosine ≥ 0.99 — {'met' if int8['cos_mean'] >= 0.99 else '**missed**'} ({int8['cos_mean']:.4f}); "
        f"int8 |Δ identity MRR| ≤ {MRR_TOLERANCE} on chatterbot — "
        f"{'met' if d_int8 <= MRR_TOLERANCE else '**missed**'} ({d_int8:.4f})"
        + (f", on squad |Δ MAP| {abs(int8['map'] - res['torch']['map']):.4f}" if squad_items else "") + ".",
        "*build*: constructing the encoder in this process; *(export)*: the build exported the model to ONNX "
        "(int8: quantised the fp32 export) into `$CELLNET_HOME/onnx` first — once per machine, later builds "
        "reuse the file after checking its sha256.",
        "",
        f"ONNX Runtime settings tried (the fp32 export, the first {min(300, len(texts))} of the same texts, "
        "one InferenceSession per setting; not interleaved with torch, so compare the rows with each other):",
        "",
        "| graph optimisation | threads | batch | IO binding | wall /s | per CPU-s |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for r in sweep:
        lines.append(f"| {r['level']} | {r['threads']} | {r['batch']} | {'yes' if r['io_binding'] else 'no'} | "
                     f"{r['wall']:.1f} | {r['cpu']:.1f} |")
    lines.append("")
    return lines


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


if __name__ == "__main__":
    sys.exit(main())
