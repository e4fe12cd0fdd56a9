"""``cellnet sweep``: an Optuna study over config paths, its trials trained by :func:`cellnet_core.api.train`.

The study lives in an Optuna storage: a SQLite file in the sweep directory by default
(``sqlite:///DIR/study.db``), or any RDB URL (``--storage postgresql://…``). Whatever points at
the same storage works on the same study: ``--workers N`` starts N local processes, and
machines given the same URL join them. Each trial trains ``seeds`` runs (seed, seed+1, …) of the
base config with the trial's parameters set at their dotted paths; its value is the mean of
their validation metric (the test split is never looked at while searching).

A killed sweep, rerun, continues: finished trials stay as they are, and a trial that was running
when its process died is marked failed and queued again with the same parameters (a local process
is known dead by its pid; one on another machine when its heartbeat is older than the grace
period). The median pruner stops a run whose validation metric at an epoch is below the median of
earlier trials at that epoch, through the ``cellnet_on_epoch_end`` hook.

At the end, in the sweep directory: ``trials.csv`` and ``trials.md`` (every trial's parameters
and metrics), ``best.yaml`` (the best trial's config), ``history.png``, ``importances.png``,
``parallel.png``, and ``best/`` — the best config trained once more and evaluated on the test
split beside the baselines (``final.md``, with the paired-bootstrap verdicts).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cellnet_core.errors import CellnetError, ConfigError

from cellnet_sweep.space import SweepFile, check_space, fit_config, grid_size, grid_space, read_sweep, trial_config


class StopTrial(BaseException):
    """Raised from the epoch hook when the pruner stops a run. A BaseException (as an interrupt
    is), so that the observer-hook guard does not report it as a fault and training stops."""


#: runs of this process that the pruner watches: partial folder → (trial, seed index, metric, epochs)
WATCHED: dict[str, tuple[Any, int, str, int]] = {}


def prune_hook(run_dir: str, epoch: int, metrics: dict[str, float]) -> None:
    """``cellnet_on_epoch_end`` for sweeps: report the epoch's metric to the trial; stop if pruned."""
    watch = WATCHED.get(str(Path(run_dir).resolve()))
    if watch is None:
        return
    trial, index, metric, epochs = watch
    value = metrics.get(metric)
    if value is None or not math.isfinite(float(value)):
        return
    # one step per (seed, epoch): every trial's seed i, epoch e is compared with the others' same step
    trial.report(float(value), index * (epochs + 1) + int(epoch))
    if trial.should_prune():
        raise StopTrial(f"trial {trial.number} pruned at epoch {epoch} of seed {index}")


@dataclass
class Sweep:
    """A sweep file, read and checked, with its directory and storage."""

    path: Path
    spec: SweepFile
    directory: Path
    storage_url: str
    base: dict[str, Any]
    plugins: Any
    echo: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr, flush=True))

    @property
    def name(self) -> str:
        """The study's name: ``name`` in the sweep file, else the file's stem."""
        return self.spec.name or self.path.stem

    @property
    def trials(self) -> int:
        """How many trials the study runs: ``trials`` in the file, else the grid's size (grid) or 20."""
        if self.spec.trials is not None:
            return self.spec.trials
        return grid_size(self.spec) if self.spec.sampler == "grid" else 20

    @property
    def base_seed(self) -> int:
        """The base config's ``seed`` (0 when unset); a trial's seeds count up from it."""
        return int(self.base.get("seed", 0) or 0)

    @property
    def epochs(self) -> int:
        """The base config's ``training.epochs`` (0 when unset): the pruner's last step."""
        return int((self.base.get("training") or {}).get("epochs", 0) or 0)


def default_dir(path: str | Path) -> Path:
    """``sweeps/<stem>`` of the working directory."""
    return Path("sweeps") / Path(path).stem


