"""Benchmark of the training plugin: the lattice trained with dialogue + infonce beside the identity,
mean, ridge and equal-size MLP baselines and a steps-0 ablation, on held-out test splits of chatterbot,
faq and chitchat, over several seeds with a paired bootstrap of every MRR difference.

    .venv/bin/python bench/bench_training.py [--quick] [--seeds 5] [--out docs/results/training.md]

Real MiniLM embeddings (through the disk cache), real data, real training on 2 CPU threads.
Writes a markdown fragment with one table per dataset and the lattice / baseline ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DATASETS = {
    "chatterbot": {"config": "configs/default.yaml", "data": {"name": "chatterbot"}},
    "faq": {"config": "configs/default.yaml", "data": {"name": "faq"}},
    "chitchat": {"config": "configs/default.yaml", "data": {"name": "chitchat", "max_pairs": 3000}},
}

#: The benchmark runs the default pipeline (configs/default.yaml: MiniLM → surface reshaper with
#: 'inverse' init → NCA lattice, dialogue + InfoNCE) on each dataset. With 'inverse' init the
#: untrained lattice *is* the identity baseline (epoch 0 competes for the best checkpoint), so
#: training moves it from there. Earlier runs with the opposite-face surface reshaper started at
#: val MRR 0.05 and with the parameter-free 'permuted' reshaper only tied identity on faq/chitchat
#: (see the git history of docs/results/training.md).
BENCH_SETTINGS = [
    "decoder={name: nearest}",
    "training.early_stopping=4",
]


def run_one(name: str, spec: dict, quick: bool, overrides: list[str], baselines: str = "all") -> dict:
    """Train the default pipeline once (``overrides`` applied) and evaluate it on the test split.

    ``baselines``: ``all`` (identity, mean, ridge, mlp), ``mlp`` (the seed-dependent one only) or ``none``."""
    from cellnet_core.config import apply_overrides, read_yaml, validate_run_config
    from cellnet_core.evaluation import IdentityBaseline, MeanBaseline, RidgeBaseline, evaluate_pairs
    from cellnet_core.pipeline import Pipeline
    from cellnet_core.plugins import load
    from cellnet_core.run import RunContext
    from cellnet_training.baselines import MLPBaseline

    pm, reg = load()
    raw = read_yaml(ROOT / spec["config"])
    raw["data"] = dict(spec["data"])
    if quick:
        overrides = ["training.epochs=2", *overrides]
        if name == "chitchat":
            raw["data"]["max_pairs"] = 600
    raw["device"] = "cpu"
    raw = apply_overrides(raw, BENCH_SETTINGS + list(overrides))
    cfg = validate_run_config(reg, raw, source=f"{spec['config']} ({name})")
    pipe = Pipeline.build(cfg, reg)
    data = reg.build("dataset", cfg.data)
    train, test = data.pairs("train"), data.pairs("test")
    # embeddings first (cached on disk), so training time is training only
    for split in ("train", "val", "test"):
        ps = data.pairs(split)
        pipe.encode([p.question for p in ps]), pipe.encode([p.answer for p in ps])
    strategy = reg.build("strategy", cfg.training)
    with tempfile.TemporaryDirectory(prefix=f"bench-training-{name}-") as tmp:
        t0 = time.perf_counter()
        result = strategy.fit(pipe, data, RunContext(Path(tmp) / "run", seed=cfg.seed))
        train_s = time.perf_counter() - t0
    mlp = MLPBaseline()
    base = {"all": [IdentityBaseline(), MeanBaseline(), RidgeBaseline(), mlp], "mlp": [mlp], "none": []}[baselines]
    out = evaluate_pairs(pipe, train, test, base, max_questions=cfg.eval.max_questions, return_ranks=True)
    rows = out["rows"]
    rows[0]["name"] = "lattice"
    rows[0]["seconds"] = train_s
    ranks = dict(out["ranks"])
    ranks["lattice"] = ranks.pop("run")
    return {
        "dataset": name, "seed": cfg.seed, "train_pairs": len(train), "test_questions": out["questions"],
        "candidates": out["candidates"], "params": sum(p.numel() for p in pipe.parameters()),
        "lattice_params": sum(p.numel() for p in pipe.core.parameters()),
        "adapter_params": sum(p.numel() for p in pipe.reshaper.parameters()),
        "mlp_params": mlp.n_params, "epochs": result.epochs, "best_epoch": result.best_epoch,
        "val": {k: v for k, v in result.metrics.items() if k.startswith("val_")},
        "rows": rows, "ranks": ranks, "compare": out.get("compare", []), "training": json.loads(cfg.training.model_dump_json()),
        "reshaper": json.loads(cfg.reshaper.model_dump_json()), "core": json.loads(cfg.core.model_dump_json()),
    }


#: The ablation: the same pipeline with a lattice of 0 steps, i.e. the trained reshaper alone (its
#: adapters are a learned linear map in and out of the lattice). If the lattice only ties it, the
#: lattice's steps are not what learns.
ABLATION = ("reshaper only (steps 0)", ["core.steps=0"])
METRICS = ("recall@1", "recall@10", "mrr", "cosine", "seconds")


def run_dataset(name: str, spec: dict, quick: bool, overrides: list[str], seeds: int) -> dict:
    """Lattice, the steps-0 ablation and the MLP over ``seeds`` training seeds; the deterministic
    baselines once. Per model: each seed's metric row and per-question reciprocal ranks."""
    runs: dict[str, list[dict]] = {}
    rr: dict[str, list[list[float]]] = {}
    first = None
    for seed in range(seeds):
        r = run_one(name, spec, quick, [*overrides, f"seed={seed}"], baselines="all" if seed == 0 else "mlp")
        first = first or r
        for row in r["rows"]:
            runs.setdefault(row["name"], []).append(row)
            rr.setdefault(row["name"], []).append([1.0 / k for k in r["ranks"][row["name"]]])
        a = run_one(name, spec, quick, [*overrides, f"seed={seed}", *ABLATION[1]], baselines="none")
        runs.setdefault(ABLATION[0], []).append(a["rows"][0])
        rr.setdefault(ABLATION[0], []).append([1.0 / k for k in a["ranks"]["lattice"]])
        runs["lattice"][-1]["best_epoch"] = r["best_epoch"]
        runs[ABLATION[0]][-1]["best_epoch"] = a["best_epoch"]
        print(f"  {name} seed {seed}: lattice mrr {r['rows'][0]['mrr']:.3f} (best epoch {r['best_epoch']}), "
              f"{ABLATION[0]} {a['rows'][0]['mrr']:.3f}, mlp {runs['mlp'][-1]['mrr']:.3f}", file=sys.stderr, flush=True)
    # per-question reciprocal rank averaged over seeds: one paired sample per test question
    mean_rr = {k: [sum(col) / len(col) for col in zip(*v)] for k, v in rr.items()}
    first = dict(first)
    first.pop("rows"), first.pop("ranks")
    return {**first, "seeds": seeds, "runs": runs, "mean_rr": mean_rr}


