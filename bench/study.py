"""The lattice study: every task, every lattice variant beside its baselines, in one command.

    .venv/bin/python bench/study.py            # the whole study (about 40 minutes on 2 cores, cached embeddings)
    .venv/bin/python bench/study.py --quick    # a smoke run of every part (writes under a temporary folder)
    .venv/bin/python bench/study.py --render   # only the headline again, from the parts' summaries on disk

Parts (each a bench script with fixed settings; each writes its own fragment of docs/RESULTS.md):

- ``training``: chatterbot, faq and chitchat, one embedding in and one out — the default pipeline
  (surface reshaper + NCA lattice, dialogue + InfoNCE) beside identity, mean, ridge, the equal-size
  residual MLP and the steps-0 ablation, 5 seeds (``bench_training.py`` → docs/results/training.md);
- ``squad``: SQuAD answer-sentence selection on all 7,774 training questions — the interaction-grid
  lattice, its equal-size 2D CNN, the readout-only ablation (steps 0), the pair MLP, the bi-encoder
  lattice and its equal-size MLP trained alike, the untrained lexical-overlap score, 5 seeds
  (``bench_tasks.py`` → docs/results/tasks.md; both sentence vectors on opposite faces, with and
  without enough steps to meet, are in tasks_2000.md: 5 seeds at 2,000 questions);
- ``context``: chitchat with the last 3 turns, 56,000 pairs (39,043 training items) — the context
  lattice (learned and exact placement) beside the last turn, the equal-size MLP over the turns and
  the MLP over the last turn alone, 5 seeds (``bench_context.py`` → docs/results/context.md).

Then docs/results/study.md: the headline table (each task's best lattice variant, chosen on
validation, against identity and against its equal-size baseline, with 95% paired-bootstrap
intervals and the parameter split), the time each part took and whether the study stayed within
40 minutes. Embeddings come from the on-disk cache (the first run on a machine encodes them once:
about 4 minutes for the 57.5k chitchat texts and 3 for SQuAD's sentences and token states).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
#: the study's time budget on 2 cores with cached embeddings, in minutes
BUDGET_MIN = 40

#: the sentence-vector lattices (faces-lattice, faces-short) are left out: on all the data they would take
#: 20 of the 40 minutes; their 5-seed rows at 2,000 questions are in tasks_2000.md
SQUAD_VARIANTS = "grid-lattice,grid-conv-small,grid-readout,pair-mlp,bi-lattice,bi-mlp"
#: part → (script, its arguments, the fragment it writes, what it covers)
PARTS: dict[str, tuple[str, list[str], str, str]] = {
    "training": ("bench_training.py", ["--seeds", "5"], "training.md",
                 "chatterbot, faq, chitchat: one embedding in, one out"),
    "squad": ("bench_tasks.py", ["--epochs", "3", "--max-val", "400", "--lr", "0.003", "--batch", "16", "--overlap",
                                 "--seeds", "5", "--only", SQUAD_VARIANTS], "tasks.md",
              "SQuAD answer-sentence selection: two inputs"),
    "context": ("bench_context.py", ["--max-pairs", "56000", "--seeds", "5", "--epochs", "10",
                                     "--variants", "learned,last,exact"], "context.md",
                "chitchat with the last 3 turns: three inputs"),
}


def run_part(name: str, out_dir: Path, quick: bool) -> float:
    """Run one part (its script with the study's settings); returns its wall-clock seconds."""
    script, args, fragment, _ = PARTS[name]
    where = out_dir.resolve()
    if where.is_relative_to(ROOT):  # the fragments show their command: paths inside the checkout stay relative
        where = where.relative_to(ROOT)
    cmd = [sys.executable, f"bench/{script}", *args, "--out", str(where / fragment),
           "--summary", str(where / f"study_{name}.json")]
    if quick:
        cmd.append("--quick")
    print(f"==> study: {name}: {' '.join(Path(c).name if i < 2 else c for i, c in enumerate(cmd))}",
          file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _interval(b: dict | None) -> str:
    if not b:
        return "–"
    return f"{b['diff']:+.4f} [{b['lo']:+.4f}, {b['hi']:+.4f}] {b['verdict']}"


def _params(p: dict | None) -> str:
    if not p:
        return "0"
    core = p.get("core", p.get("lattice", 0)) + p.get("mlp", 0)
    other = p.get("readout", 0) + p.get("adapters", 0)
    return f"{core:,} · {other:,}"


def _value(r: dict) -> str:
    return f"{r['mean']:.4f} ± {r['sd']:.4f}" if r.get("seeds", 0) > 1 else f"{r['mean']:.4f}"


def headline(out_dir: Path) -> list[str]:
    """The headline rows: per task, identity, each lattice variant and its equal-size baseline."""
    rows = ["| task | metric | model | parameters: core · readout and adapters | test (mean ± sd) | "
            "vs identity, 95% interval "
            "| vs its equal-size baseline |", "|---|---|---|---|---|---|---|"]
    f = out_dir / "study_training.json"
    if f.exists():
        for r in json.loads(f.read_text(encoding="utf-8")):
            if r["variant"] in ("identity", "lattice", "mlp", "reshaper only (steps 0)"):
                model = {"lattice": "default lattice (surface reshaper + NCA)", "mlp": "residual MLP (equal size)",
                         "identity": "identity (question's embedding)"}.get(r["variant"], r["variant"])
                parts = ([f"{_interval(r['vs_baseline'])} (mlp)"] if r.get("vs_baseline") else []) + (
                    [f"vs steps 0 {_interval(r['vs_ablation'])}"] if r.get("vs_ablation") else [])
                base = "; ".join(parts) or "–"
                rows.append(f"| {r['dataset']} (pooled answers) | {r['metric']} | {model} | {_params(r.get('params'))}"
                            f" | {_value(r)} | {_interval(r.get('vs_identity'))} | {base} |")
    f = out_dir / "study_squad.json"
    if f.exists():
        for r in json.loads(f.read_text(encoding="utf-8")):
            base = f"{_interval(r.get('vs_baseline'))} ({r['baseline']})" if r.get("vs_baseline") else "–"
            rows.append(f"| SQuAD selection | {r['metric']} | {r['variant']} | {_params(r.get('params'))} | "
                        f"{_value(r)} | {_interval(r.get('vs_identity'))} | {base} |")
    f = out_dir / "study_context.json"
    if f.exists():
        for r in json.loads(f.read_text(encoding="utf-8")):
            parts = ([f"{_interval(r['vs_baseline'])} ({r['baseline']})"] if r.get("vs_baseline") else []) + (
                [f"vs last-mlp {_interval(r['vs_last_mlp'])}"] if r.get("vs_last_mlp") else [])
            base = "; ".join(parts) or "–"
            rows.append(f"| chitchat + 3 turns | {r['metric']} | {r['variant']} | {_params(r.get('params'))} | "
                        f"{_value(r)} | {_interval(r.get('vs_identity'))} | {base} |")
    return rows


def _load(out_dir: Path, part: str) -> list[dict]:
    f = out_dir / f"study_{part}.json"
    return json.loads(f.read_text(encoding="utf-8")) if f.exists() else []


def targets(out_dir: Path) -> list[str]:
    """The targets, each with its verdict computed from the summaries: met, or missed and by how much."""
    def met(ok: bool) -> str:
        return "**met**" if ok else "**missed**"

    lines = []
    for r in _load(out_dir, "training"):
        if r["variant"] == "lattice":
            v, b = r["vs_identity"], r["vs_baseline"]
            lines.append(f"- {r['dataset']}: the default lattice beats identity — {met(v['verdict'] == 'better')} "
                         f"({_interval(v)}); not worse than the equal-size MLP — "
                         f"{met(b['verdict'] != 'worse')} ({_interval(b)}).")
    squad = {r["variant"]: r for r in _load(out_dir, "squad")}
    if "grid-lattice" in squad:
        r, ident = squad["grid-lattice"], squad["identity"]["mean"]
        lines.append(f"- SQuAD selection: a lattice variant (grid-lattice) beats identity with an interval above 0 — "
                     f"{met(r['vs_identity']['verdict'] == 'better')} ({_interval(r['vs_identity'])}); not worse "
                     f"than its equal-size baseline — {met(r['vs_baseline']['verdict'] != 'worse')} "
                     f"({_interval(r['vs_baseline'])}); the stretch, identity + 0.05 = {ident + 0.05:.4f} — "
                     f"{met(r['mean'] >= ident + 0.05)} ({r['mean']:.4f}).")
    ctx = {r["variant"]: r for r in _load(out_dir, "context")}
    lattices = [r for n, r in ctx.items() if n.endswith("-lattice")]
    if lattices:
        r = max(lattices, key=lambda x: x.get("val_mrr") or 0.0)
        lines.append(f"- chitchat with context: the context lattice ({r['variant']}, best on validation) beats the "
                     f"identity of the last turn with an interval above 0 — "
                     f"{met(r['vs_identity']['verdict'] == 'better')} ({_interval(r['vs_identity'])}).")
    return (["### Targets", "", "Each verdict is computed from the table below (95% paired-bootstrap intervals; "
             "\"better\" needs the interval above 0, \"not worse\" an interval that is not below 0).", ""]
            + lines + [""]) if lines else []


def render(out_dir: Path, times: dict[str, float], argv: list[str], reruns: list[str] | None = None) -> str:
    """docs/results/study.md: the command, the time per part, the headline table."""
    total = sum(times.values())
    again = (f" Rerun since, alone: {', '.join(reruns)} (`bench/study.py --only {','.join(reruns)}`); the "
             f"minutes below are each part's own.") if reruns else ""
    lines = [
        "## The lattice study: every task in one command", "",
        f"`.venv/bin/python bench/study.py {' '.join(argv)}`".replace(" `", "`") + f" — {time.strftime('%Y-%m-%d')}, "
        f"{platform.machine()}, {os.cpu_count()} cores, 2 torch threads, embeddings from the on-disk cache.{again}", "",
        "| part | what | fragment | minutes |", "|---|---|---|---:|"]
    for name, (_, _, fragment, what) in PARTS.items():
        if name in times:
            lines.append(f"| {name} | {what} | [{fragment}]({fragment}) | {times[name] / 60:.1f} |")
    verdict = "within" if total <= BUDGET_MIN * 60 else "over"
    lines += [f"| **all** | | | **{total / 60:.1f}** ({verdict} the {BUDGET_MIN}-minute budget) |", "",
              "Headline: each model's test score (mean ± sd over 5 seeds where trained; identity has none), the "
              "paired bootstrap (95%) of the per-question metric against identity (the question's own embedding; "
              "for context, the last turn's) and against the model's equal-size baseline. *Parameters*: the "
              "core's (the lattice's shared cell, or the baseline's CNN or MLP) · everything else that trains (the "
              "readout, the reshaper's adapters). "
              "Settings, epochs and every other row are in each part's fragment.", ""]
    lines += targets(out_dir)
    lines += ["### Every model", ""] + headline(out_dir)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="each part's --quick, written under a temporary folder")
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts (default: {','.join(PARTS)})")
    ap.add_argument("--render", action="store_true", help="no training: the headline again from the summaries")
    ap.add_argument("--out-dir", default=None, help="folder of the fragments and summaries (default docs/results; "
                                                    "with --quick a temporary folder)")
    raw = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(raw)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        print(f"study: unknown part(s) {unknown}; available: {', '.join(PARTS)}", file=sys.stderr)
        return 2
    out_dir = Path(args.out_dir) if args.out_dir else (Path(tempfile.mkdtemp(prefix="cellnet-study-"))
                                                       if args.quick else RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    times_file = out_dir / "study_times.json"
    saved = json.loads(times_file.read_text(encoding="utf-8")) if times_file.exists() else {}
    times, command, reruns = saved.get("minutes", {}), saved.get("command", []), saved.get("reruns", [])
    times = {k: 60 * v for k, v in times.items()}
    if not args.render:
        if set(parts) == set(PARTS):  # the whole study: its command; a subset is a rerun of those parts
            command, reruns = [a for a in raw if a != "--render"], []
        else:
            reruns = [*[r for r in reruns if r not in parts], *parts]
        for name in parts:
            times[name] = run_part(name, out_dir, args.quick)
            times_file.write_text(json.dumps({"command": command, "reruns": reruns,
                                              "minutes": {k: v / 60 for k, v in times.items()}}) + "\n",
                                  encoding="utf-8")
    text = render(out_dir, {k: times[k] for k in PARTS if k in times}, command, reruns)
    (out_dir / "study.md").write_text(text, encoding="utf-8")
    print(text)
    print(f"wrote {out_dir / 'study.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