def load_sweep(path: str | Path, *, storage: str | None = None, directory: str | Path | None = None,
               plugins: Any = None, echo: Callable[[str], None] | None = None) -> Sweep:
    """Read the sweep file and check it against the installed components (one-line errors)."""
    from cellnet_core.api import load_plugins

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file")
    spec = read_sweep(path)
    plugins = plugins or load_plugins()
    base = check_space(spec, path, plugins.registry)
    if spec.final.enabled and spec.final.baselines:
        # the final test would refuse an unknown baseline only after every trial: refuse it now
        from cellnet_core.api import check_baseline_names

        check_baseline_names(spec.final.baselines, plugins.manager, str(path), field="final.baselines")
    d = Path(directory) if directory else default_dir(path)
    url = storage or f"sqlite:///{(d / 'study.db').resolve()}"
    if "://" not in url:
        raise ConfigError(f"--storage {url}: not a database URL (e.g. sqlite:///study.db, "
                          f"postgresql://user@host/db, mysql+pymysql://user@host/db)")
    sweep = Sweep(path, spec, d, url, base, plugins)
    if echo is not None:
        sweep.echo = echo
    return sweep


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def open_study(sweep: Sweep, worker: int = 0):
    """The study (created on first use) with its sampler and pruner."""
    import optuna
    from optuna.storages import RDBStorage

    _quiet_optuna()
    sweep.directory.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {}
    if sweep.storage_url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}  # several local writers wait their turn
    try:
        callback, name = _retry_callback()
        storage = RDBStorage(sweep.storage_url, heartbeat_interval=30, grace_period=120, **{name: callback},
                             **kwargs)
    except Exception as exc:  # noqa: BLE001 - a bad URL or an unreachable database is the user's to fix
        raise ConfigError(f"--storage {sweep.storage_url}: cannot open: {str(exc).splitlines()[0]}") from None
    spec = sweep.spec
    existing = 0
    try:
        existing = len(optuna.load_study(study_name=sweep.name, storage=storage).trials)
    except KeyError:
        pass
    if spec.sampler == "grid":
        # one seed for every worker: the grid sampler numbers the points in its seeded order
        sampler = optuna.samplers.GridSampler(grid_space(spec), seed=spec.sampler_seed)
    else:
        # another seed per worker and per restart: a rerun does not draw its first points again
        seed = spec.sampler_seed + 1000 * worker + existing
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, sweep.trials // 3)))
    if spec.pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=spec.pruner_startup_trials,
                                             n_warmup_steps=spec.pruner_warmup_epochs)
    else:
        pruner = optuna.pruners.NopPruner()
    study = optuna.create_study(study_name=sweep.name, storage=storage, sampler=sampler, pruner=pruner,
                                direction=spec.direction, load_if_exists=True)
    space = json.dumps({k: v.model_dump() for k, v in spec.space.items()}, sort_keys=True)
    known = study.user_attrs.get("space")
    if known is None:
        study.set_user_attr("space", space)
        study.set_user_attr("metric", spec.metric)
        study.set_user_attr("seeds", spec.seeds)
    elif known != space:
        raise ConfigError(f"{sweep.path}: space: differs from the one study '{sweep.name}' in {sweep.storage_url} "
                          f"was made with; give the sweep another name (name: …) or directory (--dir)")
    return study


