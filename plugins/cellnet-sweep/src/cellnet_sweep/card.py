"""Model cards: ``README.md`` in a run directory, in the Hugging Face model-card style.

YAML front matter (library, tags, datasets, licence, metrics) and then: the pipeline's parts with
their parameter counts, the data and its split sizes, the training settings and time, a summary of
the validation curve, the test metrics beside the baselines with their paired-bootstrap intervals
(once ``cellnet eval`` ran: it leaves ``eval.json`` in the run), limits and the data licence.

Written after every saved run (the ``cellnet_on_train_end`` hook), again after ``cellnet eval``
(``cellnet_on_eval_end``), and on demand by ``cellnet card RUN``. The card sits beside the run's
files and is not in its manifest: it describes the run and is rewritten as the run is measured,
so loading and verifying never depend on it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

CARD = "README.md"
#: the last ``cellnet eval`` result on the run (rows, comparisons), written by the eval hook
EVAL_FILE = "eval.json"

#: licences of the data the bundled datasets read (a dataset may also say it: ``licence`` attribute)
DATA_LICENCES = {
    "chatterbot": ("bsd-3-clause", "the ChatterBot corpus (chatterbot-corpus), BSD 3-Clause licence"),
    "squad": ("cc-by-sa-4.0", "SQuAD dev sets (Rajpurkar et al.), CC BY-SA 4.0"),
    "greetings": ("mit", "a tiny built-in example set, MIT like cellnet"),
}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def metrics_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Rows of ``metrics.jsonl`` (a damaged line is skipped)."""
    rows = []
    try:
        text = (Path(run_dir) / "metrics.jsonl").read_text(encoding="utf-8")
    except OSError:
        return rows
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def parameter_counts(run_dir: Path) -> dict[str, int]:
    """Trainable parameters per part (``reshaper``, ``core``) read from ``weights.safetensors``."""
    from safetensors import safe_open

    counts: dict[str, int] = {}
    path = Path(run_dir) / "weights.safetensors"
    if not path.exists():
        return counts
    with safe_open(str(path), framework="numpy") as f:
        for key in f.keys():
            n = 1
            for d in f.get_slice(key).get_shape():
                n *= int(d)
            part = key.split(".", 1)[0]
            counts[part] = counts.get(part, 0) + n
    return counts


def split_sizes(config: dict[str, Any], registry: Any) -> dict[str, int]:
    """Pairs (or selection questions) per split of the run's dataset; {} when it cannot be read."""
    try:
        data = registry.build("dataset", config["data"], None)
    except Exception:  # noqa: BLE001 - the card says the sizes are unknown
        return {}
    out = {}
    for split in ("train", "val", "test"):
        try:
            out[split] = len(list(data.pairs(split)))
        except Exception:  # noqa: BLE001
            try:
                out[split] = len(list(data.selection(split)))
            except Exception:  # noqa: BLE001
                pass
    return out


def data_licence(config: dict[str, Any], registry: Any = None) -> tuple[str, str]:
    """``(front-matter id, sentence)`` of the run's data licence."""
    name = str((config.get("data") or {}).get("name", "?"))
    if name in DATA_LICENCES:
        return DATA_LICENCES[name]
    if registry is not None:
        try:
            data = registry.build("dataset", config["data"], None)
            lic = getattr(data, "licence", None) or getattr(data, "license", None)
            if lic:
                return str(lic), str(lic)
        except Exception:  # noqa: BLE001
            pass
    return "other", f"the licence of the data behind dataset '{name}' (user data: check its source)"


def _settings(section: dict[str, Any], skip: tuple[str, ...] = ("name",)) -> str:
    parts = []
    for k, v in section.items():
        if k in skip or v in (None, {}, []):
            continue
        if isinstance(v, dict):
            v = v.get("name", v) if set(v) <= {"name"} or "name" in v else v
        parts.append(f"{k}={json.dumps(v) if not isinstance(v, (str, int, float)) else v}")
    return ", ".join(parts)


