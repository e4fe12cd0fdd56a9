"""How the `ret` decoder's held-out quality grows with training compute and data → docs/results/ret_scaling.md.

    .venv/bin/python bench/bench_ret_scaling.py [--quick] [--threads 2] [--epochs 2 8 32]
                                                [--big-epochs 8] [--all-data-epochs 8]

The same data as bench_generative.py (41k training sentences, the same held-out chitchat turns and
chatterbot answers, real MiniLM embeddings through the disk cache). The default `ret` (≤ 1M
parameters) is trained from scratch once per budget in `--epochs` (each run fits its own warm-up
+ cosine schedule into its epochs, no time limit, early stopping on the 5% held-out split), then
scored greedily on both test sets. One larger `ret` (d_model 192, 4 layers, ~2.4M parameters) is
trained for `--big-epochs` (size), and the default `ret` on every chitchat turn of 2–20 words
(~2.2× the sentences, the same test turns) for `--all-data-epochs` (data). The report says what
each doubling of epochs bought and flags runs that early stopping ended (held-out loss no longer
improving), i.e. where more epochs on this data stop helping.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generative import data_and_bank, score  # noqa: E402

COMMON = {"val_fraction": 0.05, "patience": 3, "batch_size": 32, "lr": 4e-3, "max_seconds": 0.0}
BIG = {"d_model": 192, "n_layers": 4, "n_heads": 4, "ffn_hidden": 512}


def report(rows: list[dict], meta: dict) -> list[str]:
    """The markdown section for ``rows`` (one per trained model) and the run's ``meta``."""
    cmd = meta["command"]
    variant = meta.get("default_label", "ret")[len("ret"):].lstrip(", ")
    lines = ["## `ret` decoder: held-out quality against training compute and data"
             + (f" ({variant})" if variant else ""), "",
             f"Machine: {meta['machine']}, {meta['threads']} torch threads, torch {meta['torch']}, Python "
             f"{meta['python']}; load average {meta['load'][0]:.1f} before / {meta['load'][1]:.1f} after. "
             f"Run: {cmd} ({meta['minutes']:.0f} min in all).", "",
             f"Data as in the generative benchmark: {meta['train']} training sentences (chatterbot answers minus a "
             "held-out tenth, chitchat turns of 2–20 words), or with every chitchat turn of 2–20 words where the "
             f"table says so; always tested on the same {meta.get('tests', 300)} held-out chitchat turns and "
             f"{meta['answers']} held-out chatterbot answers (greedy decoding). Each row is a model trained from "
             "scratch with its warm-up + cosine schedule fitted into its epochs (batch 32, lr 4e-3, early "
             "stopping on 5% held out; *ran* < *epochs* means it stopped early).", "",
             "| model | parameters | training sentences | epochs (ran) | training s | held-out loss | train loss | "
             "chitchat BLEU | chitchat cos | answers BLEU | answers cos |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        c, a = r["scores"]["chitchat (held out)"], r["scores"]["chatterbot answers (held out)"]
        lines.append(f"| {r['model']} | {r['params']:,} | {r.get('sentences', meta['train']):,} | "
                     f"{r['epochs']} ({r['ran']}) | {r['seconds']:.0f} | "
                     f"{r['val_loss']:.2f} | {r['train_loss']:.2f} | {c['bleu']:.1f} | {c['cos']:.3f} | "
                     f"{a['bleu']:.1f} | {a['cos']:.3f} |")
    base = meta.get("default_label", "ret")
    small = sorted((r for r in rows if r["model"] == base), key=lambda r: r["ran"])
    chit = "chitchat (held out)"
    if len(small) >= 2:
        lines += ["", "What more epochs bought (chitchat, held out; per doubling of the epochs actually run):", ""]
        for a, b in zip(small, small[1:]):
            dbl = math.log2(b["ran"] / a["ran"]) if b["ran"] > a["ran"] else float("nan")
            sa, sb = a["scores"][chit], b["scores"][chit]
            lines.append(f"- {a['ran']} → {b['ran']} epochs: BLEU {sa['bleu']:.1f} → {sb['bleu']:.1f} "
                         f"({(sb['bleu'] - sa['bleu']) / dbl:+.1f} per doubling), cosine {sa['cos']:.3f} → "
                         f"{sb['cos']:.3f} ({(sb['cos'] - sa['cos']) / dbl:+.3f} per doubling), held-out loss "
                         f"{a['val_loss']:.2f} → {b['val_loss']:.2f}.")
    for r in small:
        if r["ran"] < r["epochs"]:
            lines.append(f"- The {r['epochs']}-epoch run stopped early after {r['ran']} epochs: its held-out loss "
                         f"stopped improving (best {r['val_loss']:.2f}) while the training loss fell to "
                         f"{r['train_loss']:.2f}. At {meta['train']} sentences this model overfits, so more "
                         "epochs alone do not approach the targets (BLEU 20, cosine 0.85).")
    for r in rows:
        if r["model"] != base:
            same = [s for s in small if s["ran"] == r["ran"]]
            if same and r.get("sentences", meta["train"]) != meta["train"]:
                sr, s0 = r["scores"][chit], same[0]["scores"][chit]
                lines.append(f"- Every chitchat turn ({r['sentences']:,} sentences, "
                             f"{r['sentences'] / meta['train']:.1f}× the data) at {r['ran']} epochs: BLEU "
                             f"{s0['bleu']:.1f} → {sr['bleu']:.1f}, cosine {s0['cos']:.3f} → {sr['cos']:.3f}, "
                             f"held-out loss {same[0]['val_loss']:.2f} → {r['val_loss']:.2f} (each on its own 5% split; train loss "
                             f"{r['train_loss']:.2f}), for {r['seconds'] / same[0]['seconds']:.1f}× the training time.")
                continue
            if same:
                sr, s0 = r["scores"][chit], same[0]["scores"][chit]
                lines.append(f"- {r['model']} ({r['params']:,} parameters, {r['params'] / same[0]['params']:.1f}× "
                             f"the default) at {r['ran']} epochs: BLEU {s0['bleu']:.1f} → {sr['bleu']:.1f}, cosine "
                             f"{s0['cos']:.3f} → {sr['cos']:.3f}, held-out loss {same[0]['val_loss']:.2f} → "
                             f"{r['val_loss']:.2f}, for {r['seconds'] / same[0]['seconds']:.1f}× the training time.")
    return lines


def train_and_score(reg, ctx, enc, d: dict, label: str, epochs: int, extra: dict, save: Path | None) -> dict:
    """Train one ret from scratch on ``d``'s training sentences and score it on both test sets."""
    dec = reg.build("decoder", {"name": "ret", **COMMON, "epochs": epochs, **extra}, ctx)
    info = dec.fit(d["train"], d["train_emb"])
    if save:
        dec.save(save / f"ret-{info['parameters']}-e{epochs}-n{len(d['train'])}")
    row = {"model": label, "sentences": len(d["train"]), "epochs": epochs, "ran": info["epochs"],
           "params": info["parameters"], "seconds": info["seconds"], "val_loss": info["best_loss"],
           "train_loss": info["history"][-1]["train_loss"], "scores": {}}
    for tname, refs in d["tests"].items():
        row["scores"][tname] = score(dec.decode(d["test_emb"][tname]), refs, d["test_emb"][tname], enc)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny data and 1-2 epochs (development)")
    ap.add_argument("--epochs", type=int, nargs="+", default=None, help="training budgets (epochs) of ret "
                    "(default 2 8 32; quick 1 2)")
    ap.add_argument("--big-epochs", type=int, default=None, help="epochs of the ~2.4M-parameter ret (default 8; "
                    "quick 1; 0: skip)")
    ap.add_argument("--all-data-epochs", type=int, default=None, help="epochs of the default ret on every chitchat "
                    "turn (default 8; quick 1; 0: skip)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dropout", type=float, default=0.0, help="dropout in training for every run (default 0, "
                    "the decoder's default)")
    ap.add_argument("--chitchat", type=int, default=None,
                    help="chitchat training turns of the main runs (default 40000 as bench_generative; quick 600)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "ret_scaling.md")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--save", type=Path, default=None, help="save each trained decoder under this folder")
    ap.add_argument("--from-json", type=Path, default=None, help="only re-render the report from a --json file")
    args = ap.parse_args()
    if args.from_json:
        got = json.loads(args.from_json.read_text(encoding="utf-8"))
        args.out.write_text("\n".join(report(got["rows"], got["meta"])) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
        return
    q = args.quick
    epochs = sorted(args.epochs or ([1, 2] if q else [2, 8, 32]))
    big = args.big_epochs if args.big_epochs is not None else (1 if q else 8)
    all_data = args.all_data_epochs if args.all_data_epochs is not None else (1 if q else 8)
    chitchat = args.chitchat or (600 if q else 40000)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    load_before = os.getloadavg()

    d = data_and_bank(q, chitchat, 100 if q else 300)
    enc, reg, ctx = d["enc"], d["reg"], d["ctx"]
    reg_extra = {"dropout": args.dropout} if args.dropout else {}
    tag = f", dropout {args.dropout:g}" if args.dropout else ""
    rows = [train_and_score(reg, ctx, enc, d, "ret" + tag, e, reg_extra, args.save) for e in epochs]
    if big:
        rows.append(train_and_score(reg, ctx, enc, d, "ret, d_model 192 × 4 layers" + tag, big, {**BIG, **reg_extra},
                                    args.save))
    if all_data:  # the same test turns: split() takes them first, then the training turns
        d_all = data_and_bank(q, 1200 if q else 10 ** 9, 100 if q else 300)
        rows.append(train_and_score(reg, ctx, enc, d_all, "ret, every chitchat turn" + tag, all_data, reg_extra,
                                    args.save))
    meta = {"train": len(d["train"]), "answers": len(d["tests"]["chatterbot answers (held out)"]),
            "tests": len(d["tests"]["chitchat (held out)"]),
            "load": [load_before[0], os.getloadavg()[0]], "minutes": (time.perf_counter() - t_start) / 60,
            "threads": torch.get_num_threads(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "torch": torch.__version__, "python": platform.python_version(),
            "command": "`" + " ".join([".venv/bin/python", "bench/bench_ret_scaling.py", *sys.argv[1:]]) + "`",
            "default_label": "ret" + tag}
    lines = report(rows, meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
