"""Sweep of the default task with cellnet sweep (Optuna TPE), and the speed of two local workers.

    python bench/bench_sweep.py [--trials 20] [--seeds 3] [--epochs 6] [--work sweeps/bench]
                                [--out docs/results/sweep.md] [--skip-main] [--skip-workers]

1. The default config (configs/default.yaml: MiniLM → surface reshaper → NCA lattice → phrase bank,
   dialogue + InfoNCE on chatterbot) searched over core.steps, core.cell.name and training.lr:
   TPE, --seeds runs per trial (mean validation MRR), median pruner, --epochs epochs per run
   (the per-trial budget), then the best config retrained and tested beside the baselines.
2. One worker vs two on the same small grid sweep (a hashing teacher on the built-in greetings
   data: seconds per trial), in a fresh study each: wall time, the ratio, and that no grid point
   ran twice.

Writes the table, plots (copied next to the fragment) and the numbers into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TINY = """seed: 0
data: {name: greetings}
encoder: {name: hashing, dim: 64}
reshaper: {name: surface, shape: [8, 8, 4], channels: 4}
core: {name: lattice, cell: {name: nca, hidden: 16}, steps: 4}
decoder: {name: nearest}
training: {name: dialogue, epochs: 300, batch_size: 8, plots: false, early_stopping: 0}
"""
#: trials of several seconds each (300 epochs of the small greetings data): long enough that starting
#: a worker process (imports, plugins) does not dominate the comparison


def main_sweep(args, work: Path) -> dict:
    import yaml

    from cellnet_sweep.sweep import load_sweep, run_sweep

    spec = {
        "name": "default-steps-cell-lr",
        "base": str(ROOT / "configs" / "default.yaml"),
        "set": [f"training.epochs={args.epochs}", "training.plots=false", "training.early_stopping=0"],
        "space": {
            "core.steps": {"type": "int", "low": 2, "high": 10},
            "core.cell.name": {"type": "choice", "values": ["nca", "mlp", "gmlp"]},
            "training.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
        },
        "sampler": "tpe", "trials": args.trials, "seeds": args.seeds, "metric": "val_mrr",
        "pruner": "median", "pruner_startup_trials": 5, "pruner_warmup_epochs": 3,
        "final": {"baselines": ["identity", "mean", "ridge", "mlp"]},
    }
    work.mkdir(parents=True, exist_ok=True)
    path = work / "default.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    sweep = load_sweep(path, directory=work / "out")
    t0 = time.perf_counter()
    summary = run_sweep(sweep)
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    summary["sweep_file"] = spec
    return summary


def workers_ratio(work: Path) -> dict:
    """A 6-point grid, one seed, in a fresh study with 1 and then 2 local workers."""
    import optuna
    import yaml

    from cellnet_sweep.sweep import load_sweep, run_sweep

    out = {}
    for n in (1, 2):
        d = work / f"workers{n}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        (d / "base.yaml").write_text(TINY)
        spec = {"base": "base.yaml", "sampler": "grid", "seeds": 1, "pruner": "none",
                "space": {"core.steps": [1, 2, 3], "training.lr": [0.001, 0.003]},
                "final": {"enabled": False}}
        (d / "grid.yaml").write_text(yaml.safe_dump(spec))
        sweep = load_sweep(d / "grid.yaml", directory=d / "out")
        t0 = time.perf_counter()
        run_sweep(sweep, workers=n)
        wall = time.perf_counter() - t0
        study = optuna.load_study(study_name="grid", storage=sweep.storage_url)
        done = [t for t in study.trials if t.state.name == "COMPLETE"]
        points = [json.dumps(t.params, sort_keys=True) for t in done]
        out[n] = {"wall_seconds": round(wall, 1), "trials": len(done), "distinct": len(set(points)),
                  "workers_seen": len({t.user_attrs.get("worker") for t in done})}
    out["ratio"] = round(out[2]["wall_seconds"] / out[1]["wall_seconds"], 2)
    return out


def write_fragment(args, main: dict | None, ratio: dict | None, work: Path) -> None:
    out = Path(args.out)
    pics = out.parent / "sweep"
    pics.mkdir(parents=True, exist_ok=True)
    lines = ["## Sweep of the default task (`cellnet sweep`, Optuna)", ""]
    if main is not None:
        d = work / "out"
        s = main
        lines += [
            f"`bench/bench_sweep.py`: the default config searched over `core.steps` (2–10), `core.cell.name` "
            f"(nca, mlp, gmlp) and `training.lr` (1e-4–1e-2, log) with TPE, {s['seeds']} seeds per trial "
            f"(the objective is the mean validation MRR; the test split is not looked at), the median pruner "
            f"(after 5 finished trials, never before epoch 3 of a run), {s['trials']} trials. Per-trial budget: "
            f"the default config "
            f"with `training.epochs={args.epochs}` (the default trains 12), `early_stopping: 0`, no plots; "
            f"everything else as in configs/default.yaml (phrase bank decoder). Whole sweep: "
            f"{s['wall_seconds'] / 60:.1f} min wall on this machine (2 CPU cores); "
            f"{s['complete']} trials complete, {s['pruned']} pruned, {s['failed']} failed.", ""]
        if s.get("best"):
            b = s["best"]
            lines += [f"Best: trial {b['number']}, mean val MRR {b['value']:.4f} ± {b.get('std') or 0:.4f} "
                      f"(spread over seeds), `{json.dumps(b['params'])}`.", ""]
        lines += ["Every trial (best first; per-seed values; `seconds` is the trial's training time):", "",
                  (d / "trials.md").read_text(encoding="utf-8").strip(), ""]
        for name, title in (("history.png", "Optimisation history"), ("importances.png", "Parameter importances"),
                            ("parallel.png", "Parallel coordinates")):
            if (d / name).exists():
                shutil.copyfile(d / name, pics / name)
                lines += [f"![{title}](sweep/{name})", ""]
        if (d / "final.md").exists():
            final = (d / "final.md").read_text(encoding="utf-8").strip().splitlines()
            lines += ["### The best config, trained once more and tested", ""] + final[2:] + [""]
    if ratio is not None:
        r = ratio
        lines += ["### Two local workers vs one", "",
                  "A 6-point grid (`core.steps` × `training.lr`, one seed; hashing teacher, built-in greetings "
                  "data, an 8×8×4 lattice, 300 epochs per run: several seconds per trial), a fresh study each time:", "",
                  "| workers | wall s | finished trials | distinct grid points | processes that ran trials |",
                  "|---:|---:|---:|---:|---:|"]
        for n in (1, 2):
            lines.append(f"| {n} | {r[n]['wall_seconds']} | {r[n]['trials']} | {r[n]['distinct']} | "
                         f"{r[n]['workers_seen']} |")
        lines += ["", f"Wall-time ratio two workers / one: **{r['ratio']}** (each trial ran once). On this "
                  "machine's 2 CPU cores two processes each get about one "
                  "core; each worker also pays once for starting a process (imports, plugins).", ""]
    text = "\n".join(lines).rstrip() + "\n"
    if args.append and out.exists():
        text = out.read_text(encoding="utf-8").rstrip() + "\n\n" + text
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--work", default="sweeps/bench")
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "sweep.md"))
    p.add_argument("--skip-main", action="store_true")
    p.add_argument("--skip-workers", action="store_true")
    p.add_argument("--append", action="store_true")
    p.add_argument("--quick", action="store_true", help="4 trials, 1 seed, 2 epochs (a smoke run of the whole script)")
    args = p.parse_args()
    if args.quick:
        args.trials, args.seeds, args.epochs = 4, 1, 2
    work = Path(args.work)
    ratio = None if args.skip_workers else workers_ratio(work / "workers")
    if ratio is not None:
        (work).mkdir(parents=True, exist_ok=True)
        (work / "workers.json").write_text(json.dumps(ratio, indent=1))
        print(json.dumps(ratio), file=sys.stderr)
    main_summary = None if args.skip_main else main_sweep(args, work / "main")
    write_fragment(args, main_summary, ratio, work / "main")
    return 0


if __name__ == "__main__":
    sys.exit(main())
