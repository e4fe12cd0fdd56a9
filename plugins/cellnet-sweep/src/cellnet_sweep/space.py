"""The sweep file: a base run config, a search space over dotted config paths, and how to search.

```yaml
base: ../configs/default.yaml      # a run config (path relative to this file) or a mapping
set: [training.epochs=3]           # overrides of the base, as --set takes them
space:                             # dotted config paths, the same as --set
  core.steps: {type: int, low: 2, high: 12}
  core.cell.name: {type: choice, values: [nca, mlp, gmlp]}
  training.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
sampler: tpe                       # tpe or grid (grid: every parameter a choice, or an int range)
trials: 20                         # grid: default every grid point once
seeds: 3                           # runs per trial (seed, seed+1, …); the objective is their mean
metric: val_mrr                    # a validation metric of the run; test metrics are never used
direction: maximize
pruner: median                     # median or none
```

Every error is one line ``FILE: dotted.path: message``.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cellnet_core.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChoiceParam(_Strict):
    """One of the listed values (``grid`` is the same, read as a grid axis)."""

    type: Literal["choice", "grid"]
    values: list[Union[bool, int, float, str, None]] = Field(..., description="the values tried")


class IntParam(_Strict):
    """An integer in ``[low, high]`` (``step`` apart; ``log`` for a log-uniform draw)."""

    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False


class FloatParam(_Strict):
    """A float in ``[low, high]`` (``log`` for a log-uniform draw; ``step`` for a grid of them)."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: Optional[float] = Field(None, gt=0)


Param = Union[ChoiceParam, IntParam, FloatParam]


class FinalConfig(_Strict):
    """The best config, retrained once and evaluated on the test split beside the baselines."""

    enabled: bool = Field(True, description="retrain and evaluate the best config at the end")
    baselines: Optional[list[str]] = Field(None, description="baselines beside it (default: the config's "
                                                             "eval.baselines)")
    text: bool = Field(False, description="also score decoded answer texts (slower)")


class SweepFile(_Strict):
    """A validated sweep file."""

    name: Optional[str] = Field(None, description="study name (default: the file's stem)")
    base: Union[str, dict[str, Any]] = Field(..., description="the base run config: a path or a mapping")
    set: list[str] = Field(default_factory=list, description="overrides of the base (KEY=VALUE)")
    space: dict[str, Param] = Field(..., description="dotted config path → parameter")
    sampler: Literal["tpe", "grid"] = "tpe"
    trials: Optional[int] = Field(None, ge=1, le=100000, description="finished trials wanted (grid: the grid size)")
    seeds: int = Field(1, ge=1, le=100, description="runs per trial, seeds seed … seed+seeds−1")
    metric: str = Field("val_mrr", pattern=r"^val_", description="validation metric the objective averages")
    direction: Literal["maximize", "minimize"] = "maximize"
    pruner: Literal["median", "none"] = "median"
    pruner_startup_trials: int = Field(5, ge=0, description="trials finished before the pruner acts")
    pruner_warmup_epochs: int = Field(1, ge=0, description="epochs of each run before it may be pruned")
    sampler_seed: int = Field(0, ge=0, description="seed of the sampler")
    keep_runs: bool = Field(True, description="keep every trial's run directories (false: only their metrics)")
    final: FinalConfig = Field(default_factory=FinalConfig)


def _param_type_hint(path: str, raw: Any) -> Any:
    """A bare list is a choice; a mapping without ``type`` is read from its keys."""
    if isinstance(raw, list):
        return {"type": "choice", "values": raw}
    if isinstance(raw, dict) and "type" not in raw:
        if "values" in raw:
            return {"type": "choice", **raw}
        if {"low", "high"} <= set(raw):
            lo, hi = raw["low"], raw["high"]
            kind = "int" if isinstance(lo, int) and isinstance(hi, int) and not isinstance(lo, bool) else "float"
            return {"type": kind, **raw}
    return raw


