"""The lattice on tasks with two inputs: answer-sentence selection on SQuAD (split by article).

Every variant is a pair scorer trained with the ``listwise`` strategy (softmax over each training
question's own candidates plus in-batch answers; validation MAP on each validation question's own
candidates picks the epoch, epoch 0 — the untrained scorer, equal to the identity cosine —
included). Test MAP over the test articles' questions, mean ± sd over seeds, and a paired bootstrap
of per-question average precision (averaged over seeds) against identity and against each
variant's equal-size baseline.

    .venv/bin/python bench/bench_tasks.py [--quick] [--seeds 3] [--epochs 6] [--out docs/results/tasks.md]
    .venv/bin/python bench/bench_tasks.py --only grid-lattice,grid-conv --seeds 1   # a subset

Real MiniLM sentence embeddings and token states (both through the on-disk caches; the first run
encodes the ~20.8k texts once), real data (the bundled SQuAD v1.1 dev set), 2 CPU threads.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: the fused kernel on whole batches: its slab-by-slab backward (for huge single lattices) costs 2-3x on
#: these many small grids
LATTICE = {"name": "lattice", "cell": {"name": "nca", "hidden": 16}, "steps": 4, "neighbourhood": "von-neumann",
           "boundary": "walls", "kernel": "fused", "kernel_options": {"grad_slab_cells": 1 << 30}}
GRID = {"name": "interaction-grid", "shape": [16, 48, 1], "channels": 6, "features": ["cos", "exact", "idf"]}
FACES = {"name": "pair-faces", "shape": [8, 8, 4], "channels": 6, "adapter": "exact"}
SURFACE = {"name": "surface", "shape": [8, 8, 4], "channels": 8, "init": "inverse"}

#: name → (reshaper, core, what it is, its equal-size baseline)
VARIANTS: dict[str, tuple[dict, dict, str, str | None]] = {
    "grid-lattice": (GRID, LATTICE, "token grid (cos, exact match, idf-weighted match) → NCA lattice, 4 steps → readout", "grid-conv-small"),
    "grid-conv": (GRID, {"name": "conv-grid", "hidden": 16, "layers": 2}, "same grid → 2 residual 2D conv blocks "
                  "of hidden 16 (baseline, 3× the lattice cell's parameters)", None),
    "grid-conv-small": (GRID, {"name": "conv-grid", "hidden": 5, "layers": 2}, "same grid → 2 residual 2D conv "
                        "blocks of hidden 5: the lattice cell's parameter count (baseline)", None),
    "grid-readout": (GRID, {**LATTICE, "steps": 0}, "same grid, lattice steps 0: only the readout learns "
                     "(ablation)", None),
    "grid-lattice-big": (GRID, {**LATTICE, "cell": {"name": "nca", "hidden": 200}}, "grid → NCA lattice with a "
                         "cell 10× larger (hidden 200)", "grid-conv-big"),
    "grid-conv-big": (GRID, {"name": "conv-grid", "hidden": 52, "layers": 2}, "grid → 2 residual 2D conv "
                      "blocks of hidden 52: the big cell's parameter count (baseline)", None),
    "faces-lattice": (FACES, LATTICE, "q on face z=0, candidate on z=3 (exact placement, no adapter "
                      "parameters) → NCA lattice, 4 steps (≥ depth 3)", "pair-mlp"),
    "faces-short": (FACES, {**LATTICE, "steps": 2}, "same, 2 steps: below the depth, the faces cannot meet "
                    "(ablation)", None),
    "pair-mlp": ({"name": "pair-mlp", "hidden": 16}, {"name": "identity"}, "cos + MLP([q, c, q⊙c, |q−c|]) "
                 "(baseline, no lattice)", None),
    # bi-encoders: the question's embedding moved through the lattice, ranked by cosine (dialogue strategy)
    "bi-lattice": (SURFACE, {**LATTICE, "cell": {"name": "nca", "hidden": 32}, "steps": 6},
                   "bi-encoder: q → surface (inverse init) → NCA lattice → q', cos(q', c) (dialogue, infonce, "
                   "labelled wrong sentences as negatives)", "bi-mlp"),
    "bi-mlp": (SURFACE, {**LATTICE, "steps": 0}, "bi-encoder baseline: residual MLP q → q' of bi-lattice's size, "
               "trained like it (same loss, labelled wrong sentences as negatives, optimiser, epochs, validation "
               "MAP and early stopping)", None),
}
#: variants trained by the dialogue strategy instead of listwise
DIALOGUE = {"bi-lattice", "bi-mlp"}
QUICK = ["grid-lattice", "grid-conv", "pair-mlp"]


def _config(reg, reshaper: dict, core: dict, train_cfg: dict, limit: int | None, dialogue: bool = False,
            seed: int = 0):
    from cellnet_core.config import validate_run_config

    if dialogue:  # same epochs and early stopping; the dialogue strategy's own loss and batch
        training = {"name": "dialogue", "fit_decoder": False, "plots": False, "loss": "infonce",
                    "epochs": train_cfg["epochs"], "early_stopping": train_cfg["early_stopping"],
                    "max_val_questions": train_cfg.get("max_val_questions", 2000)}
        data = {"name": "squad", **({"max_pairs": limit} if limit else {})}
    else:
        training = {"name": "listwise", "fit_decoder": False, "max_train_questions": limit, **train_cfg}
        data = {"name": "squad"}
    return validate_run_config(reg, {
        "schema_version": 1, "seed": seed, "device": "cpu", "data": data, "encoder": {"name": "minilm"},
        "reshaper": reshaper, "core": core, "decoder": {"name": "phrasebank"}, "training": training},
        source="bench_tasks")


def _params(pipe) -> dict[str, int]:
    core = sum(p.numel() for p in pipe.core.parameters()) if hasattr(pipe.core, "parameters") else 0
    readout = sum(p.numel() for n, p in pipe.reshaper.named_parameters() if n.startswith(("readout", "mlp")))
    adapters = sum(p.numel() for n, p in pipe.reshaper.named_parameters()
                   if not n.startswith(("readout", "mlp")))
    return {"core": core, "readout": readout, "adapters": adapters, "total": core + readout + adapters}


def ap_per_question(scored) -> list[float]:
    from cellnet_core import metrics as M

    return [M.average_precision(s, l) for s, l in scored if any(l)]


def run_variant(reg, data, name: str, seed: int, train_cfg: dict, limit: int | None) -> dict:
    import torch

    from cellnet_core.pipeline import Pipeline
    from cellnet_core.run import RunContext
    from cellnet_training.listwise import ListwiseStrategy, score_items, selection_items

    if name == "bi-mlp":
        return _bi_mlp(reg, data, seed, train_cfg, limit)
    reshaper, core, _, _ = VARIANTS[name]
    cfg = _config(reg, reshaper, core, train_cfg, limit, dialogue=name in DIALOGUE)
    cfg = cfg.model_copy(update={"seed": seed})
    torch.manual_seed(seed)
    pipe = Pipeline.build(cfg, reg)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        if name in DIALOGUE:
            data_run = reg.build("dataset", cfg.data, None)
            result = reg.build("strategy", cfg.training, None).fit(pipe, data_run, RunContext(d, seed=seed))
        else:
            result = ListwiseStrategy(cfg.training).fit(pipe, data, RunContext(d, seed=seed))
    seconds = time.perf_counter() - t0
    test, _ = selection_items(data, "test")
    scored = score_items(pipe, test)
    aps = ap_per_question(scored)
    return {"variant": name, "seed": seed, "best_epoch": result.best_epoch, "epochs": result.epochs,
            "val_map": result.metrics.get("val_map"), "test_map": sum(aps) / len(aps), "aps": aps,
            "seconds": seconds, "params": _params(pipe)}


def _bi_mlp(reg, data, seed: int, train_cfg: dict, limit: int | None) -> dict:
    """The residual-MLP bi-encoder of bi-lattice's parameter count, trained like bi-lattice: the same
    training tensors (the paragraph's labelled wrong sentences as fixed negatives), loss, optimiser,
    schedule, epochs, validation MAP on each validation question's own candidates and early stopping
    (epoch 0, the untrained identity, competes), through the same Engine."""
    import torch

    from cellnet_core.pipeline import Pipeline
    from cellnet_core.run import RunContext
    from cellnet_training.baselines import ResidualMLP, hidden_for
    from cellnet_training.engine import Engine, ModuleModel
    from cellnet_training.listwise import selection_items

    big = _config(reg, *VARIANTS["bi-lattice"][:2], train_cfg, limit, dialogue=True, seed=seed)
    ref = Pipeline.build(big, reg)
    target = sum(p.numel() for p in ref.parameters() if p.requires_grad)
    data_run = reg.build("dataset", big.data, None)
    strategy = reg.build("strategy", big.training, None)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        run = RunContext(d, seed=seed)
        train, val, _ = strategy.prepare(ref, data_run, run)
        dim = train.q.shape[1]
        torch.manual_seed(seed)
        mlp = ResidualMLP(dim, hidden_for(target, dim, train.bank.shape[1]), train.bank.shape[1])
        result = Engine(big.training, label="bi-mlp").fit(ModuleModel(mlp), train, val, run)
    mlp.eval()
    test, _ = selection_items(data, "test")
    scored = []
    with torch.no_grad():
        for it in test:
            q = mlp(ref.encode([it.question]).float())
            scored.append((torch.nn.functional.cosine_similarity(q, ref.encode(it.candidates).float(),
                                                                 dim=-1).tolist(), it.labels))
    aps = ap_per_question(scored)
    n = sum(p.numel() for p in mlp.parameters())
    return {"variant": "bi-mlp", "seed": seed, "best_epoch": result.best_epoch, "epochs": result.epochs,
            "val_map": result.metrics.get("val_map"), "test_map": sum(aps) / len(aps), "aps": aps,
            "seconds": time.perf_counter() - t0, "params": {"core": n, "readout": 0, "adapters": 0, "total": n}}


def identity_aps(reg, data) -> list[float]:
    import torch

    from cellnet_core.pipeline import Pipeline
    from cellnet_training.listwise import selection_items

    cfg = _config(reg, VARIANTS["pair-mlp"][0], VARIANTS["pair-mlp"][1], {}, None)
    pipe = Pipeline.build(cfg, reg)
    test, _ = selection_items(data, "test")
    scored = []
    for it in test:
        q, c = pipe.encode([it.question]), pipe.encode(it.candidates)
        scored.append((torch.nn.functional.cosine_similarity(q, c, dim=-1).tolist(), it.labels))
    return ap_per_question(scored)


def overlap_row(reg, data, limit: int | None, max_val: int) -> dict:
    """No training: ``cos(q, c) + α · overlap``, where overlap is the idf-weighted share of the
    question's tokens found in the candidate (idf over the training candidates, α chosen on the
    validation questions from a fixed grid) — what lexical matching alone adds to the identity."""
    import math

    import torch

    from cellnet_core.pipeline import Pipeline
    from cellnet_training.listwise import selection_items

    cfg = _config(reg, GRID, LATTICE, {}, limit)
    pipe = Pipeline.build(cfg, reg)
    train, _ = selection_items(data, "train", limit)
    val, _ = selection_items(data, "val", max_val)
    test, _ = selection_items(data, "test")
    cands = list(dict.fromkeys(c for it in train for c in it.candidates))
    df: dict[int, int] = {}
    for ids, _ in pipe.encode_tokens(cands):
        for t in set(ids.tolist()):
            df[t] = df.get(t, 0) + 1
    m = len(cands)

    def idf(t: int) -> float:
        return max(0.0, math.log(m / (1 + df.get(t, 0)))) / math.log(m)

    def parts(items):
        out = []
        for it in items:
            cos = torch.nn.functional.cosine_similarity(pipe.encode([it.question]), pipe.encode(it.candidates),
                                                        dim=-1).tolist()
            q = set(pipe.encode_tokens([it.question])[0][0].tolist())
            wq = sum(idf(t) for t in q) or 1.0
            ov = [sum(idf(t) for t in q if t in set(ids.tolist())) / wq for ids, _ in pipe.encode_tokens(it.candidates)]
            out.append((cos, ov, list(it.labels)))
        return out

    from cellnet_core import metrics as M

    v, t = parts(val), parts(test)
    grid = [0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]
    val_map = {a: M.mean_average_precision([([x + a * y for x, y in zip(c, o)], l) for c, o, l in v]) for a in grid}
    alpha = max(grid, key=lambda a: val_map[a])
    aps = ap_per_question([([x + alpha * y for x, y in zip(c, o)], l) for c, o, l in t])
    return {"variant": "overlap", "alpha": alpha, "val_map": val_map[alpha], "aps": aps,
            "test_map": sum(aps) / len(aps)}


def _mean_sd(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"


def compare(a: list[float], b: list[float]) -> str:
    from cellnet_core import metrics as M

    c = M.compare_paired(a, b, resamples=5000)
    return f"{c['diff']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}] {c['verdict']}"


def _by_variant(runs: list[dict]) -> dict[str, list[dict]]:
    """The runs grouped by variant, in :data:`VARIANTS` order."""
    by: dict[str, list[dict]] = {n: [] for n in VARIANTS}
    for r in runs:
        by[r["variant"]].append(r)
    return {n: rows for n, rows in by.items() if rows}


def _seed_mean(rows: list[dict], key: str) -> list[float]:
    """Per test question, ``key``'s value (AP) averaged over the rows' seeds: one paired sample each."""
    return [statistics.mean(x) for x in zip(*(r[key] for r in rows))]


def summary(runs: list[dict], ident: list[float], overlap: dict | None = None) -> list[dict]:
    """One record per variant (and the overlap row): test MAP mean/sd over seeds, the paired bootstrap
    against identity and against its equal-size baseline, the parameter split — what
    ``bench/study.py`` puts in its headline table."""
    from cellnet_core import metrics as M

    by = _by_variant(runs)

    def avg(name: str) -> list[float]:
        return _seed_mean(by[name], "aps")

    def boot(a: list[float], b: list[float]) -> dict:
        return M.compare_paired(a, b, resamples=5000)

    out = [{"variant": "identity", "metric": "test MAP", "mean": statistics.mean(ident), "sd": 0.0, "seeds": 0}]
    if overlap is not None:
        out.append({"variant": "overlap", "metric": "test MAP", "mean": overlap["test_map"], "sd": 0.0, "seeds": 0,
                    "vs_identity": boot(overlap["aps"], ident)})
    for name, rows in by.items():
        xs = [r["test_map"] for r in rows]
        base = VARIANTS[name][3]
        out.append({"variant": name, "what": VARIANTS[name][2], "metric": "test MAP", "mean": statistics.mean(xs),
                    "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0, "seeds": len(rows),
                    "params": rows[0]["params"], "vs_identity": boot(avg(name), ident),
                    "baseline": base if base in by else None,
                    "vs_baseline": boot(avg(name), avg(base)) if base in by else None})
    return out


def render(runs: list[dict], ident: list[float], args, n_test: int, split: dict, elapsed: float,
           overlap: dict | None = None) -> str:
    by = _by_variant(runs)

    def avg_aps(name: str) -> list[float]:
        return _seed_mean(by[name], "aps")

    cmd = "bench/bench_tasks.py " + " ".join(sys.argv[1:])
    lines = [
        f"## Lattice tasks: answer-sentence selection on SQuAD ({f'{args.limit:,}' if args.limit else 'all'} "
        f"training questions)", "",
        f"`.venv/bin/python {cmd.strip()}` — "
        + (f"rendered {time.strftime('%Y-%m-%d')} from the runs in the given files (made earlier with the same "
           f"settings), {elapsed / 60:.1f} minutes of training in all" if args.merge is not None else
           f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, 2 CPU threads, {elapsed / 60:.1f} minutes of "
           f"training and scoring with cached embeddings") + ".", "",
        f"SQuAD v1.1 dev (bundled), split by article: {split['train']} / {split['val']} / {split['test']} "
        f"train / val / test questions; each question ranks the sentences of its own paragraph. Every pair "
        f"scorer is `cos(q, c) + readout(lattice state)` with the readout zero at init, trained by the `listwise` "
        f"strategy ({args.epochs} epochs at most, 2 in-batch negatives per question, early stopping after 2 "
        f"epochs without gain in validation MAP, epoch 0 = the untrained scorer = identity); the bi-encoders (bi-*) move the question's embedding and "
        f"rank by cosine, trained by `dialogue` with the same epochs and early stopping. Test MAP on {n_test} test questions, mean ± sd over the seeds of each row (one "
        f"best epoch per seed); the intervals are paired bootstraps (5,000 resamples) of per-question AP "
        f"averaged over seeds. Training questions: {args.limit or 'all'}; validation questions: "
        f"{min(args.max_val, split['val'])}.", "",
        "| variant | what | params: lattice/core · readout · adapters | best epochs | val MAP | test MAP | "
        "vs identity | vs its baseline |",
        "|---|---|---|---|---|---|---|---|",
        f"| identity | cos(q, c) of MiniLM sentence embeddings | 0 | – | – | {statistics.mean(ident):.4f} | – | – |",
    ]
    if overlap is not None:
        lines.append(f"| overlap (no training) | cos + {overlap['alpha']:g} × idf-weighted share of the question's "
                     f"tokens in the candidate (α chosen on validation) | 0 | – | {overlap['val_map']:.4f} | "
                     f"{overlap['test_map']:.4f} | {compare(overlap['aps'], ident)} | – |")
    for name, rows in by.items():
        p = rows[0]["params"]
        base = VARIANTS[name][3]
        vs_base = compare(avg_aps(name), avg_aps(base)) + f" ({base})" if base in by else "–"
        lines.append(
            f"| {name} | {VARIANTS[name][2]} | {p['core']:,} · {p['readout']:,} · {p['adapters']:,} | "
            f"{', '.join(str(r['best_epoch']) for r in rows)} | "
            f"{_mean_sd([r['val_map'] for r in rows if r['val_map'] is not None]) if rows[0]['val_map'] is not None else '–'} | "
            f"{_mean_sd([r['test_map'] for r in rows])} | {compare(avg_aps(name), ident)} | {vs_base} |")
    lines += ["", "Seconds per training run: " + ", ".join(
        f"{n} {statistics.mean(r['seconds'] for r in rows):.0f}" for n, rows in by.items()) + ".", ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 variants, 1 seed, 2 epochs, 1,000 training questions")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--limit", type=int, default=None, help="training questions (default: all)")
    ap.add_argument("--only", default="", help="comma-separated variants (default: all)")
    ap.add_argument("--max-val", type=int, default=2000, help="validation questions (early stopping)")
    ap.add_argument("--lr", type=float, default=1e-3, help="listwise learning rate")
    ap.add_argument("--overlap", action="store_true", help="add the untrained identity + idf-overlap row")
    ap.add_argument("--batch", type=int, default=32, help="listwise questions per step")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "tasks.md"))
    ap.add_argument("--merge", nargs="*", default=None, metavar="JSON",
                    help="only render: the runs of these .json files (written by earlier invocations with the same "
                         "settings) into --out and its .json")
    ap.add_argument("--summary", default=None, metavar="JSON",
                    help="also write one record per variant (means, intervals, parameters) here")
    ap.add_argument("--keep", action="store_true", help="keep the runs already in the output's .json (same "
                                                         "settings) and run only the missing (variant, seed) pairs")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    from cellnet_core.plugins import load
    from cellnet_training.listwise import selection_items

    names = [n for n in (args.only.split(",") if args.only else (QUICK if args.quick else list(VARIANTS))) if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        print(f"unknown variant(s) {unknown}; available: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    if args.quick:
        args.seeds, args.epochs, args.limit = 1, 2, args.limit or 1000
    _, reg = load()
    data = reg.build("dataset", {"name": "squad"}, None)
    split = {s: len(selection_items(data, s)[0]) for s in ("train", "val", "test")}
    t0 = time.perf_counter()
    ident = identity_aps(reg, data)
    print(f"identity test MAP {statistics.mean(ident):.4f}", file=sys.stderr, flush=True)
    overlap = overlap_row(reg, data, args.limit, args.max_val) if args.overlap else None
    if overlap:
        print(f"overlap (α={overlap['alpha']}): test MAP {overlap['test_map']:.4f}", file=sys.stderr, flush=True)
    train_cfg = {"epochs": args.epochs, "in_batch": 2, "early_stopping": 2}
    if args.max_val != 2000:
        train_cfg["max_val_questions"] = args.max_val
    if args.lr != 1e-3 or args.batch != 32:
        train_cfg.update({"lr": args.lr, "batch_size": args.batch})
    runs = []
    raw_path = Path(args.out).with_suffix(".json")
    settings = {"epochs": args.epochs, "limit": args.limit, "train": train_cfg}
    if args.merge is not None:
        seen = set()
        for f in args.merge:
            got = json.loads(Path(f).read_text(encoding="utf-8"))
            if got.get("settings") != settings:
                print(f"{f}: other settings ({got.get('settings')}); give the same --epochs/--limit", file=sys.stderr)
                return 2
            for r in got["runs"]:
                if (r["variant"], r["seed"]) not in seen:
                    seen.add((r["variant"], r["seed"]))
                    runs.append(r)
        raw_path.write_text(json.dumps({"settings": settings, "identity": ident, "runs": runs}) + "\n",
                            encoding="utf-8")
        text = render(runs, ident, args, len(ident), split, sum(r["seconds"] for r in runs), overlap)
        Path(args.out).write_text(text, encoding="utf-8")
        print(text)
        return 0
    if args.keep and raw_path.exists():
        old = json.loads(raw_path.read_text(encoding="utf-8"))
        if old.get("settings") == settings:
            runs = [r for r in old["runs"] if r["variant"] in VARIANTS]
    done = {(r["variant"], r["seed"]) for r in runs}
    for name in names:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            if (name, seed) in done:
                continue
            r = run_variant(reg, data, name, seed, train_cfg, args.limit)
            val = f"{r['val_map']:.4f}" if r["val_map"] is not None else "-"
            print(f"{name} seed {seed}: test MAP {r['test_map']:.4f} (val {val}, best epoch "
                  f"{r['best_epoch']}, {r['seconds']:.0f}s)", file=sys.stderr, flush=True)
            runs.append(r)
            raw_path.write_text(json.dumps({"settings": settings, "identity": ident, "runs": runs}) + "\n",
                                encoding="utf-8")
    text = render(runs, ident, args, len(ident), split, time.perf_counter() - t0, overlap)
    Path(args.out).write_text(text, encoding="utf-8")
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary(runs, ident, overlap), indent=1) + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
