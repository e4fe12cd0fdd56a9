"""Chit-chat with context: the last k turns of a conversation → the next turn, on the lattice.

Variants (every trained one through the same Engine, loss, negatives, optimiser, schedule, epochs
and early stopping on the validation split's pooled MRR; epoch 0, the untrained start, competes):

- ``last-turn``: the identity of the last turn (no parameters): the latest turn's own embedding;
- ``context-lattice``: ``context-planes`` (turn i on z-plane i through its own orthonormal adapter,
  read from the latest turn's plane) → NCA lattice; starts exactly at ``last-turn``;
- ``context-mlp``: an MLP over the concatenated turns, residual from the last turn (starts at
  ``last-turn``), its hidden width chosen to match the lattice run's parameter count;
- ``exact-lattice`` (``--variants exact``): ``context-planes`` with ``adapter: exact`` (no adapter
  parameters: all that is learned is the lattice's) and its equal-size MLP ``exact-mlp``;
- ``last-mlp`` (``--variants last``): the context-mlp's size fed the latest turn alone — what is
  learned without the earlier turns;
- ``frozen-``, ``noise-``, ``deep-lattice`` (``--variants tuned``): context-lattice with frozen
  adapters, with input noise, or with 6 steps and a cell of hidden 32.

Test metric: MRR of each test item's true next turn among the test split's pooled answers (each
once). Mean ± sd over seeds, and a paired bootstrap of per-item reciprocal ranks (averaged over
seeds) per comparison.

    .venv/bin/python bench/bench_context.py [--seeds 3] [--epochs 8] [--turns 3] [--variants learned,exact]
                                            [--hidden 16] [--max-pairs 56000] [--append]
                                            [--out docs/results/context.md]

Real MiniLM embeddings (through the on-disk cache; the first run encodes the 57.5k texts of 56,000 pairs once,
about 4 minutes on 2 cores),
real data (chitchat-dataset, whole conversations), CPU threads as given by --threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DATA = {"name": "chitchat", "max_pairs": 56000, "val_fraction": 0.1, "test_fraction": 0.2}
LATTICE = {"name": "lattice", "cell": {"name": "nca", "hidden": 16}, "steps": 3, "neighbourhood": "von-neumann",
           "boundary": "walls", "kernel": "auto"}


#: the NCA cell's hidden units (``--hidden``)
CELL_HIDDEN = [16]


def _reshaper(turns: int, adapter: str) -> dict:
    return {"name": "context-planes", "shape": [8, 8, turns], "channels": 6, "slots": turns, "adapter": adapter}


#: ``--variants tuned``: the learned-adapter lattice with one change each (chosen on validation MRR
#: against context-lattice): name → (training options, core options)
TUNED: dict[str, tuple[dict, dict]] = {
    "frozen-lattice": ({"lr_scale": {"reshaper": 0.0}}, {}),
    "noise-lattice": ({"input_noise": 0.02}, {}),
    "deep-lattice": ({}, {"steps": 6, "cell": {"name": "nca", "hidden": 32}}),
}


def _config(reg, turns: int, adapter: str, train_cfg: dict, seed: int, core: dict | None = None):
    from cellnet_core.config import validate_run_config

    return validate_run_config(reg, {
        "schema_version": 1, "seed": seed, "device": "cpu", "data": {**DATA, "context_turns": turns},
        "encoder": {"name": "minilm"}, "reshaper": _reshaper(turns, adapter),
        "core": {**LATTICE, "cell": {"name": "nca", "hidden": CELL_HIDDEN[0]}, "steps": max(LATTICE["steps"], turns - 1),
                 **(core or {})},
        "decoder": {"name": "nearest"},
        "training": {"name": "context", "fit_decoder": False, "plots": False, **train_cfg}}, source="bench_context")


def reciprocal_ranks(pred, bank, pos) -> list[float]:
    """Per item: 1 / rank of the true answer among ``bank`` by cosine (ties count against it)."""
    import torch.nn.functional as F

    sims = F.normalize(pred.float(), dim=-1) @ F.normalize(bank.float(), dim=-1).T
    target = sims.gather(1, pos[:, None])
    return (1.0 / (sims >= target).sum(1).float()).tolist()


def test_set(pipe, data, turns: int):
    from cellnet_training.context import context_answers, context_inputs, context_items

    items = context_items(data, "test", turns)
    bank, pos, _ = context_answers(pipe.encode, items)
    return context_inputs(pipe.encode, items, turns), bank, pos, items


def run_lattice(reg, data, name: str, turns: int, adapter: str, train_cfg: dict, seed: int, test,
                core: dict | None = None) -> dict:
    import torch

    from cellnet_core.pipeline import Pipeline
    from cellnet_core.run import RunContext
    from cellnet_training.context import ContextStrategy
    from cellnet_training.engine import PipelineModel, predict

    cfg = _config(reg, turns, adapter, train_cfg, seed, core)
    torch.manual_seed(seed)
    pipe = Pipeline.build(cfg, reg)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        result = ContextStrategy(cfg.training).fit(pipe, data, RunContext(d, seed=seed))
    seconds = time.perf_counter() - t0
    q, bank, pos, _ = test
    rr = reciprocal_ranks(predict(PipelineModel(pipe), q), bank, pos)
    split = pipe.reshaper.param_split()
    core = sum(p.numel() for p in pipe.core.parameters())
    return {"variant": name, "seed": seed, "best_epoch": result.best_epoch, "epochs": result.epochs,
            "val_mrr": result.metrics.get("val_mrr"), "test_mrr": statistics.mean(rr), "rr": rr,
            "seconds": seconds, "params": {"lattice": core, "adapters": split["adapters"],
                                           "total": core + split["adapters"]}}


def run_mlp(reg, data, name: str, turns: int, n_params: int, train_cfg: dict, seed: int, sets, test,
            last_only: bool = False) -> dict:
    import torch

    from cellnet_core.run import RunContext
    from cellnet_training.context import ContextMLP, mlp_hidden_for
    from cellnet_training.engine import Engine, ModuleModel, predict

    cfg = _config(reg, turns, "learned", train_cfg, seed)
    train, val = sets
    dim = train.bank.shape[1]
    torch.manual_seed(seed)
    mlp = ContextMLP(turns, dim, mlp_hidden_for(n_params, 1 if last_only else turns, dim), last_only=last_only)
    model = ModuleModel(mlp)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        result = Engine(cfg.training, label=name).fit(model, train, val, RunContext(d, seed=seed))
    seconds = time.perf_counter() - t0
    q, bank, pos, _ = test
    rr = reciprocal_ranks(predict(model, q), bank, pos)
    n = sum(p.numel() for p in mlp.parameters())
    return {"variant": name, "seed": seed, "best_epoch": result.best_epoch, "epochs": result.epochs,
            "val_mrr": result.metrics.get("val_mrr"), "test_mrr": statistics.mean(rr), "rr": rr,
            "seconds": seconds, "params": {"lattice": 0, "adapters": 0, "mlp": n, "total": n},
            "hidden": mlp.fc1.out_features}


def last_turn(val, test, dim: int) -> dict:
    from cellnet_training.context import LastTurn
    from cellnet_training.engine import ModuleModel, predict, ranking_metrics

    model = ModuleModel(LastTurn(dim))
    q, bank, pos, _ = test
    rr = reciprocal_ranks(predict(model, q), bank, pos)
    vm = ranking_metrics(predict(model, val.q), val.bank, val.pos)
    return {"variant": "last-turn", "seed": 0, "best_epoch": None, "epochs": 0, "val_mrr": vm["mrr"],
            "test_mrr": statistics.mean(rr), "rr": rr, "seconds": 0.0,
            "params": {"lattice": 0, "adapters": 0, "total": 0}}


def _mean_sd(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"


#: |Δ MRR| below this counts as the same ranks: a tenth of the 0.001 used where MRR is near 0.5, since
#: pooled next-turn MRR here is near 0.06
MIN_EFFECT = 1e-4


def compare(a: list[float], b: list[float]) -> tuple[str, str]:
    from cellnet_core import metrics as M

    c = M.compare_paired(a, b, resamples=10000, min_effect=MIN_EFFECT)
    return f"{c['diff']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}]", c["verdict"]


def _by_variant(runs: list[dict]) -> dict[str, list[dict]]:
    """The runs grouped by variant, in run order."""
    by: dict[str, list[dict]] = {}
    for r in runs:
        by.setdefault(r["variant"], []).append(r)
    return by


def _seed_mean(rows: list[dict], key: str) -> list[float]:
    """Per test item, ``key``'s value (reciprocal rank) averaged over the rows' seeds."""
    return [statistics.mean(x) for x in zip(*(r[key] for r in rows))]


DESCRIPTIONS = {
    "last-turn": "identity of the last turn: the latest turn's own embedding (no training)",
    "context-lattice": "context-planes (learned orthonormal adapter per turn, z-plane per turn) → NCA lattice",
    "context-mlp": "MLP over the concatenated turns, residual from the last turn, lattice run's size",
    "last-mlp": "MLP over the last turn alone, residual from it, lattice run's size: what is learned without "
                "the earlier turns",
    "exact-lattice": "context-planes with adapter: exact (no adapter parameters) → NCA lattice",
    "exact-mlp": "MLP over the concatenated turns, exact-lattice's size",
    "frozen-lattice": "context-lattice with its adapters frozen (lr_scale reshaper 0): only the lattice learns",
    "noise-lattice": "context-lattice with input_noise 0.02 (Gaussian, training steps only)",
    "deep-lattice": "context-lattice with 6 steps and an NCA cell of hidden 32",
}


#: each trained variant's equal-size baseline (the one the study's headline compares it with)
BASELINE = {"context-lattice": "context-mlp", "exact-lattice": "exact-mlp", "frozen-lattice": "context-mlp",
            "noise-lattice": "context-mlp", "deep-lattice": "context-mlp"}


def summary(runs: list[dict]) -> list[dict]:
    """One record per variant: test MRR mean/sd over seeds, parameters, the paired bootstrap against
    the last turn, against its equal-size MLP and against the last-turn-only MLP (when run) — what
    ``bench/study.py`` puts in its headline table."""
    from cellnet_core import metrics as M

    by = _by_variant(runs)

    def boot(a: str, b: str) -> dict | None:
        if a not in by or b not in by:
            return None
        return M.compare_paired(_seed_mean(by[a], "rr"), _seed_mean(by[b], "rr"), resamples=10000,
                                min_effect=MIN_EFFECT)

    out = []
    for name, rows in by.items():
        xs = [r["test_mrr"] for r in rows]
        vals = [r["val_mrr"] for r in rows if r.get("val_mrr") is not None]
        out.append({"variant": name, "what": DESCRIPTIONS[name], "metric": "test MRR", "mean": statistics.mean(xs),
                    "val_mrr": statistics.mean(vals) if vals else None,
                    "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0,
                    "seeds": len(rows) if name != "last-turn" else 0, "params": rows[0]["params"],
                    "vs_identity": boot(name, "last-turn") if name != "last-turn" else None,
                    "baseline": BASELINE.get(name), "vs_baseline": boot(name, BASELINE[name]) if name in BASELINE else None,
                    "vs_last_mlp": boot(name, "last-mlp") if name not in ("last-mlp", "last-turn") else None})
    return out


def render(runs: list[dict], args, sizes: dict, elapsed: float, argv: list[str]) -> str:
    by = _by_variant(runs)

    def avg_rr(name: str) -> list[float]:
        return _seed_mean(by[name], "rr")

    cores = os.cpu_count()
    lines = [
        f"## Chit-chat with context: the last turns on the lattice ({DATA['max_pairs']:,} pairs)",
        "",
        "Written by `bench/bench_context.py`. Command:",
        "",
        "```",
        ".venv/bin/python bench/bench_context.py " + " ".join(argv),
        "```",
        "",
        f"Data: `chitchat` (chitchat-dataset), {DATA['max_pairs']:,} pairs kept by whole conversations, split by "
        f"conversation (val {DATA['val_fraction']}, test {DATA['test_fraction']}); context items with the last "
        f"k = {args.turns} turns (fewer at a conversation's start: zeros in front): "
        f"**{sizes['train']} training items**, {sizes['val']} validation, **{sizes['test']} test items** "
        f"({sizes['test_full']} of them with all {args.turns} turns), {sizes['test_answers']} distinct test "
        f"answers. Frozen MiniLM (all-MiniLM-L6-v2) embeddings, D = {sizes['dim']}.",
        "",
        f"Task: rank the true next turn among all test answers (pooled, each once) by cosine to the model's "
        f"output; test MRR. Training: `context` strategy / the same Engine for every trained variant — "
        f"loss infonce (τ {args.temperature}), in-batch negatives, AdamW lr {args.lr}, batch {args.batch_size}, "
        f"cosine schedule, up to {args.epochs} epochs, early stopping after 3 epochs without validation "
        f"improvement, best validation epoch restored (epoch 0, the untrained start, included). "
        f"Seeds: {', '.join(str(s) for s in range(args.seeds))}. Lattice: {args.turns} z-planes of 8×8 cells, "
        f"6 channels, NCA cell (hidden {CELL_HIDDEN[0]}), {max(LATTICE['steps'], args.turns - 1)} steps, walls "
        f"(the oldest turn's plane reaches the read plane after {args.turns - 1} steps).",
        "",
        "| variant | what | parameters: lattice / adapters / MLP | val MRR | test MRR (mean ± sd) | best epochs | s / run |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rows in by.items():
        p = rows[0]["params"]
        params = f"{p.get('lattice', 0):,} / {p.get('adapters', 0):,} / {p.get('mlp', 0):,}"
        if "hidden" in rows[0]:
            params += f" (hidden {rows[0]['hidden']})"
        best = ", ".join("–" if r["best_epoch"] is None else str(r["best_epoch"]) for r in rows)
        val = _mean_sd([r["val_mrr"] for r in rows if r["val_mrr"] is not None])
        lines.append(f"| {name} | {DESCRIPTIONS[name]} | {params} | {val} | "
                     f"{_mean_sd([r['test_mrr'] for r in rows])} | {best} | "
                     f"{statistics.mean(r['seconds'] for r in rows):.0f} |")
    lines += ["", "Paired bootstrap (10,000 resamples) of per-item reciprocal rank, each variant's ranks averaged "
              f"over its seeds; 95% interval (|Δ| < {MIN_EFFECT:g} counts as the same ranks):", "",
              "| comparison | Δ test MRR [95% interval] | verdict |", "|---|---|---|"]
    pairs = [("context-lattice", "last-turn"), ("context-mlp", "last-turn"), ("context-lattice", "context-mlp"),
             ("last-mlp", "last-turn"), ("context-lattice", "last-mlp"), ("context-mlp", "last-mlp"),
             ("exact-lattice", "last-turn"), ("exact-mlp", "last-turn"), ("exact-lattice", "exact-mlp"),
             *((t, "last-turn") for t in TUNED), *((t, "context-lattice") for t in TUNED)]
    verdicts = {}
    for a, b in pairs:
        if a in by and b in by:
            diff, verdict = compare(avg_rr(a), avg_rr(b))
            verdicts[(a, b)] = verdict
            lines.append(f"| {a} − {b} | {diff} | {verdict} |")
    lattices = [n for n in by if n.endswith("-lattice")]
    if lattices and "last-turn" in by:
        best = max(lattices, key=lambda n: statistics.mean(r["val_mrr"] for r in by[n]))
        diff, target = compare(avg_rr(best), avg_rr("last-turn"))
        lines += ["", "### Target", "",
                  f"The lattice variant with the best mean validation MRR is `{best}`; against the identity of the "
                  f"last turn it is {diff}: the target — a context lattice above the last turn with an interval "
                  f"above 0 — is **{'met' if target == 'better' else 'missed'}** here ({target}).", ""]
    lines += ["### Notes", "",
              "- Parameter split: `context-planes` with learned adapters holds k input adapters (D × 8·8·6 each) "
              "and one output adapter; those are almost all of the trained parameters, the NCA cell is the "
              "lattice's share. The lattice carries every earlier turn to the read plane: without its steps the "
              "output depends on the latest turn alone.",
              "- `context-mlp` has the lattice run's total parameter count and sees the same concatenated "
              "turns; it is the bar a model over context embeddings has to clear.",
              *(["- `last-mlp` has the same size but sees the latest turn alone: a context model that beats the "
                 "last turn but not `last-mlp` has learned a mapping from the latest turn to the next, not "
                 "anything from the earlier turns."] if "last-mlp" in by else []),
              f"- {cores} CPU core(s) seen by the process, torch threads {args.threads}, "
              f"{platform.processor() or platform.machine()}; whole benchmark {elapsed / 60:.1f} min "
              "with cached embeddings.",
              ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=16, help="hidden units of the lattice's NCA cell")
    ap.add_argument("--variants", default="learned",
                    help="comma-separated: learned (context-lattice, context-mlp), exact (exact-lattice, exact-mlp), "
                         "last (last-mlp: the learned lattice's size, the last turn only; needs learned), "
                         "tuned (frozen-, noise-, deep-lattice: the learned lattice with one change each)")
    ap.add_argument("--max-pairs", type=int, default=DATA["max_pairs"],
                    help="chitchat pairs kept, by whole conversations (the ~131k of the corpus at most)")
    ap.add_argument("--append", action="store_true",
                    help="append this invocation's tables to --out instead of replacing it")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "context.md"))
    ap.add_argument("--json", default=None, help="also write every run's numbers here")
    ap.add_argument("--summary", default=None, metavar="JSON",
                    help="also write one record per variant (means, intervals, parameters) here")
    ap.add_argument("--quick", action="store_true", help="1 seed, 2 epochs (a smoke run of the whole script)")
    raw = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(raw)
    if args.quick:
        args.seeds, args.epochs = 1, 2

    import torch

    torch.set_num_threads(args.threads)
    CELL_HIDDEN[0] = args.hidden
    DATA["max_pairs"] = args.max_pairs
    from cellnet_core.pipeline import Pipeline
    from cellnet_core.plugins import load
    from cellnet_training.context import context_sets, context_items

    t_all = time.perf_counter()
    _, reg = load(autoload=True)
    train_cfg = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "loss": "infonce",
                 "temperature": args.temperature, "early_stopping": 3}
    cfg = _config(reg, args.turns, "learned", train_cfg, 0)
    data = reg.build("dataset", cfg.data)
    pipe = Pipeline.build(cfg, reg)
    train, val, _ = context_sets(pipe, data, cfg.training, args.turns)
    test = test_set(pipe, data, args.turns)
    dim = train.bank.shape[1]
    items = context_items(data, "test", args.turns)
    sizes = {"train": train.q.shape[0], "val": val.q.shape[0], "test": len(items),
             "test_full": sum(len(it.turns) == args.turns for it in items),
             "test_answers": test[1].shape[0], "dim": dim}
    print(f"items: {sizes}", file=sys.stderr)
    runs = [last_turn(val, test, dim)]
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(chosen) - {"learned", "exact", "last", "tuned"})
    if unknown:
        ap.error(f"--variants: unknown {unknown}; available: learned, exact, last, tuned")
    if "last" in chosen and "learned" not in chosen:
        ap.error("--variants: last is sized by the learned lattice; give learned,last")
    variants = [v for v in (("context-lattice", "learned", "context-mlp"), ("exact-lattice", "exact", "exact-mlp"))
                if v[1] in chosen]
    for lat, adapter, mlp in variants:
        for seed in range(args.seeds):
            r = run_lattice(reg, data, lat, args.turns, adapter, train_cfg, seed, test)
            print(f"{lat} seed {seed}: test MRR {r['test_mrr']:.4f} (best epoch {r['best_epoch']}, "
                  f"{r['seconds']:.0f} s)", file=sys.stderr)
            runs.append(r)
            m = run_mlp(reg, data, mlp, args.turns, r["params"]["total"], train_cfg, seed, (train, val), test)
            print(f"{mlp} seed {seed}: test MRR {m['test_mrr']:.4f} (best epoch {m['best_epoch']}, "
                  f"{m['seconds']:.0f} s)", file=sys.stderr)
            runs.append(m)
            if adapter == "learned" and "last" in chosen:
                m = run_mlp(reg, data, "last-mlp", args.turns, r["params"]["total"], train_cfg, seed, (train, val),
                            test, last_only=True)
                print(f"last-mlp seed {seed}: test MRR {m['test_mrr']:.4f} (best epoch {m['best_epoch']}, "
                      f"{m['seconds']:.0f} s)", file=sys.stderr)
                runs.append(m)
    if "tuned" in chosen:
        for name, (extra_train, extra_core) in TUNED.items():
            for seed in range(args.seeds):
                r = run_lattice(reg, data, name, args.turns, "learned", {**train_cfg, **extra_train}, seed, test,
                                extra_core)
                print(f"{name} seed {seed}: test MRR {r['test_mrr']:.4f} (val {r['val_mrr']:.4f}, best epoch "
                      f"{r['best_epoch']}, {r['seconds']:.0f} s)", file=sys.stderr)
                runs.append(r)
    runs.sort(key=lambda r: [n for n in DESCRIPTIONS].index(r["variant"]))
    text = render(runs, args, sizes, time.perf_counter() - t_all, raw)
    out = Path(args.out)
    if args.append and out.exists():
        # a further invocation: its tables under their own heading, the first one's kept
        body = text.split("\n", 2)[2]
        heading = f"### Variants: {args.variants}, NCA cell hidden {args.hidden}"
        text = out.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + heading + "\n\n" + body
    out.write_text(text, encoding="utf-8")
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary(runs), indent=1) + "\n", encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps([{k: v for k, v in r.items() if k != "rr"} for r in runs], indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