def _format(err: ValidationError, source: str) -> str:
    e = err.errors()[0]
    loc = []
    for i, item in enumerate(e["loc"]):
        # pydantic names the union member it tried (e.g. 'ChoiceParam'); the user's path does not
        if isinstance(item, str) and item[:1].isupper() or item in ("choice", "grid", "int", "float") and i > 1:
            continue
        loc.append(f"[{item}]" if isinstance(item, int) else str(item))
    path = ".".join(loc).replace(".[", "[") or "(top level)"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        msg = "unknown field"
    elif e["type"] == "missing":
        msg = "required field missing"
    elif "input" in e and not isinstance(e["input"], (dict, list)):
        msg += f" (got {e['input']!r})"
    return f"{source}: {path}: {msg}"


def read_sweep(path: str | Path) -> SweepFile:
    """Read and check the sweep file's own fields (paths and ranges: :func:`check_space`)."""
    from cellnet_core.config import read_yaml

    path = Path(path)
    data = read_yaml(path)
    space = data.get("space")
    if isinstance(space, dict):
        data["space"] = {k: _param_type_hint(k, v) for k, v in space.items()}
        for k, v in data["space"].items():
            if not isinstance(v, dict) or v.get("type") not in ("choice", "grid", "int", "float"):
                raise ConfigError(f"{path}: space.{k}: expected a list of values or a mapping with "
                                  f"type choice|grid|int|float (got {v!r})")
    try:
        sweep = SweepFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["loc"][:1] == ("space",) and len(first["loc"]) > 2:
            key = first["loc"][1]
            kind = (data["space"].get(key) or {}).get("type")
            # a union reports every member it tried: keep the errors of the member the type names
            errs = [x for x in exc.errors() if x["loc"][:2] == ("space", key) and x["loc"][2] == _CLASS.get(kind)]
            errs.sort(key=lambda x: x["type"] != "extra_forbidden")  # a misspelt key explains a missing one
            e = errs[0] if errs else first
            field = ".".join(str(p) for p in e["loc"][3:])
            msg = {"extra_forbidden": "unknown field", "missing": "required field missing"}.get(e["type"], e["msg"])
            if e["type"] not in ("extra_forbidden", "missing") and not isinstance(e.get("input"), (dict, list)):
                msg += f" (got {e.get('input')!r})"
            raise ConfigError(f"{path}: space.{key}{'.' + field if field else ''}: {msg}") from None
        raise ConfigError(_format(exc, str(path))) from None
    if not sweep.space:
        raise ConfigError(f"{path}: space: empty; give at least one config path to search, e.g. "
                          f"'core.steps: {{type: int, low: 2, high: 12}}'")
    for key, p in sweep.space.items():
        where = f"{path}: space.{key}"
        if isinstance(p, ChoiceParam) and not p.values:
            raise ConfigError(f"{where}.values: empty; list at least one value")
        if isinstance(p, (IntParam, FloatParam)):
            if not p.low < p.high:
                raise ConfigError(f"{where}: bad range: low ({p.low}) must be below high ({p.high})")
            if p.log and p.low <= 0:
                raise ConfigError(f"{where}: bad range: a log range needs low > 0 (got {p.low})")
            if p.log and p.step not in (None, 1) and isinstance(p, IntParam):
                raise ConfigError(f"{where}.step: a log range takes no step")
            if isinstance(p, FloatParam) and not all(math.isfinite(x) for x in (p.low, p.high)):
                raise ConfigError(f"{where}: bad range: low and high must be finite numbers")
        if sweep.sampler == "grid" and isinstance(p, FloatParam) and p.step is None:
            raise ConfigError(f"{where}: the grid sampler needs values: give 'values: [...]' or a step")
    return sweep


_CLASS = {"choice": "ChoiceParam", "grid": "ChoiceParam", "int": "IntParam", "float": "FloatParam"}


def grid_values(p: Param) -> list[Any]:
    """Every value of a parameter on a grid."""
    if isinstance(p, ChoiceParam):
        return list(p.values)
    if isinstance(p, IntParam):
        return list(range(p.low, p.high + 1, p.step))
    n = int(math.floor((p.high - p.low) / p.step + 1e-9)) + 1
    return [round(p.low + i * p.step, 12) for i in range(n)]


def probe_values(p: Param) -> list[Any]:
    """The values checked against the config before the sweep starts: every choice, both ends."""
    if isinstance(p, ChoiceParam):
        return list(p.values)
    return [p.low, p.high]


