"""The ``cellnet`` command.

Exit codes: 0 success, 1 failure (a bug or an unexpected error), 2 bad input or config (one
readable line on stderr, no traceback; set ``CELLNET_DEBUG=1`` to see one anyway).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from cellnet_core.errors import CellnetError, ConfigError

log = logging.getLogger("cellnet")


# -- helpers ----------------------------------------------------------------------------------
def _load(quiet: bool = False):
    from cellnet_core.plugins import load

    pm, registry = load()
    if not quiet:
        for info in pm.report.failed:
            print(f"warning: plugin '{info.name}' failed to load: {info.error}", file=sys.stderr)
        for w in pm.report.warnings:
            print(f"warning: {w}", file=sys.stderr)
    return pm, registry


def _print(obj: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, ensure_ascii=False))


def _default_run_dir(config_path: str) -> Path:
    stem = Path(config_path).stem
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


# -- commands ---------------------------------------------------------------------------------
def cmd_plugins(args) -> int:
    pm, registry = _load(quiet=True)
    rows = [{"name": p.name, "distribution": p.distribution, "version": p.version, "module": p.module,
             "provides": p.provides, "error": p.error} for p in pm.report.plugins]
    if args.json:
        _print({"plugins": rows, "warnings": pm.report.warnings}, True)
        return 0
    for r in rows:
        status = f"FAILED: {r['error']}" if r["error"] else ", ".join(r["provides"]) or "(nothing registered)"
        print(f"{r['name']:<12} {r['distribution'] or '-':<28} {r['version'] or '-':<8} {status}")
    for w in pm.report.warnings:
        print(f"warning: {w}")
    return 0


def cmd_components(args) -> int:
    _, registry = _load()
    from cellnet_core.registry import KINDS, _unknown_message

    if args.kind and args.kind not in KINDS:
        raise ConfigError(_unknown_message("kind", args.kind, list(KINDS), "--kind"))
    rows = registry.describe(args.kind)
    if args.json:
        _print(rows, True)
        return 0
    kind = None
    for r in rows:
        if r["kind"] != kind:
            kind = r["kind"]
            print(f"{kind}:")
        miss = f"  [needs: {', '.join(r['missing'])}]" if r["missing"] else ""
        print(f"  {r['name']:<14} {r['summary']}  ({r['plugin']}){miss}")
    return 0


def cmd_validate(args) -> int:
    from cellnet_core.config import load_config

    _, registry = _load()
    bad = 0
    for path in args.configs:
        try:
            load_config(registry, path, args.set)
            print(f"{path}: ok")
        except ConfigError as exc:
            print(str(exc), file=sys.stderr)
            bad += 1
    return 2 if bad else 0


def cmd_schema(args) -> int:
    from cellnet_core.config import json_schema

    _, registry = _load()
    text = json.dumps(json_schema(registry), indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


def cmd_train(args) -> int:
    from cellnet_core.checkpoint import atomic_write_text
    from cellnet_core.config import apply_overrides, config_to_dict, load_config, read_yaml, validate_run_config
    from cellnet_core.pipeline import CONFIG_FILE, Pipeline
    from cellnet_core.run import RunContext

    pm, registry = _load()
    if args.nproc and args.nproc > 1:
        try:
            from cellnet_training.distributed import launch
        except ImportError:
            raise ConfigError("--nproc needs the cellnet-training plugin (pip install -e plugins/cellnet-training)") from None
        argv = [a for a in sys.argv[1:]]
        return int(launch(args.nproc, argv) or 0)
    if args.resume:
        run_dir = Path(args.resume)
        cfg_path = run_dir / CONFIG_FILE
        if not cfg_path.exists():
            raise ConfigError(f"{cfg_path}: missing; --resume needs a run directory made by 'cellnet train'")
        config = validate_run_config(registry, apply_overrides(read_yaml(cfg_path), args.set), source=str(cfg_path))
    else:
        if not args.config:
            raise ConfigError("train: give a CONFIG file or --resume RUN_DIR")
        config = load_config(registry, args.config, args.set)
        run_dir = Path(args.run_dir) if args.run_dir else _default_run_dir(args.config)
    # the dataset first: a bad data file fails before any model loads or any file is written
    data = registry.build("dataset", config.data, None)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    run_dir.mkdir(parents=True, exist_ok=True)
    import yaml

    if rank == 0:
        atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(config_to_dict(config), sort_keys=False))
    t0 = time.perf_counter()
    if world > 1 and "LOCAL_RANK" in os.environ:
        import torch

        if torch.cuda.is_available() and config.device in ("auto", "cuda"):
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # one GPU per process
    pipeline = Pipeline.build(config, registry)
    if rank == 0:
        print(f"run directory: {run_dir}", file=sys.stderr)
        kernel = getattr(pipeline.core, "kernel_name", None)
        if kernel:
            print(f"lattice kernel: {kernel}", file=sys.stderr)
    strategy = registry.build("strategy", config.training, None)
    run = RunContext(run_dir, seed=config.seed, resume=bool(args.resume), hook=pm.hook, rank=rank, world_size=world)
    result = strategy.fit(pipeline, data, run)
    if rank != 0:
        return 0
    extras = [p for p in sorted(run_dir.glob("*.png"))] + [p for p in (run_dir / "metrics.jsonl",) if p.exists()]
    pipeline.save(run_dir, extra_files=extras, manifest_extra={"train": {
        "epochs": result.epochs, "best_epoch": result.best_epoch, "seconds": round(time.perf_counter() - t0, 2),
        "metrics": result.metrics}})
    pm.hook.cellnet_on_train_end(run_dir=str(run_dir), result=result)
    shown = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.metrics.items())
    print(f"trained in {time.perf_counter() - t0:.1f}s; {shown}")
    print(f"saved run: {run_dir}")
    return 0


def _questions(args) -> list[str]:
    if args.texts:
        return list(args.texts)
    if sys.stdin is None:
        return []
    return [line.strip() for line in sys.stdin if line.strip()]


def cmd_ask(args) -> int:
    import torch

    from cellnet_core.pipeline import Pipeline

    _, registry = _load()
    pipe = Pipeline.load(args.run_dir, registry, device=args.device)
    interactive = not args.texts and sys.stdin is not None and sys.stdin.isatty()
    if interactive:
        print("cellnet ask: one question per line, Ctrl-D to end", file=sys.stderr)
        questions_iter = iter(lambda: input("> "), None)
    else:
        questions_iter = iter(_questions(args))
    results = []
    while True:
        try:
            q = next(questions_iter)
        except (StopIteration, EOFError):
            break
        if not q.strip():
            continue
        ans = pipe.answer([q], k=args.k)[0]
        row = {"question": q, "answer": ans.text, "score": ans.score, "candidates": ans.candidates,
               "steps": ans.steps}
        if args.baseline:
            with torch.no_grad():
                base = pipe.decoder.decode(pipe.encode([q]))[0]
            row["baseline_answer"] = base
        results.append(row)
        if not args.json:
            print(f"Q: {q}")
            shown = ans.text if ans.text else "(no confident match)"
            print(f"A: {shown}   [score {ans.score:.3f}" + (f", {ans.steps} steps]" if ans.steps else "]"))
            if args.baseline:
                print(f"   baseline (question's own embedding): {row['baseline_answer']}")
            sys.stdout.flush()
    if args.json:
        _print(results, True)
    return 0


def _baselines(pm, names: Sequence[str]):
    found = {}
    for group in pm.hook.cellnet_eval_baselines():
        for b in group or []:
            found.setdefault(b.name, b)
    out = []
    for n in names:
        if n not in found:
            raise ConfigError(f"eval.baselines: unknown '{n}'; available: {', '.join(sorted(found))}")
        out.append(found[n])
    return out


def cmd_eval(args) -> int:
    from cellnet_core.evaluation import evaluate_pairs, evaluate_selection, format_table
    from cellnet_core.pipeline import Pipeline

    pm, registry = _load()
    pipe = Pipeline.load(args.run_dir, registry, device=args.device)
    names = args.baselines.split(",") if args.baselines else list(pipe.config.eval.baselines)
    baselines = _baselines(pm, [n for n in names if n])
    data = registry.build("dataset", pipe.config.data, None)
    train = data.pairs("train")
    if args.data:
        kind = _data_kind(args.data)
        user = registry.build("dataset", {"name": kind, "test": args.data}, None)
        if kind == "selection":
            result = evaluate_selection(pipe, user.selection("test"), baselines, train)
        else:
            result = evaluate_pairs(pipe, train, user.pairs("test"), baselines,
                                    max_questions=pipe.config.eval.max_questions)
        result["data"] = args.data
    else:
        pool = None
        if pipe.config.eval.candidates == "all":
            pool = [p.answer for s in ("train", "val", "test") for p in data.pairs(s)]
        result = evaluate_pairs(pipe, train, data.pairs("test"), baselines, candidate_pool=pool,
                                max_questions=pipe.config.eval.max_questions)
        result["data"] = f"{pipe.config.data.name}:test"
    if args.json:
        _print(result, True)
    else:
        print(f"{result['data']}: {result['questions']} questions"
              + (f", {result['candidates']} candidate answers" if "candidates" in result else ""))
        print(format_table(result))
    return 0


def _data_kind(path: str) -> str:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{path}: no such file")
    if p.suffix.lower() in (".jsonl", ".json"):
        with open(p, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.strip():
                    try:
                        first = json.loads(line)
                    except json.JSONDecodeError:
                        from cellnet_core.errors import DataError

                        raise DataError(f"{path}: line 1: not valid JSON") from None
                    return "selection" if isinstance(first, dict) and "candidates" in first else "pairs"
    return "pairs"


def cmd_cache(args) -> int:
    from cellnet_core.cache import cache_clear, cache_info, default_cache_dir

    root = args.dir or default_cache_dir()
    if args.action == "clear":
        n = cache_clear(root)
        print(f"removed {n} cache file(s) from {root}")
        return 0
    rows = cache_info(root)
    if args.json:
        _print({"dir": str(root), "encoders": rows}, True)
        return 0
    print(f"embedding cache: {root}")
    if not rows:
        print("  (empty)")
    for r in rows:
        print(f"  {r['texts']:>8} texts  {r['bytes'] / 1e6:8.1f} MB  {r['shards']:>4} shards  {r['fingerprint']}")
    return 0


def cmd_viz(args) -> int:
    from cellnet_core.pipeline import Pipeline

    _, registry = _load()
    pipe = Pipeline.load(args.run_dir, registry)
    try:
        from cellnet_lattice.viz import render
    except ImportError:
        raise ConfigError("viz needs the cellnet-lattice plugin") from None
    if not hasattr(pipe.core, "trace"):
        raise ConfigError(f"viz: the run's core '{pipe.config.core.name}' is not a lattice (nothing to draw)")
    out = Path(args.out or Path(args.run_dir) / "viz")
    files = render(pipe, args.text, out)
    for f in files:
        print(f)
    return 0


def cmd_bench(args) -> int:
    import subprocess

    root = Path(args.root)
    scripts = sorted(root.glob("bench_*.py"))
    if not scripts:
        raise ConfigError(f"{root}: no bench_*.py scripts")
    for s in scripts:
        print(f"== {s}", flush=True)
        cmd = [sys.executable, str(s)] + (["--quick"] if args.quick else [])
        rc = subprocess.call(cmd)
        if rc:
            print(f"{s}: exit {rc}", file=sys.stderr)
            return 1
    return 0


# -- parser -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cellnet", description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("plugins", help="list plugins, versions and what each provides")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_plugins)

    s = sub.add_parser("components", help="list registered components")
    s.add_argument("--kind", help="encoder, reshaper, core, kernel, decoder, strategy or dataset")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_components)

    s = sub.add_parser("validate", help="check config files")
    s.add_argument("configs", nargs="+", metavar="CONFIG")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("schema", help="JSON Schema of a run config for the installed components")
    s.add_argument("--out", help="write to this file instead of stdout")
    s.set_defaults(func=cmd_schema)

    s = sub.add_parser("train", help="train a run from a config")
    s.add_argument("config", nargs="?", metavar="CONFIG")
    s.add_argument("--run-dir", help="where to write the run (default runs/<config>-<time>)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    s.add_argument("--nproc", type=int, default=1, help="processes for data-parallel training")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("ask", help="answer questions with a trained run")
    s.add_argument("run_dir", metavar="RUN_DIR")
    s.add_argument("texts", nargs="*", metavar="TEXT", help="questions (default: one per line from stdin)")
    s.add_argument("-k", type=int, default=5, help="candidates to report")
    s.add_argument("--json", action="store_true", help="candidates, scores and lattice steps as JSON")
    s.add_argument("--baseline", action="store_true", help="also show the answer of the question's own embedding")
    s.add_argument("--device", default=None)
    s.set_defaults(func=cmd_ask)

    s = sub.add_parser("eval", help="evaluate a run and the baselines on held-out data")
    s.add_argument("run_dir", metavar="RUN_DIR")
    s.add_argument("--data", metavar="FILE", help="a pairs (JSONL/CSV/TSV) or selection (JSONL) file")
    s.add_argument("--baselines", help="comma-separated baseline names (default: the config's eval.baselines)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--device", default=None)
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("cache", help="inspect or clear the embedding cache")
    s.add_argument("action", choices=["info", "clear"])
    s.add_argument("--dir", help="cache directory (default $CELLNET_CACHE_DIR or ~/.cache/cellnet/embeddings)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_cache)

    s = sub.add_parser("viz", help="PNG pictures of the lattice state for one text")
    s.add_argument("run_dir", metavar="RUN_DIR")
    s.add_argument("text")
    s.add_argument("--out", help="output folder (default RUN_DIR/viz)")
    s.set_defaults(func=cmd_viz)

    s = sub.add_parser("bench", help="run the benchmark scripts (they write docs/RESULTS.md fragments)")
    s.add_argument("--root", default="bench")
    s.add_argument("--quick", action="store_true")
    s.set_defaults(func=cmd_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CellnetError as exc:
        if os.environ.get("CELLNET_DEBUG"):
            raise
        msg = str(exc).strip() or type(exc).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
