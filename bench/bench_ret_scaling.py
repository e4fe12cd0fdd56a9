"""How the `ret` decoder's held-out quality grows with training compute → docs/results/ret_scaling.md.

    .venv/bin/python bench/bench_ret_scaling.py [--epochs 2 8 32] [--threads 2] [--big-epochs 8]

The same data as bench_generative.py (41k training sentences, the same held-out chitchat turns and
chatterbot answers, real MiniLM embeddings through the disk cache). The default `ret` (≤ 1M
parameters) is trained from scratch once per budget in `--epochs` (each run fits its own warm-up
+ cosine schedule into its epochs, no time limit, early stopping on the 5% held-out split), then
scored greedily on both test sets. One larger `ret` (d_model 192, 4 layers, ~2.4M parameters) is
trained for `--big-epochs` to see whether size or compute is the limit. The report says what each
doubling of epochs bought and flags runs that early stopping ended (held-out loss no longer
improving), i.e. where more epochs on this data stop helping.
`--chitchat 89299` uses every chitchat turn of 2–20 words (the test turns are the same).
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
    cmd = (f"`.venv/bin/python bench/bench_ret_scaling.py --epochs {' '.join(map(str, meta['epochs']))} "
           f"--big-epochs {meta['big_epochs']}"
           + (f" --chitchat {meta['chitchat']}" if meta.get("chitchat", 40000) != 40000 else "")
           + f" --threads {meta['threads']}`")
    lines = [f"## `ret` decoder: held-out quality against training compute ({meta['train']} training sentences)", "",
             f"Machine: {meta['machine']}, {meta['threads']} torch threads, torch {meta['torch']}, Python "
             f"{meta['python']}; load average {meta['load'][0]:.1f} before / {meta['load'][1]:.1f} after. "
             f"Run: {cmd} ({meta['minutes']:.0f} min in all).", "",
             f"Data as in the generative benchmark: {meta['train']} training sentences (chatterbot answers minus a "
             "held-out tenth, chitchat turns of 2–20 words), tested on the same 300 held-out chitchat turns and "
             f"{meta['answers']} held-out chatterbot answers (greedy decoding). Each row is a model trained from "
             "scratch with its warm-up + cosine schedule fitted into its epochs (batch 32, lr 4e-3, early "
             "stopping on 5% held out; *ran* < *epochs* means it stopped early).", "",
             "| model | parameters | epochs (ran) | training s | held-out loss | train loss | chitchat BLEU | "
             "chitchat cos | answers BLEU | answers cos |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        c, a = r["scores"]["chitchat (held out)"], r["scores"]["chatterbot answers (held out)"]
        lines.append(f"| {r['model']} | {r['params']:,} | {r['epochs']} ({r['ran']}) | {r['seconds']:.0f} | "
                     f"{r['val_loss']:.2f} | {r['train_loss']:.2f} | {c['bleu']:.1f} | {c['cos']:.3f} | "
                     f"{a['bleu']:.1f} | {a['cos']:.3f} |")
    small = sorted((r for r in rows if r["model"] == "ret"), key=lambda r: r["ran"])
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
        if r["model"] != "ret":
            same = [s for s in small if s["ran"] == r["ran"]]
            if same:
                sr, s0 = r["scores"][chit], same[0]["scores"][chit]
                lines.append(f"- {r['model']} ({r['params']:,} parameters, {r['params'] / same[0]['params']:.1f}× "
                             f"the default) at {r['ran']} epochs: BLEU {s0['bleu']:.1f} → {sr['bleu']:.1f}, cosine "
                             f"{s0['cos']:.3f} → {sr['cos']:.3f}, held-out loss {same[0]['val_loss']:.2f} → "
                             f"{r['val_loss']:.2f}, for {r['seconds'] / same[0]['seconds']:.1f}× the training time.")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, nargs="+", default=[2, 8, 32], help="training budgets (epochs) of ret")
    ap.add_argument("--big-epochs", type=int, default=8, help="epochs of the ~2.4M-parameter ret (0: skip)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chitchat", type=int, default=40000,
                    help="chitchat training turns (default 40000 as bench_generative; ~89k exist)")
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
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    load_before = os.getloadavg()

    d = data_and_bank(False, args.chitchat, 300)
    enc, reg, ctx, train, tests = d["enc"], d["reg"], d["ctx"], d["train"], d["tests"]
    runs = [("ret", e, {}) for e in sorted(args.epochs)]
    if args.big_epochs:
        runs.append(("ret, d_model 192 × 4 layers", args.big_epochs, BIG))
    rows = []
    for label, epochs, extra in runs:
        dec = reg.build("decoder", {"name": "ret", **COMMON, "epochs": epochs, **extra}, ctx)
        info = dec.fit(train, d["train_emb"])
        if args.save:
            dec.save(args.save / f"ret-{info['parameters']}-e{epochs}")
        row = {"model": label, "epochs": epochs, "ran": info["epochs"], "params": info["parameters"],
               "seconds": info["seconds"], "val_loss": info["best_loss"],
               "train_loss": info["history"][-1]["train_loss"], "scores": {}}
        for tname, refs in tests.items():
            row["scores"][tname] = score(dec.decode(d["test_emb"][tname]), refs, d["test_emb"][tname], enc)
        rows.append(row)
        print(json.dumps(row), flush=True)

    meta = {"train": len(train), "answers": len(tests["chatterbot answers (held out)"]),
            "load": [load_before[0], os.getloadavg()[0]], "minutes": (time.perf_counter() - t_start) / 60,
            "threads": torch.get_num_threads(), "epochs": sorted(args.epochs), "big_epochs": args.big_epochs,
            "chitchat": args.chitchat, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "torch": torch.__version__, "python": platform.python_version()}
    lines = report(rows, meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
