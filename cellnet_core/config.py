"""Pydantic v2 configs.

Each component's config subclasses :class:`ComponentConfig` with ``name: Literal["<name>"]``.
The run config is built *after* plugin discovery (:func:`run_config_model`) as discriminated
unions on ``name``, so an unknown name or a misspelt field is reported with its dotted path
before any tensor exists. Errors read ``file: dotted.path: message``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, AfterValidator, create_model

from cellnet_core.errors import ConfigError, UnknownComponentError

if TYPE_CHECKING:
    from cellnet_core.registry import Registry

#: Sections of a run config and the component kind each one selects.
SECTIONS: dict[str, str] = {
    "data": "dataset",
    "encoder": "encoder",
    "reshaper": "reshaper",
    "core": "core",
    "decoder": "decoder",
    "training": "strategy",
}

#: What a run config uses when a section is left out.
DEFAULTS: dict[str, dict[str, Any]] = {
    "reshaper": {"name": "flat"},
    "core": {"name": "identity"},
    "decoder": {"name": "nearest"},
    "training": {"name": "retrieval"},
}


class ComponentConfig(BaseModel):
    """Base of every component config: strict, frozen, documented."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str


def registered_name(kind: str, *, extra: tuple[str, ...] = ()) -> Any:
    """A ``str`` field that must name a registered component of ``kind`` (or one of ``extra``).

    Checked when validation gets the registry in its context (always the case through
    :func:`load_config` / :func:`validate_component`); otherwise accepted as is.
    """

    def check(value: str, info: ValidationInfo) -> str:
        registry = (info.context or {}).get("registry")
        if registry is None or value in extra:
            return value
        if value not in registry.names(kind):
            from cellnet_core.registry import _unknown_message

            raise ValueError(_unknown_message(kind, value, list(extra) + registry.names(kind), None)
                             .split(": ", 1)[1])
        return value

    return Annotated[str, AfterValidator(check)]


class EvalConfig(BaseModel):
    """How ``cellnet eval`` measures a run."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    candidates: Literal["test", "all"] = Field(
        "test", description="answer candidates ranked for each question: the split's own answers or every answer")
    max_questions: int = Field(2000, ge=1, description="at most this many held-out questions")
    baselines: list[str] = Field(default_factory=lambda: ["identity", "mean", "ridge"],
                                 description="baselines computed beside the run, by name")


def _format_loc(loc: tuple[Any, ...], model_sections: set[str]) -> str:
    parts: list[str] = []
    for i, item in enumerate(loc):
        # pydantic puts the discriminator tag (e.g. 'minilm') into the path of union members
        if i == 1 and parts and parts[0] in model_sections and isinstance(item, str):
            continue
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts).replace(".[", "[") or "(top level)"


def format_validation_error(err: ValidationError, source: str, prefix: str = "") -> str:
    """Render every pydantic error as ``source: dotted.path: message`` on its own line."""
    lines = []
    for e in err.errors():
        path = _format_loc(tuple(e["loc"]), set(SECTIONS))
        if prefix:
            path = prefix if path == "(top level)" else f"{prefix}.{path}"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "missing":
            msg = "required field missing"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if e["type"] not in ("extra_forbidden", "missing") and "input" in e and not isinstance(e["input"], (dict, list)):
            msg += f" (got {e['input']!r})"
        lines.append(f"{source}: {path}: {msg}")
    return "\n".join(lines)


def validate_component(registry: "Registry", kind: str, data: Any, *, where: str, source: str = "config",
                       context: dict | None = None) -> ComponentConfig:
    """Validate one component section (``{"name": ..., ...}`` or a bare name)."""
    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where}: expected a mapping with a 'name' field, got {type(data).__name__}")
    if "name" not in data:
        raise ConfigError(f"{source}: {where}.name: required field missing (available: "
                          f"{', '.join(registry.names(kind))})")
    try:
        entry = registry.get(kind, str(data["name"]), where=where)
    except UnknownComponentError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    ctx = {"registry": registry, **(context or {})}
    try:
        return entry.config_cls.model_validate(data, context=ctx)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, prefix=where)) from None


def run_config_model(registry: "Registry") -> type[BaseModel]:
    """Build the top-level run-config model from what the registry holds."""

    def union(kind: str) -> Any:
        classes = [e.config_cls for e in registry.entries(kind)]
        if not classes:
            return dict
        if len(classes) == 1:
            return classes[0]
        return Annotated[Union[tuple(classes)], Field(discriminator="name")]

    fields: dict[str, Any] = {
        "schema_version": (Literal[1], Field(1, description="config format version")),
        "seed": (int, Field(0, ge=0, description="seed for every random choice of the run")),
        "device": (str, Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$",
                              description="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:N'")),
        "eval": (EvalConfig, Field(default_factory=EvalConfig, description="evaluation settings")),
    }
    for section, kind in SECTIONS.items():
        default = DEFAULTS.get(section)
        ann = union(kind)
        if default is None:
            fields[section] = (ann, Field(..., description=f"the {kind} (by registered name)"))
        else:
            fields[section] = (ann, Field(default_factory=lambda d=default, k=kind: registry.config_for(k, d),
                                          description=f"the {kind} (by registered name)"))
    return create_model("RunConfig", __config__=ConfigDict(extra="forbid", frozen=True), **fields)


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str = "--set") -> dict[str, Any]:
    """Apply ``a.b=value`` overrides; the value is parsed as YAML (``3``, ``true``, ``[1,2]``)."""
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{source}: '{item}': expected KEY=VALUE, e.g. training.epochs=5")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {} if node.get(p) is None else (
                    {"name": node[p]} if isinstance(node[p], str) else node[p])
            node = node[p]
        node[parts[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: {where}unreadable YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: (top level): expected a mapping of sections, got {type(data).__name__}")
    return data


def validate_run_config(registry: "Registry", data: dict[str, Any], source: str = "config") -> BaseModel:
    """Validate a whole run config. Unknown names get did-you-mean; all errors carry paths."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level): expected a mapping")
    data = dict(data)
    known = {"schema_version", "seed", "device", "eval", *SECTIONS}
    for key in data:
        if key not in known:
            import difflib

            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; sections: {', '.join(sorted(known))}"
            raise ConfigError(f"{source}: {key}: unknown section{hint}")
    validated: dict[str, Any] = {}
    for section, kind in SECTIONS.items():
        if section not in data:
            if section not in DEFAULTS:
                raise ConfigError(f"{source}: {section}: required section missing "
                                  f"(available {kind}s: {', '.join(registry.names(kind))})")
            continue
        if isinstance(data[section], dict) and "name" not in data[section] and section in DEFAULTS:
            data[section] = {**DEFAULTS[section], **data[section]}  # e.g. --set reshaper.channels=2
        validated[section] = validate_component(registry, kind, data[section], where=section, source=source)
    model = run_config_model(registry)
    merged = {**data, **validated}
    try:
        return model.model_validate(merged, context={"registry": registry})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(registry: "Registry", path: str | Path, overrides: list[str] | None = None) -> BaseModel:
    """Read a YAML file, apply ``--set`` overrides, validate."""
    data = apply_overrides(read_yaml(path), overrides or [])
    return validate_run_config(registry, data, source=str(path))


def config_to_dict(config: BaseModel) -> dict[str, Any]:
    return json.loads(config.model_dump_json())


def json_schema(registry: "Registry") -> dict[str, Any]:
    """JSON Schema of a run config for the installed components (``cellnet schema``)."""
    return run_config_model(registry).model_json_schema()
