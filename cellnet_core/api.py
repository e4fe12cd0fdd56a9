"""The Python API: what the ``cellnet`` command does, as functions for scripts and notebooks.

In a notebook::

    import cellnet_core as cellnet

    plugins = cellnet.load_plugins()                       # discovery, once
    config = cellnet.load_config("configs/default.yaml", ["training.epochs=2"], plugins=plugins)
    pipe = cellnet.train(config, "runs/demo", plugins=plugins)     # -> Pipeline, saved in runs/demo
    pipe.answer(["how are you?"])[0].text
    pipe = cellnet.load_run("runs/demo", plugins=plugins)          # later, or elsewhere
    cellnet.evaluate(pipe, plugins=plugins)["rows"][0]["mrr"]

Every function that needs the installed components takes ``plugins`` (what :func:`load_plugins`
returned) and discovers them itself when it is left out. Bad input raises a
:class:`~cellnet_core.errors.CellnetError` whose message is one readable line.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, NamedTuple, Sequence

from cellnet_core.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from cellnet_core.pipeline import Answer, Pipeline
    from cellnet_core.plugins import CellnetPluginManager
    from cellnet_core.registry import Registry

__all__ = ["Plugins", "load_plugins", "load_config", "resolved_config", "train", "load_run", "answer",
           "evaluate", "check_run_dir", "untrained_warning", "find_run_config", "resume_source"]


class Plugins(NamedTuple):
    """What :func:`load_plugins` found: the pluggy manager (hooks, discovery report) and the registry."""

    manager: "CellnetPluginManager"
    registry: "Registry"


def load_plugins() -> Plugins:
    """Discover the installed plugins (entry-point group ``cellnet.plugins``) and the built-in parts.

    Returns :class:`Plugins` ``(manager, registry)``; ``manager.report`` lists each plugin, its
    version and what failed to load (a broken plugin is reported there, the others still load).
    """
    from cellnet_core.plugins import load

    pm, registry = load()
    return Plugins(pm, registry)


def _plugins(plugins: Plugins | tuple | None) -> Plugins:
    if plugins is None:
        return load_plugins()
    return Plugins(*plugins)


def load_config(source: str | Path | dict[str, Any] | "BaseModel", overrides: Sequence[str] = (), *,
                plugins: Plugins | None = None) -> "BaseModel":
    """A validated run config from a YAML file, a run directory (its ``config.yaml``) or a mapping.

    ``overrides`` are ``"a.b=value"`` strings, as ``--set`` takes them (the value is read as YAML).
    Raises :class:`~cellnet_core.errors.ConfigError` with ``source: dotted.path: message`` lines.
    An already validated config is returned as is (overrides applied to it).
    """
    from pydantic import BaseModel

    from cellnet_core.config import apply_overrides, config_to_dict, load_config as _load, validate_run_config

    registry = _plugins(plugins).registry
    if isinstance(source, BaseModel):
        if not overrides:
            return source
        return validate_run_config(registry, apply_overrides(config_to_dict(source), list(overrides)),
                                   source="config")
    if isinstance(source, dict):
        return validate_run_config(registry, apply_overrides(source, list(overrides)), source="config")
    path = Path(source)
    if path.is_dir():
        path = find_run_config(path)
    return _load(registry, path, list(overrides))


def find_run_config(run_dir: str | Path) -> Path:
    """The ``config.yaml`` of a run directory, or of its interrupted run (``.<name>.partial``)."""
    from cellnet_core.pipeline import CONFIG_FILE
    from cellnet_core.run import partial_dir, target_of

    target = target_of(run_dir)
    for d in (Path(run_dir), target, partial_dir(target)):
        if (d / CONFIG_FILE).exists():
            return d / CONFIG_FILE
    raise ConfigError(f"{run_dir}: no {CONFIG_FILE} here; is this a run directory made by 'cellnet train'?")


def resume_source(run_dir: str | Path) -> Path:
    """The folder ``--resume RUN_DIR`` continues: the interrupted run in ``.<name>.partial`` when
    there is one, else the complete run itself."""
    from cellnet_core.run import partial_dir, target_of

    target = target_of(run_dir)
    partial = partial_dir(target)
    return partial if partial.exists() else target


def resolved_config(source: str | Path | dict[str, Any], overrides: Sequence[str] = (), *,
                    plugins: Plugins | None = None) -> dict[str, Any]:
    """The run config as plain data with every default filled in (what ``cellnet config`` prints)."""
    from cellnet_core.config import config_to_dict

    return config_to_dict(load_config(source, overrides, plugins=plugins))


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _untrained(pipeline: "Pipeline", before: dict[str, Any], best_epoch: int | None) -> bool:
    """True when the pipeline has parameters and the saved ones are the untrained start."""
    import torch

    after = pipeline.state_tensors()
    if not after:
        return False
    if best_epoch == 0:
        return True
    return all(k in before and torch.equal(before[k], v.detach().cpu()) for k, v in after.items())


UNTRAINED_NOTE = ("the saved weights are the untrained start (best validation epoch 0: no epoch beat the "
                  "initial weights on validation; or training changed no weight)")


def train(config: str | Path | dict[str, Any] | "BaseModel" | None, run_dir: str | Path, *,
          overwrite: bool = False, resume: bool = False, overrides: Sequence[str] = (),
          plugins: Plugins | None = None, echo: Callable[[str], None] | None = _stderr,
          extras: dict[str, Any] | None = None, restart: bool = False) -> "Pipeline":
    """Train a run into ``run_dir`` and return its :class:`~cellnet_core.pipeline.Pipeline`.

    ``config``: a YAML path, a mapping or a validated config (see :func:`load_config`); with
    ``resume=True`` it may be ``None`` (the run's own config is used, ``overrides`` applied).

    The run is written into the hidden sibling ``.<name>.partial`` and moved to ``run_dir`` only
    when complete, so ``run_dir`` never holds a half-made run. A non-empty ``run_dir`` is refused
    unless ``overwrite`` (the old run is replaced once the new one is complete) or ``resume``
    (continue the interrupted run in ``.<name>.partial``, or train a complete run further).
    Everything that can be checked before training (config, data files, the parts being
    buildable) is checked before any file is written. One process writes a run at a time (a
    second is refused, naming the first: :func:`cellnet_core.run.lock_run_dir`). A resumed run
    is verified first and may change only the config keys in
    :data:`cellnet_core.run.RESUMABLE_KEYS`; ``restart`` trains it again from scratch (the way
    on when its training state is gone).

    ``echo`` receives the progress lines (run directory, kernel, summary; default: stderr; ``None``
    is silent). ``extras`` are passed to the strategy through ``RunContext.extras``. The returned
    pipeline has ``run_dir`` (the final directory) and ``train_info`` (the manifest's ``train``
    entry: epochs, best_epoch, seconds, metrics, untrained).
    """
    from cellnet_core.run import holds_lock, lock_run_dir, release_run_dir

    launched = os.environ.get(STAGING_ENV)  # a worker of a data-parallel launch: its parent holds the lock
    mine = not launched and not holds_lock(run_dir)  # released here, however training ends
    if not launched:
        lock_run_dir(run_dir)
    try:
        return _train(config, run_dir, overwrite=overwrite, resume=resume, overrides=overrides, plugins=plugins,
                      echo=echo, extras=extras, restart=restart)
    finally:
        if mine:
            release_run_dir(run_dir)


def _train(config: Any, run_dir: str | Path, *, overwrite: bool, resume: bool, overrides: Sequence[str],
           plugins: Plugins | None, echo: Callable[[str], None] | None, extras: dict[str, Any] | None,
           restart: bool) -> "Pipeline":
    import yaml

    from cellnet_core.checkpoint import atomic_write_text
    from cellnet_core.config import check_memory, config_to_dict
    from cellnet_core.pipeline import CONFIG_FILE, Pipeline
    from cellnet_core.run import (RunContext, check_resume_config, config_hash, partial_dir, prepare_run_dir,
                                  publish_run_dir, target_of)

    say = echo or (lambda line: None)
    pm, registry = _plugins(plugins)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launched = os.environ.get(STAGING_ENV)  # a worker of a data-parallel launch: the parent prepared it
    target = Path(os.environ.get(TARGET_ENV) or run_dir) if launched else target_of(run_dir)
    if resume and not launched:
        prepare_run_dir(target, resume=True, overwrite=overwrite, dry_run=True, restart=restart)
    if resume and config is None:
        config = find_run_config(launched or resume_source(target))
    if config is None:
        raise ConfigError("train: give a config (a YAML file, a mapping or a validated config)")
    where = str(config) if isinstance(config, (str, Path)) else "config"
    config = load_config(config, overrides, plugins=(pm, registry))
    check_memory(config, where)  # a lattice too large for this machine fails before anything is allocated
    check_baselines(config, pm, where)  # what eval would reject once the run is trained
    if resume and not restart:  # a resumed run continues under its own config (resumable keys aside)
        source = Path(launched) if launched else resume_source(target)
        check_resume_config(source, load_config(find_run_config(source), plugins=(pm, registry)), config)
    if not launched and not resume:
        prepare_run_dir(target, overwrite=overwrite, dry_run=True)
    # the dataset first: a bad data file fails before any model loads or any file is written
    data = registry.build("dataset", config.data, None)
    if world > 1 and "LOCAL_RANK" in os.environ:
        import torch

        if torch.cuda.is_available() and config.device in ("auto", "cuda"):
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # one GPU per process
    t0 = time.perf_counter()
    pipeline = Pipeline.build(config, registry)
    strategy = registry.build("strategy", config.training, None)
    if launched:
        partial = Path(launched)
    else:
        partial = prepare_run_dir(target, overwrite=overwrite, resume=resume, restart=restart)
    try:
        if rank == 0:
            atomic_write_text(partial / CONFIG_FILE, yaml.safe_dump(config_to_dict(config), sort_keys=False))
            say(f"run directory: {target} (written in {partial.name} until complete)")
            kernel = getattr(pipeline.core, "kernel_name", None)
            if kernel:
                say(f"lattice kernel: {kernel}")
        before = {k: v.detach().cpu().clone() for k, v in pipeline.state_tensors().items()}
        run = RunContext(partial, seed=config.seed, resume=resume, hook=pm.hook, rank=rank, world_size=world,
                         config_hash=config_hash(config), restart=restart)
        run.extras.update(extras or {})
        result = strategy.fit(pipeline, data, run)
        pipeline.run_dir = target
        if rank != 0:
            return pipeline
        info = {"epochs": result.epochs, "best_epoch": result.best_epoch,
                "seconds": round(time.perf_counter() - t0, 2), "metrics": result.metrics,
                "untrained": _untrained(pipeline, before, result.best_epoch)}
        extra_files = sorted(partial.glob("*.png")) + [p for p in (partial / "metrics.jsonl",) if p.exists()]
        extra_files += run.state_files()  # what a resume reads back: verified with the rest
        pipeline.save(partial, extra_files=extra_files, manifest_extra={"train": info})
    except BaseException:
        if rank == 0 and not launched:  # a launch's parent speaks once for all its workers
            if not resume and not _has_progress(partial):
                shutil.rmtree(partial, ignore_errors=True)  # nothing to resume: leave no trace
            else:
                say(interrupted_note(partial, target))
        raise
    publish_run_dir(partial, target)
    pipeline.train_info = info
    pm.hook.cellnet_on_train_end(run_dir=str(target), result=result)
    shown = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.metrics.items())
    say(f"trained in {time.perf_counter() - t0:.1f}s; {shown}" if shown else
        f"done in {time.perf_counter() - t0:.1f}s")
    if info["untrained"]:
        say(f"WARNING: {target}: {UNTRAINED_NOTE}; try more epochs, another lr or loss")
    return pipeline


def _has_progress(partial: Path) -> bool:
    """True when a partial run holds more than its config (a checkpoint, metrics: worth resuming)."""
    from cellnet_core.pipeline import CONFIG_FILE

    if not partial.is_dir():
        return False
    return any(p.name not in (CONFIG_FILE, ".cellnet-writer") for p in partial.iterdir())


def interrupted_note(partial: str | Path, run_dir: str | Path) -> str:
    """The line that says where an interrupted run is kept and how to continue it."""
    return f"the interrupted run is kept in {partial}; continue it with: cellnet train --resume {run_dir}"


#: Set by a data-parallel launch for its workers: the prepared partial directory and the run directory.
STAGING_ENV, TARGET_ENV = "CELLNET_RUN_PARTIAL", "CELLNET_RUN_TARGET"


def untrained_warning(run_dir: str | Path) -> str | None:
    """One warning line when the run's saved weights are its untrained start, else ``None``.

    Read from the manifest's ``train`` entry (``untrained``, or ``best_epoch`` 0 for runs saved
    before that flag existed).
    """
    from cellnet_core.checkpoint import read_manifest

    try:
        train_info = read_manifest(run_dir).get("train") or {}
    except Exception:  # noqa: BLE001 - loading reports a damaged manifest with its own message
        return None
    if train_info.get("untrained") or (train_info.get("untrained") is None and train_info.get("best_epoch") == 0):
        return f"warning: {run_dir}: {UNTRAINED_NOTE}"
    return None


def check_run_dir(run_dir: str | Path, *, verify: bool = True) -> None:
    """Raise :class:`~cellnet_core.errors.CheckpointError` unless ``run_dir`` is a complete run:
    no such folder, an interrupted run (it says how to resume it), or (``verify``) a file that is
    missing or does not match the manifest."""
    from cellnet_core.checkpoint import verify_manifest
    from cellnet_core.errors import CheckpointError
    from cellnet_core.run import partial_dir, target_of

    target = target_of(run_dir)
    if (Path(run_dir) != target or not target.exists()) and partial_dir(target).exists():
        raise CheckpointError(f"{target}: not complete; an interrupted run waits in {partial_dir(target)}: "
                              f"continue it with 'cellnet train --resume {target}'")
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"{run_dir}: no such run directory")
    if verify:
        verify_manifest(run_dir)


def load_run(run_dir: str | Path, *, device: str | None = None, plugins: Plugins | None = None,
             warn: bool = True) -> "Pipeline":
    """Load a trained run; every file is checked against the manifest first.

    A missing or damaged file raises :class:`~cellnet_core.errors.CheckpointError` naming it. When
    the saved weights are the untrained start, ``warn`` issues a :class:`UserWarning` saying so.
    """
    from cellnet_core.pipeline import Pipeline

    check_run_dir(run_dir, verify=False)
    registry = _plugins(plugins).registry
    pipe = Pipeline.load(run_dir, registry, device=device)
    note = untrained_warning(run_dir)
    if warn and note:
        warnings.warn(note.removeprefix("warning: "), UserWarning, stacklevel=2)
    return pipe


def _pipeline(run: "Pipeline | str | Path", plugins: Plugins | None, device: str | None = None) -> "Pipeline":
    if isinstance(run, (str, Path)):
        return load_run(run, plugins=plugins, device=device)
    return run


def answer(run: "Pipeline | str | Path", questions: str | Iterable[str], k: int = 5, *,
           plugins: Plugins | None = None) -> "list[Answer]":
    """Answer questions with a pipeline or a run directory (see :meth:`Pipeline.answer`).

    ``questions``: one text or several. Returns one :class:`~cellnet_core.pipeline.Answer` each:
    ``text``, ``score`` and up to ``k`` ``candidates``.
    """
    texts = [questions] if isinstance(questions, str) else list(questions)
    return _pipeline(run, plugins).answer(texts, k=k)


#: the baselines cellnet-core itself provides (its built-in plugin's ``cellnet_eval_baselines``)
CORE_BASELINES = ("identity", "mean", "ridge")


def check_baselines(config: Any, pm: Any, source: str = "config") -> None:
    """Refuse a config whose ``eval.baselines`` names a baseline no plugin provides (what ``cellnet
    eval`` would reject after training), naming the available ones. The plugins' baselines hook is
    called only for names beyond the core's own (it may import torch)."""
    check_baseline_names(list(getattr(getattr(config, "eval", None), "baselines", None) or []), pm, source)


