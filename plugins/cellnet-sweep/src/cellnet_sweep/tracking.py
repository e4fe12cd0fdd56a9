"""Trackers: TensorBoard, MLflow and CSV observers of a run (``tracking: [tensorboard, mlflow, csv]``).

A tracker is a registered component of kind ``tracker``; the run config's ``tracking`` list
selects them by name, each with its own options (``{name: mlflow, tracking_uri: sqlite:///m.db}``).
They are driven by the observer hooks and never change what is trained:

- ``cellnet_on_epoch_end`` (first call of a run): :meth:`Tracker.start` with the run's config,
  flattened to dotted keys; then :meth:`Tracker.log_epoch` with every epoch's metrics;
- ``cellnet_on_train_end``: :meth:`Tracker.finish` with the final validation metrics and the
  training-curve PNG (when ``training.plots`` wrote one);
- ``cellnet_on_eval_end`` (``cellnet eval``): :meth:`Tracker.log_eval` with the test table.

The hooks see the run's hidden ``.<name>.partial`` folder while it trains and the final folder at
the end; :func:`cellnet_core.run.partial_dir` ties the two together.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field

from cellnet_core.config import ComponentConfig

#: what a run's trackers left for later hooks (the MLflow run id, the TensorBoard folder)
STATE_FILE = "tracking.json"


# -- configs ---------------------------------------------------------------------------------------------
class TensorBoardConfig(ComponentConfig):
    """TensorBoard event files through ``torch.utils.tensorboard`` (needs the ``tensorboard`` package)."""

    name: Literal["tensorboard"] = "tensorboard"
    log_dir: Optional[str] = Field(None, description="folder of the event files (default: RUN/tensorboard); "
                                                     "a relative path is taken from the working directory")


class MLflowConfig(ComponentConfig):
    """An MLflow run per cellnet run (needs ``mlflow`` or ``mlflow-skinny``)."""

    name: Literal["mlflow"] = "mlflow"
    tracking_uri: Optional[str] = Field(
        None, description="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the local file store "
                          "./mlruns of the working directory); e.g. sqlite:///mlflow.db or http://host:5000")
    experiment: str = Field("cellnet", min_length=1, description="MLflow experiment name")
    run_name: Optional[str] = Field(None, description="MLflow run name (default: the run directory's name)")


class CSVConfig(ComponentConfig):
    """Plain CSV files in the run directory: ``tracking/epochs.csv`` and ``tracking/eval.csv``."""

    name: Literal["csv"] = "csv"
    folder: str = Field("tracking", min_length=1, description="folder inside the run directory")


# -- helpers ---------------------------------------------------------------------------------------------
def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"core": {"steps": 6}}`` → ``{"core.steps": 6}``; lists stay values."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: data} if prefix else {}


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of ``metrics`` (booleans and the epoch counter left out)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch" and math.isfinite(float(v))}


def eval_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The evaluation's table rows (``name`` and numbers) without the per-question detail."""
    rows = []
    for r in result.get("rows", []):
        rows.append({"name": r.get("name"), **numeric({k: v for k, v in r.items() if k != "name"})})
    return rows