def _retry_callback() -> tuple[Any, str]:
    """Optuna's callback that queues a trial whose process died again with its parameters, and
    the storage argument that takes it (renamed in Optuna 4.9)."""
    import optuna.storages as st

    if hasattr(st, "RetryHeartbeatStaleTrialCallback"):
        return st.RetryHeartbeatStaleTrialCallback(max_retry=3), "heartbeat_stale_trial_callback"
    return st.RetryFailedTrialCallback(max_retry=3), "failed_trial_callback"


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(sweep: Sweep, study: Any) -> list[int]:
    """Trials left running by a dead local process: failed and queued again (same parameters).
    Returns their numbers."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who = str(t.user_attrs.get("worker", ""))
        h, _, pid = who.rpartition(":")
        if h != host or not pid.isdigit() or _alive(int(pid)):
            continue
        study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        if study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
            _retry_callback()[0](study, study._storage.get_trial(t._trial_id))
            shutil.rmtree(sweep.directory / "trials" / f"{t.number:04d}", ignore_errors=True)
            out.append(t.number)
    return out


def _suggest(trial: Any, key: str, p: Any) -> Any:
    from cellnet_sweep.space import ChoiceParam, IntParam

    if isinstance(p, ChoiceParam):
        return trial.suggest_categorical(key, p.values)
    if isinstance(p, IntParam):
        return trial.suggest_int(key, p.low, p.high, step=p.step, log=p.log)
    return trial.suggest_float(key, p.low, p.high, log=p.log, step=p.step)


def objective(sweep: Sweep, trial: Any) -> float:
    """Train the trial's runs (one per seed); their mean validation metric."""
    import optuna

    from cellnet_core import api
    from cellnet_core.run import partial_dir

    spec = sweep.spec
    trial.set_user_attr("worker", _worker_id())
    params = {key: _suggest(trial, key, p) for key, p in spec.space.items()}
    values, seconds, epochs = [], 0.0, []
    folder = sweep.directory / "trials" / f"{trial.number:04d}"
    try:
        for i in range(spec.seeds):
            seed = sweep.base_seed + i
            config = fit_config(sweep.plugins.registry, trial_config(sweep.base, params, seed=seed),
                                source=f"trial {trial.number}", protect=spec.space)
            run_dir = folder / f"seed{seed}"
            watch_key = str(partial_dir(run_dir.resolve()).resolve())
            WATCHED[watch_key] = (trial, i, spec.metric, sweep.epochs)
            t0 = time.perf_counter()
            try:
                pipe = api.train(config, run_dir, overwrite=True, plugins=sweep.plugins, echo=None)
            except StopTrial:
                shutil.rmtree(partial_dir(run_dir.resolve()), ignore_errors=True)
                trial.set_user_attr("pruned_at", f"seed {seed}")
                raise optuna.TrialPruned() from None
            finally:
                WATCHED.pop(watch_key, None)
                seconds += time.perf_counter() - t0  # a pruned run's time counts too
            metrics = (pipe.train_info or {}).get("metrics") or {}
            if spec.metric not in metrics:
                raise ConfigError(f"{sweep.path}: metric: '{spec.metric}' is not among the run's validation "
                                  f"metrics ({', '.join(k for k in metrics if k.startswith('val_')) or 'none'})")
            values.append(float(metrics[spec.metric]))
            epochs.append(int((pipe.train_info or {}).get("epochs") or 0))
            trial.set_user_attr(f"seed{seed}", values[-1])
            if not spec.keep_runs:
                shutil.rmtree(run_dir, ignore_errors=True)
    except CellnetError as exc:
        trial.set_user_attr("error", str(exc).splitlines()[0][:500])
        raise
    finally:
        trial.set_user_attr("seconds", round(seconds, 2))
    trial.set_user_attr("epochs", epochs)
    trial.set_user_attr("std", statistics.pstdev(values) if len(values) > 1 else 0.0)
    return statistics.fmean(values)


def counts(study: Any) -> dict[str, int]:
    """How many of the study's trials are done (complete or pruned), running, waiting and failed."""
    from optuna.trial import TrialState

    out = {"done": 0, "running": 0, "waiting": 0, "failed": 0}
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            out["done"] += 1
        elif t.state == TrialState.RUNNING:
            out["running"] += 1
        elif t.state == TrialState.WAITING:
            out["waiting"] += 1
        elif t.state == TrialState.FAIL and not t.user_attrs.get("interrupted"):
            out["failed"] += 1
    return out


def work(sweep: Sweep, worker: int = 0) -> int:
    """Run trials on the study until it has ``trials`` finished ones; returns how many this process ran."""
    study = open_study(sweep, worker)
    ran = 0
    while True:
        c = counts(study)
        if c["waiting"] == 0 and c["done"] + c["running"] >= sweep.trials:
            break
        if c["failed"] >= sweep.trials:
            sweep.echo(f"sweep {sweep.name}: {c['failed']} trials failed; stopping (see trials.md)")
            break
        study.optimize(lambda t: objective(sweep, t), n_trials=1, catch=(CellnetError,), gc_after_trial=False)
        ran += 1
        last = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("worker") == _worker_id()]
        if last:
            t = last[-1]
            value = f"{t.value:.4f}" if t.value is not None else t.state.name.lower()
            err = f" ({t.user_attrs['error']})" if t.user_attrs.get("error") else ""
            sweep.echo(f"trial {t.number}: {value} {json.dumps(t.params)}{err}")
    return ran