def base_config(sweep: SweepFile, sweep_path: str | Path) -> tuple[dict[str, Any], str]:
    """The base config as plain data (overrides applied) and where it came from."""
    from cellnet_core.config import apply_overrides, read_yaml

    if isinstance(sweep.base, dict):
        return apply_overrides(sweep.base, list(sweep.set), source=f"{sweep_path}: set"), f"{sweep_path}: base"
    base = Path(sweep.base)
    if not base.is_absolute():
        base = Path(sweep_path).parent / base
    if not base.exists():
        raise ConfigError(f"{sweep_path}: base: no such file: {base}")
    return apply_overrides(read_yaml(base), list(sweep.set), source=f"{sweep_path}: set"), str(base)


def trial_config(base: dict[str, Any], params: dict[str, Any], seed: int | None = None) -> dict[str, Any]:
    """The run config of one trial: the base with the parameters set at their dotted paths (as
    ``--set`` sets them). Fields of the base that the chosen part does not take are dropped by
    :func:`fit_config`."""
    from cellnet_core.config import apply_overrides

    data = apply_overrides(base, [f"{k}={_yaml_value(v)}" for k, v in params.items()])
    if seed is not None:
        data["seed"] = seed
    return data


def _yaml_value(value: Any) -> str:
    import json

    return json.dumps(value)  # JSON is YAML: strings, numbers, booleans and null read back as given


def fit_config(registry: Any, data: dict[str, Any], source: str = "config", protect: Any = ()) -> Any:
    """Validate a trial's config; a field of the base that the part chosen in its place does not
    take (``core.cell.hidden`` when ``core.cell.name`` becomes a cell without ``hidden``) is
    dropped, so that it falls back to the new part's default; the paths in ``protect`` (what the
    sweep sets) never are. Returns the validated config."""
    import copy

    from cellnet_core.config import validate_run_config

    data = copy.deepcopy(data)
    for _ in range(64):
        try:
            return validate_run_config(registry, data, source=source)
        except ConfigError as exc:
            line = str(exc).splitlines()[0]
            body = line.removeprefix(f"{source}: ")
            path, _, msg = body.partition(": ")
            if msg.strip() != "unknown field" or "." not in path or path in set(protect):
                raise
            node = data
            parts = path.split(".")
            for p in parts[:-1]:
                node = node.get(p) if isinstance(node, dict) else None
            if not isinstance(node, dict) or parts[-1] not in node:
                raise
            del node[parts[-1]]
    return validate_run_config(registry, data, source=source)


def check_space(sweep: SweepFile, sweep_path: str | Path, registry: Any) -> dict[str, Any]:
    """Check the base config and every parameter's values against the installed components.

    Each value (every choice, both ends of a range) is set on the base and the config validated;
    the first problem raises ``FILE: space.PATH: value V: <what the config check said>``.
    Returns the base config data."""
    from cellnet_core.config import validate_run_config

    base, where = base_config(sweep, sweep_path)
    validate_run_config(registry, base, source=where)
    for key, p in sweep.space.items():
        for value in probe_values(p):
            try:
                fit_config(registry, trial_config(base, {key: value}), protect=sweep.space)
            except ConfigError as exc:
                line = str(exc).splitlines()[0].removeprefix("config: ")
                where, _, msg = line.partition(": ")
                if (key == where or key.startswith(where + ".")) and msg.startswith(("unknown field", "unknown section")):
                    raise ConfigError(f"{sweep_path}: space.{key}: not a config path ({line})") from None
                raise ConfigError(f"{sweep_path}: space.{key}: value {value!r}: {line}") from None
    return base


def grid_size(sweep: SweepFile) -> int:
    """How many points the grid has."""
    n = 1
    for p in sweep.space.values():
        n *= len(grid_values(p))
    return n


def grid_space(sweep: SweepFile) -> dict[str, list[Any]]:
    """The search space as Optuna's grid sampler takes it."""
    return {k: grid_values(p) for k, p in sweep.space.items()}


def all_grid_points(sweep: SweepFile) -> list[dict[str, Any]]:
    """Every point of the sweep's grid, as ``{dotted path: value}``, in a fixed order."""
    space = grid_space(sweep)
    return [dict(zip(space, combo)) for combo in itertools.product(*space.values())]