def _curve_summary(rows: list[dict[str, Any]], key: str, best_epoch: Any = None) -> list[str]:
    pts = [(r["epoch"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and "epoch" in r]
    if not pts:
        return ["No validation curve was recorded (a strategy without epochs, or no validation split)."]
    first, last = pts[0], pts[-1]
    best = next((p for p in pts if p[0] == best_epoch), None) or (
        max(pts, key=lambda p: p[1]) if key != "val_loss" else min(pts, key=lambda p: p[1]))
    lines = [f"`{key}`: {first[1]:.4f} at epoch {first[0]}"
             + (" (the untrained start)" if first[0] == 0 else "")
             + f", best {best[1]:.4f} at epoch {best[0]} (the saved weights), {last[1]:.4f} at the last epoch ({last[0]}).", "",
             "| epoch | " + key + " | train loss |", "|---:|---:|---:|"]
    shown = pts if len(pts) <= 12 else [pts[i] for i in sorted({round(j * (len(pts) - 1) / 11) for j in range(12)})]
    loss = {r["epoch"]: r.get("train_loss") for r in rows if "epoch" in r}
    for e, v in shown:
        tl = loss.get(e)
        lines.append(f"| {e} | {v:.4f} | " + (f"{tl:.4f}" if isinstance(tl, (int, float)) else "–") + " |")
    return lines


def render(run_dir: str | Path, registry: Any = None) -> str:
    """The card's Markdown for ``run_dir`` (see the module doc)."""
    from cellnet_core.config import read_yaml

    from cellnet_sweep.tracking import eval_markdown

    run = Path(run_dir)
    config = read_yaml(run / "config.yaml")
    manifest = _read_json(run / "manifest.json") or {}
    train = manifest.get("train") or {}
    evaluation = _read_json(run / EVAL_FILE)
    counts = parameter_counts(run)
    sizes = split_sizes(config, registry) if registry is not None else {}
    licence_id, licence_text = data_licence(config, registry)
    rows = metrics_rows(run)
    training = config.get("training") or {}
    data_name = (config.get("data") or {}).get("name", "?")
    val_key = "val_" + str(training.get("val_metric", "mrr") if training.get("val_metric", "auto") != "auto" else "mrr")
    if not any(val_key in r for r in rows) and any("val_map" in r for r in rows):
        val_key = "val_map"

    front: dict[str, Any] = {
        "library_name": "cellnet",
        "tags": ["cellnet", "sentence-similarity", "cellular-automata",
                 str((config.get("core") or {}).get("name", "core")), str(data_name)],
        "datasets": [str(data_name)],
        "license": licence_id,
        "pipeline_tag": "sentence-similarity",
    }
    encoder = config.get("encoder") or {}
    if encoder.get("model"):
        front["base_model"] = encoder["model"]
    if evaluation and evaluation.get("rows"):
        run_row = evaluation["rows"][0]
        front["model-index"] = [{
            "name": run.name,
            "results": [{
                "task": {"type": "sentence-similarity", "name": "answer retrieval"},
                "dataset": {"name": str(evaluation.get("data", data_name)), "type": str(data_name), "split": "test"},
                "metrics": [{"type": k, "value": round(float(v), 4)} for k, v in run_row.items()
                            if k not in ("name", "seconds") and isinstance(v, (int, float))],
            }],
        }]

    out = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {run.name}", ""]
    out.append("A cellnet run: text → teacher embedding → 3D cellular lattice → embedding → text. "
               "This card was written by cellnet (`cellnet card` regenerates it).")
    out += ["", "## Components", "", "| part | name | settings | trainable parameters |", "|---|---|---|---:|"]
    for section in ("encoder", "reshaper", "core", "decoder"):
        part = config.get(section) or {}
        n = counts.get(section)
        shown = f"{n:,}" if n is not None else ("frozen teacher" if section == "encoder" else "–")
        if section == "decoder":
            files = sorted(p.name for p in (run / "decoder").glob("*")) if (run / "decoder").is_dir() else []
            shown = f"fitted artefacts: {', '.join(files)}" if files else "–"
        out.append(f"| {section} | `{part.get('name', '?')}` | {_settings(part)} | {shown} |")
    total = sum(counts.values())
    out += ["", f"Trainable parameters in all (reshaper + core): {total:,}."]
    kernel = (manifest.get("run") or {}).get("kernel")
    if kernel:
        out.append(f"Lattice step kernel: `{kernel}`.")

    out += ["", "## Data", "", f"Dataset `{data_name}` ({_settings(config.get('data') or {}) or 'defaults'})."]
    if sizes:
        out += ["", "| split | pairs |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in sizes.items()]
    out += ["", "Training used the train split, model selection the validation split; the test split is "
            "held out for `cellnet eval`."]

    out += ["", "## Training", "", f"Strategy `{training.get('name', '?')}`: {_settings(training)}.", ""]
    if train:
        secs = train.get("seconds")
        out.append(f"Trained {train.get('epochs', '?')} epochs (best validation epoch {train.get('best_epoch', '?')})"
                   + (f" in {secs:.0f} s" if isinstance(secs, (int, float)) else "")
                   + f" on `{(manifest.get('run') or {}).get('device', config.get('device', '?'))}`, seed {config.get('seed', 0)}.")
        if train.get("untrained"):
            out += ["", "**Warning:** the saved weights are the untrained start: no epoch beat the initial "
                        "weights on validation."]
        final = {k: v for k, v in (train.get("metrics") or {}).items() if k.startswith("val_")}
        if final:
            out += ["", "Final validation metrics (the saved weights): "
                    + ", ".join(f"{k} {v:.4f}" for k, v in final.items()) + "."]
    plugins = manifest.get("plugins") or {}
    if plugins:
        out += ["", "Packages: " + ", ".join(f"{k} {v}" for k, v in sorted(plugins.items())) + "."]

    out += ["", "## Validation curve", ""] + _curve_summary(rows, val_key, train.get("best_epoch"))
    if (run / "training_curves.png").exists():
        out += ["", "![training curves](training_curves.png)"]

    out += ["", "## Test results", ""]
    if evaluation and evaluation.get("rows"):
        out.append("From `cellnet eval` (the run in the first row, then the baselines: identity = the question's "
                   "own embedding, ridge = a linear map fitted on the training pairs, mlp = an MLP of the same "
                   "size trained like the run).")
        out += ["", eval_markdown(evaluation).rstrip()]
    else:
        out.append(f"Not measured yet: `cellnet eval {run}` scores the run beside the identity, ridge and MLP "
                   "baselines on the test split, and rewrites this card with the results.")

    out += ["", "## Limits", "",
            "- Answers come from what the decoder holds (a phrase bank answers only with sentences it was fitted "
            "on) and below its `min_score` the pipeline says it has no confident match.",
            "- Trained and measured on one dataset; the metrics say nothing about other domains or languages.",
            "- The teacher encoder is frozen: its biases (and its licence) carry over to this run.",
            "- Validation numbers chose the saved epoch; only the test-split numbers above are unbiased."]
    out += ["", "## Licence", "", f"Data: {licence_text}. cellnet itself is MIT-licensed."]
    out += ["", "## Use", "", "```bash", f"cellnet ask {run} \"how are you?\"", f"cellnet eval {run}", "```",
            "", "```python", "import cellnet_core as cellnet", f"pipe = cellnet.load_run({str(run)!r})",
            "pipe.answer([\"how are you?\"])[0].text", "```", ""]
    return "\n".join(out)


def write_card(run_dir: str | Path, registry: Any = None) -> Path:
    """Write ``RUN/README.md`` (atomic) and return its path."""
    from cellnet_core.checkpoint import atomic_write_text

    path = Path(run_dir) / CARD
    atomic_write_text(path, render(run_dir, registry))
    return path


def save_eval(run_dir: str | Path, result: dict[str, Any]) -> Path:
    """Keep ``cellnet eval``'s result (rows, comparisons; no per-question detail) in ``RUN/eval.json``."""
    from cellnet_core.checkpoint import atomic_write_text

    keep = {k: v for k, v in result.items() if k not in ("per_question", "dump")}
    path = Path(run_dir) / EVAL_FILE
    atomic_write_text(path, json.dumps(keep, indent=1, default=str) + "\n")
    return path