def check_baseline_names(names: Sequence[str], pm: Any, source: str = "config",
                         field: str = "eval.baselines") -> None:
    """Refuse baseline ``names`` (given at ``field``, e.g. a sweep's ``final.baselines``) that no
    plugin provides, naming the available ones; the baselines hook is called only for names beyond
    the core's own."""
    if all(n in CORE_BASELINES for n in names):
        return
    try:
        _baselines(pm, names, field)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _baselines(pm: Any, names: Sequence[str], field: str = "eval.baselines") -> list[Any]:
    found: dict[str, Any] = {}
    for group in pm.hook.cellnet_eval_baselines():
        for b in group or []:
            found.setdefault(b.name, b)
    out = []
    for n in names:
        if n not in found:
            raise ConfigError(f"{field}: unknown '{n}'; available: {', '.join(sorted(found))}")
        out.append(found[n])
    return out


def data_kind(path: str | Path) -> str:
    """``"selection"`` for a JSONL file whose rows have ``candidates``, else ``"pairs"``."""
    import json

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{path}: no such file")
    if p.is_dir():
        raise ConfigError(f"{path}: is a directory, expected a pairs or selection file")
    if p.suffix.lower() in (".jsonl", ".json"):
        with open(p, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.strip():
                    try:
                        first = json.loads(line)
                    except (json.JSONDecodeError, RecursionError):  # deep nesting: RecursionError
                        from cellnet_core.errors import DataError

                        raise DataError(f"{path}: line 1: not valid JSON") from None
                    return "selection" if isinstance(first, dict) and "candidates" in first else "pairs"
    return "pairs"


def _selection_items(dataset: Any, split: str) -> list[Any]:
    """The dataset's answer-selection items of ``split`` ([] for a dataset without them)."""
    from cellnet_core.errors import DataError

    if not callable(getattr(dataset, "selection", None)):
        return []
    try:
        return list(dataset.selection(split) or [])
    except (NotImplementedError, DataError):
        return []


#: what ``cellnet eval`` says about answer-selection data and text metrics
SELECTION_TEXT_NOTE = ("not computed for answer-selection data (each question ranks its own candidate "
                       "sentences; there is no reference answer to decode against)")


def evaluate(run: "Pipeline | str | Path", data: str | Path | None = None, baselines: Sequence[str] | None = None,
             *, plugins: Plugins | None = None, device: str | None = None, text: bool = True,
             dump: str | Path | None = None, k: int = 5, per_question: bool = False) -> dict[str, Any]:
    """Evaluate a run beside baselines on held-out data (what ``cellnet eval`` prints).

    ``data``: a pairs file (JSONL/CSV/TSV) or a selection file (JSONL with ``candidates``); default
    the test split of the run's own dataset — its selection items (MAP/MRR over each question's own
    candidates) where it has them, else its pairs. ``baselines``: names (default the config's
    ``eval.baselines``). Returns ``{"data", "questions", "rows": [{"name", "recall@1", "mrr", ...}],
    "compare": [...], "text": {...}}``; the first row is the run.

    ``text`` (pairs data): each row also gets ``text``, the scores of its answers decoded through
    the run's decoder (BLEU, sentence BLEU, ROUGE-L, token F1, exact match, re-embedding cosine,
    abstentions; see :mod:`cellnet_core.text_metrics`); ``None`` with a ``text_note`` for a
    baseline the decoder cannot read. ``result["text"]`` names the decoder, or says why the text
    part was ``skipped`` (``text=False``; answer-selection data). ``dump``: write one JSON line per
    test question (question, reference, answer, scores, the run's top ``k`` candidates, the
    baselines' answers) to this file; ``per_question`` keeps those rows in ``result["per_question"]``.
    """
    from cellnet_core.checkpoint import atomic_write_text
    from cellnet_core.evaluation import evaluate_pairs, evaluate_selection

    if k < 1:
        raise ConfigError(f"eval: -k must be at least 1 (got {k})")
    if dump is not None and not text:
        raise ConfigError("eval: --dump writes the decoded answers, which --no-text skips; drop one of them")
    if dump is not None and Path(dump).is_dir():
        raise ConfigError(f"eval: --dump {dump}: is a folder; give a file name, e.g. {Path(dump) / 'eval.jsonl'}")
    if dump is not None and not Path(dump).parent.is_dir():  # before the evaluation, not after it
        raise ConfigError(f"eval: --dump {dump}: no such folder '{Path(dump).parent}' (create it first)")
    pm, registry = _plugins(plugins)
    pipe = _pipeline(run, (pm, registry), device)
    names = list(baselines) if baselines is not None else list(pipe.config.eval.baselines)
    chosen = _baselines(pm, [n for n in names if n])
    dataset = registry.build("dataset", pipe.config.data, None)
    train_pairs = dataset.pairs("train")

    def selection(items: Any) -> dict[str, Any]:
        if dump is not None:
            raise ConfigError(f"eval: --dump writes decoded answers per question; text metrics are "
                              f"{SELECTION_TEXT_NOTE}; drop --dump")
        out = evaluate_selection(pipe, items, chosen, train_pairs)
        out["text"] = {"skipped": SELECTION_TEXT_NOTE}
        return out

    def pairs(test: Any, pool: Any = None) -> dict[str, Any]:
        out = evaluate_pairs(pipe, train_pairs, test, chosen, candidate_pool=pool,
                             max_questions=pipe.config.eval.max_questions, text=text, k=k)
        if not text:
            out["text"] = {"skipped": "not asked for (--no-text)"}
        return out

    if data is not None:
        kind = data_kind(data)
        user = registry.build("dataset", {"name": kind, "test": str(data)}, None)
        result = selection(user.selection("test")) if kind == "selection" else pairs(user.pairs("test"))
        result["data"] = str(data)
    elif _selection_items(dataset, "test"):
        # answer-selection data: each test question ranks its own candidates (the task's measure)
        result = selection(_selection_items(dataset, "test"))
        result["data"] = f"{pipe.config.data.name}:test (selection)"
    else:
        pool = None
        if pipe.config.eval.candidates == "all":
            pool = [p.answer for s in ("train", "val", "test") for p in dataset.pairs(s)]
        result = pairs(dataset.pairs("test"), pool)
        result["data"] = f"{pipe.config.data.name}:test"
    rows = result.get("per_question") if per_question else result.pop("per_question", None)
    if dump is not None and rows is not None:
        import json

        atomic_write_text(dump, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        result["dump"] = {"path": str(dump), "rows": len(rows)}
    if getattr(pipe, "run_dir", None) is not None:  # observers: trackers log the table, the model card shows it
        pm.hook.cellnet_on_eval_end(run_dir=str(pipe.run_dir), result=result)
    return result