def run_sweep(sweep: Sweep, workers: int = 1) -> dict[str, Any]:
    """Run (or continue) the sweep with ``workers`` local processes, then write its outputs."""
    t0 = time.perf_counter()
    os.environ.setdefault("CELLNET_QUIET", "1")  # no per-epoch lines from the trials' training
    study = open_study(sweep)
    again = recover(sweep, study)
    if again:
        sweep.echo(f"sweep {sweep.name}: trial(s) {', '.join(map(str, again))} were cut off by a kill; "
                   f"queued again with the same parameters")
    c = counts(study)
    sweep.echo(f"sweep {sweep.name}: {c['done']} of {sweep.trials} trials finished; storage {sweep.storage_url}")
    if workers <= 1:
        work(sweep)
    else:
        run_workers(sweep, workers)
    study = open_study(sweep)
    summary = write_outputs(sweep, study, seconds=time.perf_counter() - t0)
    if sweep.spec.final.enabled and summary.get("best") is not None:
        summary["final"] = final_run(sweep, summary["best"]["params"])
        from cellnet_core.checkpoint import atomic_write_text

        atomic_write_text(sweep.directory / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    return summary


def run_workers(sweep: Sweep, workers: int) -> None:
    """``workers`` local processes on the study (each with its share of the CPU threads)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    env["CELLNET_SWEEP_THREADS"] = env["OMP_NUM_THREADS"]
    cmd = [sys.executable, "-m", "cellnet_sweep.worker", str(sweep.path), "--storage", sweep.storage_url,
           "--dir", str(sweep.directory)]
    procs = [subprocess.Popen(cmd + ["--index", str(i)], env=env) for i in range(workers)]
    try:
        codes = [p.wait() for p in procs]
    except BaseException:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        raise
    bad = [str(c) for c in codes if c]
    if bad:
        sweep.echo(f"sweep {sweep.name}: {len(bad)} worker(s) exited with status {', '.join(bad)}")


# -- outputs ------------------------------------------------------------------------------------------------
def trial_rows(sweep: Sweep, study: Any) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, its spread over seeds, parameters, per-seed values."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name in ("WAITING", "RUNNING"):
            continue
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name.lower()}
        if t.user_attrs.get("interrupted"):
            row["state"] = "interrupted"
        row[sweep.spec.metric] = t.value
        row["std"] = t.user_attrs.get("std")
        for k in sweep.spec.space:
            row[k] = t.params.get(k)
        for i in range(sweep.spec.seeds):
            row[f"seed{sweep.base_seed + i}"] = t.user_attrs.get(f"seed{sweep.base_seed + i}")
        row["epochs"] = "/".join(str(e) for e in t.user_attrs.get("epochs", [])) or None
        row["seconds"] = t.user_attrs.get("seconds")
        row["note"] = t.user_attrs.get("error") or (f"pruned ({t.user_attrs['pruned_at']})"
                                                    if t.user_attrs.get("pruned_at") else "")
        rows.append(row)
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-3 and v != 0 else f"{v:.4f}"
    return str(v)


def markdown_table(rows: list[dict[str, Any]], metric: str, direction: str) -> str:
    """The trials as a Markdown table, best first (unfinished and failed trials last)."""
    if not rows:
        return "(no trials)\n"
    sign = -1 if direction == "maximize" else 1
    order = sorted(rows, key=lambda r: (r["state"] != "complete", sign * (r[metric] if r[metric] is not None else 0)))
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---:" if c not in ("state", "note") else "---"
                                                         for c in cols) + "|"]
    for r in order:
        lines.append("| " + " | ".join((f"{r[c]:.1f}" if c == "seconds" and isinstance(r[c], (int, float))
                                         else _fmt(r[c])).replace("|", "/") for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(sweep: Sweep, study: Any, seconds: float = 0.0) -> dict[str, Any]:
    """trials.csv, trials.md, best.yaml, the plots and summary.json in the sweep directory."""
    import csv
    import io

    import yaml

    from cellnet_core.checkpoint import atomic_write_text
    from cellnet_core.config import config_to_dict

    d = sweep.directory
    rows = trial_rows(sweep, study)
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    atomic_write_text(d / "trials.csv", buf.getvalue())
    atomic_write_text(d / "trials.md", markdown_table(rows, sweep.spec.metric, sweep.spec.direction))
    c = counts(study)
    summary: dict[str, Any] = {"study": sweep.name, "storage": sweep.storage_url, "metric": sweep.spec.metric,
                               "direction": sweep.spec.direction, "sampler": sweep.spec.sampler,
                               "seeds": sweep.spec.seeds, "trials": sweep.trials,
                               "complete": sum(r["state"] == "complete" for r in rows),
                               "pruned": sum(r["state"] == "pruned" for r in rows),
                               "failed": c["failed"], "seconds": round(seconds, 1), "best": None}
    try:
        best = study.best_trial
    except ValueError:
        best = None
    if best is not None:
        config = fit_config(sweep.plugins.registry, trial_config(sweep.base, best.params, seed=sweep.base_seed),
                            protect=sweep.spec.space)
        text = (f"# best trial {best.number} of sweep {sweep.name}: mean {sweep.spec.metric} {best.value:.4f} "
                f"over {sweep.spec.seeds} seed(s)\n# parameters: {json.dumps(best.params)}\n")
        atomic_write_text(d / "best.yaml", text + yaml.safe_dump(config_to_dict(config), sort_keys=False))
        summary["best"] = {"number": best.number, "value": best.value, "std": best.user_attrs.get("std"),
                           "params": best.params}
    summary["plots"] = write_plots(sweep, study)
    atomic_write_text(d / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    return summary


def write_plots(sweep: Sweep, study: Any) -> dict[str, str]:
    """history.png, importances.png, parallel.png (Optuna's matplotlib plots); why one is missing."""
    from cellnet_sweep.plots import sweep_plots

    return sweep_plots(study, sweep.directory, sweep.spec.metric, sweep.name)


def final_run(sweep: Sweep, params: dict[str, Any]) -> dict[str, Any]:
    """Train the best config once more (``DIR/best``) and evaluate it on the test split beside the baselines."""
    from cellnet_core import api
    from cellnet_core.checkpoint import atomic_write_text
    from cellnet_core.evaluation import format_table

    from cellnet_sweep.tracking import eval_markdown

    config = fit_config(sweep.plugins.registry, trial_config(sweep.base, params, seed=sweep.base_seed),
                        protect=sweep.spec.space)
    sweep.echo(f"sweep {sweep.name}: training the best config once more into {sweep.directory / 'best'}")
    pipe = api.train(config, sweep.directory / "best", overwrite=True, plugins=sweep.plugins, echo=None)
    result = api.evaluate(pipe, baselines=sweep.spec.final.baselines, plugins=sweep.plugins,
                          text=sweep.spec.final.text)
    sweep.echo(format_table(result))
    text = (f"# Best config of sweep {sweep.name}, trained once more and tested\n\n"
            f"Parameters: `{json.dumps(params)}` (seed {sweep.base_seed}); validation {sweep.spec.metric} of "
            f"this run {((pipe.train_info or {}).get('metrics') or {}).get(sweep.spec.metric, float('nan')):.4f}.\n\n"
            + eval_markdown(result))
    atomic_write_text(sweep.directory / "final.md", text)
    return {"run_dir": str(sweep.directory / "best"), "rows": [
        {k: v for k, v in r.items() if k == "name" or isinstance(v, (int, float))} for r in result["rows"]],
        "compare": result.get("compare", [])}