def _mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0


def _cell(xs: list[float], digits: int = 3) -> str:
    m, s = _mean_std(xs)
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(xs) > 1 else f"{m:.{digits}f}"


#: |ΔMRR| below this is float noise (e.g. an untrained lattice vs identity), not a difference.
MIN_EFFECT = 0.001
VERDICT_TEXT = {"same": "same ranks", "better": "**better**", "worse": "**worse**", "within noise": "within noise"}
COMPARISONS = [("lattice", "identity"), ("lattice", "mlp"), ("lattice", ABLATION[0]), ("mlp", "identity")]


def _loss_name(spec) -> str:
    """``infonce`` / ``infonce + 0.5 × cosine`` for a loss given by name or as a list of terms."""
    if isinstance(spec, list):
        return " + ".join((f"{t['weight']:g} × " if t.get("weight", 1.0) != 1.0 else "") + str(t["name"])
                          for t in spec)
    return str(spec)


def markdown(results: list[dict], quick: bool) -> str:
    import torch

    from cellnet_core.metrics import bootstrap_verdict, paired_bootstrap

    lines = ["## Training: lattice (dialogue + infonce) vs baselines", ""]
    lines.append(f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads ({os.cpu_count()} "
                 f"cores), torch {torch.__version__}, Python {platform.python_version()}."
                 + (" **Quick run** (2 epochs, chitchat 600 pairs)." if quick else ""))
    lines.append("")
    lines.append("Teacher: MiniLM-L6 (`minilm`, 384-d, embeddings cached). Metrics on the held-out **test** "
                 "split: each test question's prediction ranks the test split's unique answers by cosine "
                 "(recall@1, recall@10, MRR; ties count against the target); cosine = mean cosine between the "
                 "prediction and the true answer embedding. Baselines are fitted on the same training pairs "
                 "in the same run: `identity` (the question's own embedding), `mean` (mean training answer), "
                 "`ridge` (closed form), `mlp` (residual MLP with the lattice run's parameter count, trained "
                 "with the same loss/optimiser/schedule/epochs, no early stopping). The ablation "
                 f"`{ABLATION[0]}` is the default pipeline with `core.steps=0`: only the reshaper's learned "
                 "adapters in and out of the lattice train. Trained models run with several seeds (same split, "
                 "different initialisation and batch order): cells are mean ± standard deviation over seeds. "
                 "Time = training seconds (lattice: the whole strategy incl. per-epoch validation; "
                 "baselines: fit).")
    lines.append("")
    lines.append("Significance: a paired bootstrap (10,000 resamples of the test questions) of the MRR "
                 "difference, each question's reciprocal rank averaged over the seeds first. A difference "
                 "whose 95% interval contains 0 is within noise; p = share of resamples without a gain; "
                 f"|ΔMRR| < {MIN_EFFECT} counts as the same ranks.")
    lines.append("")
    for r in results:
        tr = r["training"]
        runs = r["runs"]
        best = [row["best_epoch"] for row in runs["lattice"]]
        lines.append(f"### {r['dataset']}")
        lines.append("")
        lines.append(f"{r['train_pairs']} training pairs, {r['test_questions']} test questions, "
                     f"{r['candidates']} candidate answers. Lattice: reshaper `{r['reshaper']['name']}` "
                     f"{r['reshaper'].get('shape')}×{r['reshaper'].get('channels')}, core `lattice` cell "
                     f"`{r['core']['cell']['name']}` (hidden {r['core']['cell'].get('hidden')}), "
                     f"{r['core']['steps']} steps; {r['params']:,} trainable parameters: {r['lattice_params']:,} the "
                     f"lattice's, {r['adapter_params']:,} the reshaper's adapters (mlp: {r['mlp_params']:,}). "
                     f"Training: {tr['epochs']} epochs max, batch {tr['batch_size']}, lr {tr['lr']}, "
                     f"loss {_loss_name(tr['loss'])}, hard negatives {tr['hard_negatives']}; {r['seeds']} seeds, "
                     f"best epoch per seed {best} (epoch 0 = untrained, which is the identity).")
        lines.append("")
        lines.append("| model | seeds | recall@1 | recall@10 | MRR | cosine | time (s) |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|")
        for model, rows in runs.items():
            cells = [_cell([row.get(m, 0.0) for row in rows], 1 if m == "seconds" else 3) for m in METRICS]
            lines.append(f"| {model} | {len(rows)} | " + " | ".join(cells) + " |")
        lines.append("")
        lines.append("| comparison | ΔMRR | 95% interval | p (no gain) | verdict |")
        lines.append("|---|---:|---:|---:|---|")
        for a, b in COMPARISONS:
            bs = paired_bootstrap(r["mean_rr"][a], r["mean_rr"][b])
            verdict = VERDICT_TEXT[bootstrap_verdict(bs, MIN_EFFECT)]
            lines.append(f"| {a} − {b} | {bs['diff']:+.3f} | [{bs['lo']:+.3f}, {bs['hi']:+.3f}] | "
                         f"{bs['p']:.2f} | {verdict} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def summary(results: list[dict]) -> list[dict]:
    """Per dataset, one record per model: test MRR mean/sd over seeds and, for the lattice, the
    paired bootstrap against identity, the equal-size MLP and the steps-0 ablation — what
    ``bench/study.py`` puts in its headline table."""
    from cellnet_core.metrics import compare_paired

    out = []
    for r in results:
        def boot(a: str, b: str) -> dict:
            return compare_paired(r["mean_rr"][a], r["mean_rr"][b], min_effect=MIN_EFFECT)

        for model, rows in r["runs"].items():
            m, sd = _mean_std([row["mrr"] for row in rows])
            rec = {"dataset": r["dataset"], "variant": model, "metric": "test MRR", "mean": m, "sd": sd,
                   "seeds": len(rows) if model not in ("identity", "mean", "ridge") else 0}
            if model == "lattice":
                rec.update({"params": {"core": r["lattice_params"], "adapters": r["adapter_params"]},
                            "vs_identity": boot("lattice", "identity"), "baseline": "mlp",
                            "vs_baseline": boot("lattice", "mlp"), "vs_ablation": boot("lattice", ABLATION[0])})
            if model == ABLATION[0]:  # steps 0: the lattice's cell never runs; only the adapters train
                rec.update({"params": {"core": 0, "adapters": r["adapter_params"]},
                            "vs_identity": boot(model, "identity")})
            if model == "mlp":
                rec.update({"params": {"core": r["mlp_params"], "adapters": 0}, "vs_identity": boot("mlp", "identity")})
            out.append(rec)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 epochs, smaller chitchat")
    ap.add_argument("--out", default=str(ROOT / "docs/results/training.md"))
    ap.add_argument("--datasets", default="chatterbot,faq,chitchat")
    ap.add_argument("--set", action="append", default=[], help="config override for every dataset, a.b=value")
    ap.add_argument("--seeds", type=int, default=5, help="training seeds per trained model (default 5)")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--summary", metavar="JSON", help="also write one record per dataset and model (means, "
                                                      "intervals, parameters) here")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(2)
    results = []
    for name in args.datasets.split(","):
        t0 = time.perf_counter()
        results.append(run_dataset(name, DATASETS[name], args.quick, args.set, max(1, args.seeds)))
        print(f"{name}: done in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    text = markdown(results, args.quick)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary(results), indent=1) + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