def eval_markdown(result: dict[str, Any]) -> str:
    """The evaluation table as Markdown, with the paired-bootstrap verdicts under it."""
    rows = eval_rows(result)
    if not rows:
        return "(no rows)\n"
    cols = [c for c in rows[0] if c not in ("name", "seconds")]
    lines = [f"Test data: {result.get('data', '?')}, {result.get('questions', '?')} questions", "",
             "| | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for r in rows:
        lines.append(f"| {r['name']} | " + " | ".join(f"{r.get(c, float('nan')):.4f}" for c in cols) + " |")
    compare = result.get("compare") or []
    if compare:
        metric = compare[0].get("metric", "mrr")
        lines += ["", f"Run − baseline {metric.upper()}, 95 % paired-bootstrap interval over the test questions:", ""]
        for c in compare:
            lo, hi = c["ci95"]
            lines.append(f"- vs {c['baseline']}: {c[metric + '_diff']:+.4f} [{lo:+.4f}, {hi:+.4f}] {c['verdict']}")
    return "\n".join(lines) + "\n"


def read_state(run_dir: Path) -> dict[str, Any]:
    """What the run's trackers kept at start (``tracking.json``); empty when missing or unreadable."""
    try:
        return json.loads((Path(run_dir) / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_state(run_dir: Path, state: dict[str, Any]) -> None:
    """Write the trackers' state to the run's ``tracking.json`` in one step."""
    from cellnet_core.checkpoint import atomic_write_text

    atomic_write_text(Path(run_dir) / STATE_FILE, json.dumps(state, indent=1, sort_keys=True) + "\n")


def _require(module: str, extra: str) -> None:
    import importlib.util

    from cellnet_core.errors import MissingDependencyError

    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(f"tracking: {extra} needs the '{module}' package, which is not installed; "
                                     f"install it with: pip install 'cellnet-sweep[{extra}]'")


# -- trackers --------------------------------------------------------------------------------------------
class Tracker:
    """One tracker of one run. ``run_dir`` is where the run is being written (its partial folder)."""

    name = "?"

    def start(self, run_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
        """Begin with the run's flattened config; return what later calls need (kept in tracking.json)."""
        return {}

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """One epoch's numbers (``train_loss``, ``val_mrr``…)."""

    def finish(self, run_dir: Path, metrics: dict[str, float], curves: Path | None) -> None:
        """The run is saved in ``run_dir``: final validation metrics, the training-curve PNG."""

    def log_eval(self, run_dir: Path, state: dict[str, Any], result: dict[str, Any]) -> None:
        """``cellnet eval`` measured the saved run (``state``: what :meth:`start` returned)."""


class TensorBoardTracker(Tracker):
    """Writes the config, per-epoch scalars, final metrics, the curves image and test tables as
    TensorBoard events (in ``RUN/tensorboard`` unless ``log_dir`` is set)."""

    name = "tensorboard"

    def __init__(self, cfg: TensorBoardConfig):
        _require("tensorboard", "tensorboard")
        self.cfg, self.log_dir = cfg, None

    def _dir(self, run_dir: Path) -> Path:
        return Path(self.cfg.log_dir).resolve() if self.cfg.log_dir else Path(run_dir) / "tensorboard"

    def _writer(self):
        from torch.utils.tensorboard import SummaryWriter

        # one short-lived writer per call: the event files' folder moves when the run is published
        # (partial folder → run directory), and TensorBoard reads every event file of a folder
        return SummaryWriter(log_dir=str(self.log_dir))

    def start(self, run_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
        """Log the flattened config as text; return where the events go."""
        self.log_dir = self._dir(Path(run_dir).resolve())
        table = "| key | value |\n|---|---|\n" + "".join(f"| {k} | {json.dumps(v)} |\n" for k, v in config.items())
        with self._writer() as w:
            w.add_text("config", table, 0)
            w.add_text("config_json", json.dumps(config, sort_keys=True, default=str), 0)
        return {"log_dir": str(Path(self.cfg.log_dir).resolve()) if self.cfg.log_dir else None}

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Add each epoch metric as a scalar at step ``epoch``."""
        with self._writer() as w:
            for k, v in metrics.items():
                w.add_scalar(_tb_tag(k), v, epoch)

    def finish(self, run_dir: Path, metrics: dict[str, float], curves: Path | None) -> None:
        """Log the final metrics (table and scalars) and the training-curves image in the saved run."""
        self.log_dir = self._dir(Path(run_dir).resolve())
        with self._writer() as w:
            w.add_text("final", "| metric | value |\n|---|---:|\n"
                       + "".join(f"| {k} | {v:.4f} |\n" for k, v in metrics.items()), 0)
            for k, v in metrics.items():
                w.add_scalar(f"final/{k}", v, 0)
            if curves is not None and curves.exists():
                _tb_image(w, "training_curves", curves)

    def log_eval(self, run_dir: Path, state: dict[str, Any], result: dict[str, Any]) -> None:
        """Log the test table and each test metric as ``test/<row>/<metric>`` scalars."""
        from torch.utils.tensorboard import SummaryWriter

        log_dir = Path(state["log_dir"]).resolve() if state.get("log_dir") else Path(run_dir) / "tensorboard"
        with SummaryWriter(log_dir=str(log_dir)) as w:
            w.add_text("eval", eval_markdown(result), 0)
            for r in eval_rows(result):
                for k, v in r.items():
                    if k not in ("name", "seconds"):
                        w.add_scalar(f"test/{r['name']}/{k}", v, 0)


def _tb_tag(key: str) -> str:
    for split in ("val", "train"):
        if key.startswith(split + "_"):
            return f"{split}/{key[len(split) + 1:]}"
    return key


def _tb_image(writer: Any, tag: str, png: Path) -> None:
    import numpy as np
    from matplotlib import image

    img = image.imread(str(png))  # [H, W, 3|4] floats in [0, 1]
    writer.add_image(tag, np.asarray(img[..., :3]), 0, dataformats="HWC")


def _mlflow_key(key: str) -> str:
    """MLflow names allow letters, digits, ``_-. /``: ``val_recall@1`` → ``val_recall_at_1``."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", key.replace("@", "_at_"))


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else the local file store ``./mlruns`` of the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (Path.cwd() / "mlruns").resolve().as_uri()


class MLflowTracker(Tracker):
    """Logs the run to MLflow (``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else ``./mlruns``): params,
    metrics per epoch, final metrics, and the curves and test tables as artifacts."""

    name = "mlflow"

    def __init__(self, cfg: MLflowConfig):
        _require("mlflow", "mlflow")
        self.cfg, self.client, self.run_id = cfg, None, None

    @staticmethod
    def _client(uri: str):
        if uri.startswith("file:") or "://" not in uri:
            # MLflow 3 keeps its file store in maintenance mode behind this switch; it is still the
            # store that needs no server and no database
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=uri)

    def start(self, run_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
        """Create the MLflow run under the experiment and log the config as params; return the run's id and URI."""
        from mlflow.entities import Param

        uri = self.cfg.tracking_uri or default_tracking_uri()
        self.client = self._client(uri)
        exp = self.client.get_experiment_by_name(self.cfg.experiment)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(self.cfg.experiment)
        name = self.cfg.run_name or _run_name(run_dir)
        run = self.client.create_run(exp_id, run_name=name, tags={"cellnet.run_dir": str(_target(run_dir))})
        self.run_id = run.info.run_id
        params = [Param(_mlflow_key(k), json.dumps(v) if not isinstance(v, str) else v)
                  for k, v in config.items()]
        for i in range(0, len(params), 90):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 90])
        return {"tracking_uri": uri, "run_id": self.run_id}

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Log the epoch's metrics with ``epoch`` as the step."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(_mlflow_key(k), v, now, epoch) for k, v in metrics.items()])

    def finish(self, run_dir: Path, metrics: dict[str, float], curves: Path | None) -> None:
        """Log the final metrics and the curves image, then mark the MLflow run finished."""
        if self.client is None:
            return
        for k, v in metrics.items():
            self.client.log_metric(self.run_id, _mlflow_key(f"final_{k}"), v)
        self.client.log_text(self.run_id, "| metric | value |\n|---|---:|\n"
                             + "".join(f"| {k} | {v:.4f} |\n" for k, v in metrics.items()), "final_metrics.md")
        if curves is not None and curves.exists():
            self.client.log_artifact(self.run_id, str(curves))
        self.client.set_terminated(self.run_id)

    def log_eval(self, run_dir: Path, state: dict[str, Any], result: dict[str, Any]) -> None:
        """Log the test metrics and tables (``eval.md``, ``eval.json``) to the run's MLflow run."""
        if not state.get("run_id"):
            return
        client = self._client(state["tracking_uri"])
        for r in eval_rows(result):
            for k, v in r.items():
                if k not in ("name", "seconds"):
                    client.log_metric(state["run_id"], _mlflow_key(f"test_{r['name']}_{k}"), v)
        client.log_text(state["run_id"], eval_markdown(result), "eval.md")
        client.log_dict(state["run_id"], {"data": result.get("data"), "rows": eval_rows(result),
                                          "compare": result.get("compare", [])}, "eval.json")


class CSVTracker(Tracker):
    """Writes plain CSV files in the run: ``config.csv``, ``epochs.csv``, ``final.csv``, ``eval.csv``
    (needs no extra package)."""

    name = "csv"

    def __init__(self, cfg: CSVConfig):
        self.cfg, self.rows, self.dir = cfg, [], None

    def start(self, run_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
        """Create the CSV folder and write ``config.csv``."""
        self.dir = Path(run_dir) / self.cfg.folder
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_csv(self.dir / "config.csv", [{"key": k, "value": json.dumps(v)} for k, v in config.items()])
        return {"folder": self.cfg.folder}

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Append the epoch's row and rewrite ``epochs.csv``."""
        self.rows.append({"epoch": epoch, **metrics})
        _write_csv(self.dir / "epochs.csv", self.rows)

    def finish(self, run_dir: Path, metrics: dict[str, float], curves: Path | None) -> None:
        """Write the final metrics to ``final.csv`` in the saved run."""
        folder = Path(run_dir) / self.cfg.folder
        folder.mkdir(parents=True, exist_ok=True)
        _write_csv(folder / "final.csv", [{"metric": k, "value": v} for k, v in metrics.items()])

    def log_eval(self, run_dir: Path, state: dict[str, Any], result: dict[str, Any]) -> None:
        """Write the test table's rows to ``eval.csv``."""
        folder = Path(run_dir) / state.get("folder", self.cfg.folder)
        folder.mkdir(parents=True, exist_ok=True)
        _write_csv(folder / "eval.csv", eval_rows(result))


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    from cellnet_core.checkpoint import atomic_write_text

    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def build_tensorboard(cfg: TensorBoardConfig, ctx: Any = None) -> TensorBoardTracker:
    """Build the ``tracker:tensorboard`` component."""
    return TensorBoardTracker(cfg)


def build_mlflow(cfg: MLflowConfig, ctx: Any = None) -> MLflowTracker:
    """Build the ``tracker:mlflow`` component."""
    return MLflowTracker(cfg)


def build_csv(cfg: CSVConfig, ctx: Any = None) -> CSVTracker:
    """Build the ``tracker:csv`` component."""
    return CSVTracker(cfg)


def _target(run_dir: Path) -> Path:
    from cellnet_core.run import target_of

    return target_of(run_dir)


def _run_name(run_dir: Path) -> str:
    return _target(run_dir).name


# -- the observer: trackers of the runs training in this process ------------------------------------------
class Observer:
    """Builds each run's trackers from its ``config.yaml`` at its first epoch and feeds them."""

    def __init__(self) -> None:
        self.active: dict[str, list[Tracker]] = {}  # partial folder → trackers
        self.registry: Any = None

    def _registry(self) -> Any:
        if self.registry is None:
            from cellnet_core.api import load_plugins

            self.registry = load_plugins().registry
        return self.registry

    def _trackers(self, run_dir: Path) -> list[Tracker]:
        key = str(Path(run_dir).resolve())
        if key in self.active:
            return self.active[key]
        from cellnet_core.config import read_yaml

        config = read_yaml(Path(run_dir) / "config.yaml")
        specs = config.get("tracking") or []
        trackers = [self._registry().build("tracker", spec) for spec in specs]
        state: dict[str, Any] = {}
        flat = flatten({k: v for k, v in config.items() if k != "tracking"})
        for t in trackers:
            state[t.name] = t.start(Path(run_dir), flat)
        if trackers:
            write_state(Path(run_dir), state)
        self.active[key] = trackers
        return trackers

    def epoch_end(self, run_dir: str, epoch: int, metrics: dict[str, float]) -> None:
        """Feed one epoch's numeric metrics to the run's trackers (built at its first epoch)."""
        trackers = self._trackers(Path(run_dir))
        values = numeric(metrics)
        for t in trackers:
            t.log_epoch(epoch, values)

    def train_end(self, run_dir: str, result: Any) -> None:
        """The run is saved: give its trackers the final metrics and curves, then forget them."""
        from cellnet_core.run import partial_dir

        target = Path(run_dir)
        key = str(partial_dir(target).resolve())
        trackers = self.active.pop(key, None)
        if trackers is None:  # trained without an epoch (no gradient-trained part): start now
            if not (target / "config.yaml").exists():
                return
            trackers = self._trackers(target)
            self.active.pop(str(target.resolve()), None)
        curves = target / "training_curves.png"
        metrics = numeric(getattr(result, "metrics", {}) or {})
        for t in trackers:
            t.finish(target, metrics, curves if curves.exists() else None)

    def eval_end(self, run_dir: str, result: dict[str, Any]) -> None:
        """``cellnet eval`` measured a saved run: hand the result to each tracker its config names."""
        from cellnet_core.config import read_yaml

        run = Path(run_dir)
        specs = read_yaml(run / "config.yaml").get("tracking") or []
        if not specs:
            return
        state = read_state(run)
        for spec in specs:
            t = self._registry().build("tracker", spec)
            t.log_eval(run, state.get(t.name, {}), result)


OBSERVER = Observer()
