"""Pydantic v2 configs.

Each component's config subclasses :class:`ComponentConfig` with ``name: Literal["<name>"]``.
The run config is built *after* plugin discovery (:func:`run_config_model`) as discriminated
unions on ``name``, so an unknown name or a misspelt field is reported with its dotted path
before any tensor exists. Errors read ``file: dotted.path: message``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, AfterValidator, create_model

from cellnet_core.errors import ConfigError
from cellnet_core.registry import Registry, _unknown_message
from cellnet_core.registry import format_validation_error as _format_validation_error

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

    def check_run(self, run: Any, registry: "Registry") -> None:
        """Checks that need the whole run config or other registered parts, run by ``cellnet
        validate`` and before training writes anything (:func:`validate_run_config`).

        ``run`` is the validated run config (``run.encoder``, ``run.device``…). Raise
        ``ValueError("message")`` (reported as ``file: <section>: message``) or a
        :class:`~cellnet_core.errors.ConfigError` whose message already names its path. Must be
        cheap: no model loading, no torch import. The default checks nothing.
        """

    def embedding_dim(self) -> int | None:
        """An encoder config that knows its embedding size D without loading a model returns it,
        so that other sections' :meth:`check_run` can check sizes at validation time (e.g. the
        ``flat`` reshaper: X·Y·Z·C must equal D). Default: None (known only once built)."""
        return None

    def memory_bytes(self, run: Any) -> dict[str, int]:
        """A *lower bound* of the memory this part needs to train ``run``, told from the config alone
        (no torch import): ``{"what it is": bytes}``, e.g. ``{"lattice states kept for the backward
        pass": ...}``. :func:`check_memory` adds up every section's and refuses a run that cannot
        fit in this machine's available memory before anything is allocated. Default: nothing."""
        return {}


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
            raise ValueError(_unknown_message(kind, value, list(extra) + registry.names(kind), None)
                             .split(": ", 1)[1])
        return value

    return Annotated[str, AfterValidator(check)]


def validate_registered(kind: str, value: Any, context: dict | None = None, *,
                        builtin: dict[str, type] | None = None, loc: tuple[Any, ...] = ()) -> ComponentConfig:
    """Validate a nested part (``{"name": ..., ...}`` or a bare name) into the config class that the
    registered ``kind`` of that name has: what ``core.cell`` and ``training.loss`` select by name.

    The registry is taken from ``context["registry"]`` (present through :func:`load_config` and
    :func:`validate_component`); without one, ``builtin`` (name → config class) is what exists.
    Errors are a :class:`pydantic.ValidationError` whose locations start with ``loc``, so the
    enclosing model reports them with the full path (``core.cell.hidden``); an unknown name lists
    the available ones with a did-you-mean.
    """
    from pydantic_core import InitErrorDetails, PydanticCustomError

    def fail(where: tuple[Any, ...], message: str, value: Any) -> ValidationError:
        return ValidationError.from_exception_data(kind, [InitErrorDetails(
            type=PydanticCustomError("value_error", message), loc=where, input=value)])

    if isinstance(value, ComponentConfig):
        return value
    if isinstance(value, str):
        value = {"name": value}
    registry = (context or {}).get("registry")
    available = registry.names(kind) if registry is not None else sorted(builtin or {})
    if not isinstance(value, dict):
        raise fail(loc, f"expected a {kind} name or a mapping with a 'name' field, got {type(value).__name__}", value)
    if "name" not in value:
        raise fail(loc + ("name",), f"required field missing (available {kind}s: {', '.join(available)})", value)
    name = str(value["name"])
    if name not in available:
        raise fail(loc + ("name",), _unknown_message(kind, name, available, None).split(": ", 1)[1], value)
    cls = registry.get(kind, name).config_cls if registry is not None else builtin[name]  # type: ignore[index]
    try:
        return cls.model_validate(value, context=context)
    except ValidationError as exc:
        raise ValidationError.from_exception_data(kind, [InitErrorDetails(
            type=PydanticCustomError(e["type"], e["msg"]), loc=loc + tuple(e["loc"]), input=e.get("input"))
            for e in exc.errors()]) from None


def registered_component(kind: str, *, builtin: dict[str, type] | None = None) -> Any:
    """The type of a config field that selects a registered part of ``kind`` by name, with that
    part's own config: ``cell: registered_component("cell")`` accepts ``{name: nca, hidden: 64}``
    or ``nca`` and holds the ``nca`` cell's validated config (see :func:`validate_registered`).
    Third-party parts of that kind are accepted once their plugin is installed."""
    from pydantic import SerializeAsAny, WithJsonSchema, WrapValidator

    def check(value: Any, handler: Any, info: ValidationInfo) -> ComponentConfig:
        return validate_registered(kind, value, info.context, builtin=builtin)

    schema = {"anyOf": [{"type": "string"},
                        {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}],
              "description": f"a registered {kind} by name, with its options (cellnet components --kind {kind})"}
    return Annotated[SerializeAsAny[ComponentConfig], WrapValidator(check), WithJsonSchema(schema)]


class EvalConfig(BaseModel):
    """How ``cellnet eval`` measures a run."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    candidates: Literal["test", "all"] = Field(
        "test", description="answer candidates ranked for each question: the split's own answers or every answer")
    max_questions: int = Field(2000, ge=1, description="at most this many held-out questions")
    baselines: list[str] = Field(default_factory=lambda: ["identity", "mean", "ridge"],
                                 description="baselines computed beside the run, by name")


def format_validation_error(err: ValidationError, source: str, prefix: str = "") -> str:
    """Render every pydantic error of a run config as ``source: dotted.path: message`` on its own line
    (a section's discriminator tag, e.g. ``encoder.minilm.max_length``, left out of the path)."""
    return _format_validation_error(err, source, prefix, sections=set(SECTIONS))


def validate_component(registry: Registry, kind: str, data: Any, *, where: str, source: str = "config",
                       context: dict | None = None) -> ComponentConfig:
    """Validate one component section (``{"name": ..., ...}`` or a bare name): what
    :meth:`Registry.config_for <cellnet_core.registry.Registry.config_for>` does."""
    return registry.config_for(kind, data, where=where, source=source, context=context)


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
        "tracking": (list[union("tracker")], Field(  # type: ignore[misc]
            default_factory=list, description="trackers that observe the run, by registered name "
                                              "(e.g. [tensorboard, mlflow, csv]); they never change what is trained")),
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
            value = _parse_yaml(raw)
        except _YamlProblem as exc:
            raise ConfigError(f"{source}: '{key}': {exc}") from None
        except RecursionError:
            raise ConfigError(f"{source}: '{key}': the value is nested too deeply") from None
        except yaml.YAMLError:
            value = raw  # not YAML: the text itself
        node = data
        parts = key.split(".")
        for i, p in enumerate(parts[:-1]):
            if not isinstance(node.get(p), dict):
                if node.get(p) is not None and not isinstance(node[p], str):
                    # a section given by its name alone becomes {name: ...}; any other value has no fields
                    here = ".".join(parts[:i + 1])
                    raise ConfigError(f"{source}: '{item}': {here} is {_yaml_kind(node[p])} ({node[p]!r}), "
                                      f"not a section with fields; set it directly, e.g. {here}=...")
                node[p] = {} if node.get(p) is None else {"name": node[p]}
            node = node[p]
        node[parts[-1]] = value
    return data


def _yaml_kind(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", list: "a list"}.get(type(value),
                                                                                     type(value).__name__)


#: The most nodes a YAML document may expand to, every use of an alias counted: a run config has a
#: few hundred; an alias bomb ("billion laughs": nine lists of nine aliases of the previous one)
#: would expand to billions and exhaust the memory of whatever copies it.
MAX_YAML_NODES = 1_000_000


class StrictYamlLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader (no Python tags), with one change: a mapping that repeats a key is
    an error naming the key and both lines (plain ``safe_load`` keeps the last value silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        """The mapping of ``node``; a key given twice raises, naming it and both lines."""
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *base' merges; explicit keys may override it
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeConstructor reports it
                continue
            if first is not None:
                raise _YamlProblem(f"line {key_node.start_mark.line + 1}: duplicate key '{key}' "
                                   f"(first given on line {first}); give each key once")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


class _YamlProblem(yaml.YAMLError):
    """A YAML document that parses but is refused (its message names the line)."""


def _expanded_nodes(root: yaml.Node) -> int:
    """Nodes of the document with every alias expanded, counted without expanding them (each node's
    size is computed once); a recursive alias (a node inside itself) is refused."""
    sizes: dict[int, int] = {}
    entered: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        children = ([c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode)
                    else list(node.value) if isinstance(node, yaml.SequenceNode) else [])
        if done:
            entered.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[id(node)] > MAX_YAML_NODES:
                raise _YamlProblem(f"line {node.start_mark.line + 1}: the document expands to more than "
                                   f"{MAX_YAML_NODES:,} values through its aliases (*name); refusing to expand it")
            continue
        if id(node) in sizes:
            continue
        if id(node) in entered:
            raise _YamlProblem(f"line {node.start_mark.line + 1}: an alias refers to a value that contains it "
                               f"(a recursive structure); a config cannot hold one")
        entered.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def load_yaml(text: str, source: str = "config") -> Any:
    """``text`` read as YAML the way every cellnet config is read: ``yaml.safe_load`` (no Python
    tags) with duplicate keys refused, alias expansion bounded (:data:`MAX_YAML_NODES`) and deep
    nesting refused; any problem is a :class:`ConfigError` ``source: line N: message``."""
    try:
        return _parse_yaml(text)
    except _YamlProblem as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}: {where}unreadable YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{source}: unreadable YAML: nested too deeply") from None


def _parse_yaml(text: str) -> Any:
    loader = StrictYamlLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_nodes(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file's mapping (:func:`load_yaml`); an unreadable file or YAML raises
    :class:`ConfigError` naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    data = load_yaml(text, str(path))
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
    known = {"schema_version", "seed", "device", "eval", "tracking", *SECTIONS}
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
    if "training" not in data:
        _check_default_training(registry, data, source)
    if data.get("tracking") is not None:
        tracking = data["tracking"]
        if not isinstance(tracking, list):
            tracking = [tracking]  # `--set tracking=mlflow`
        validated["tracking"] = [validate_component(registry, "tracker", item, where=f"tracking[{i}]", source=source)
                                 for i, item in enumerate(tracking)]
    model = run_config_model(registry)
    merged = {**data, **validated}
    try:
        run = model.model_validate(merged, context={"registry": registry})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
    for section in SECTIONS:
        part = getattr(run, section, None)
        check = getattr(part, "check_run", None)
        if check is None:
            continue
        try:
            check(run, registry)
        except ConfigError as exc:  # e.g. from registry.config_for, whose lines read "config: path: ..."
            lines = [line.removeprefix("config: ") for line in str(exc).splitlines()]
            raise ConfigError("\n".join(line if line.startswith(f"{source}: ") else f"{source}: {line}"
                                        for line in lines)) from None
        except ValueError as exc:
            raise ConfigError(f"{source}: {section}: {exc}") from None
    return run


def available_memory() -> int | None:
    """Bytes of memory this machine has available now (psutil's ``available``, else Linux's
    ``MemAvailable``, else free pages by ``os.sysconf``); None where none of them can tell."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil is optional; any failure falls through to the OS
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n: float) -> str:
    """``1.5 GB``-style size (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover


def check_memory(run: BaseModel, source: str = "config", available: int | None = None) -> int:
    """Refuse a run that cannot train in this machine's memory: the sum of every section's
    :meth:`ComponentConfig.memory_bytes` (a lower bound) against :func:`available_memory` (or
    ``available``). Run by ``cellnet validate`` and by training before anything is allocated or
    written; returns the estimate in bytes. The message names the estimate, its largest parts and
    what is available."""
    parts: dict[str, int] = {}
    for section in SECTIONS:
        estimate = getattr(getattr(run, section, None), "memory_bytes", None)
        if callable(estimate):
            for what, n in (estimate(run) or {}).items():
                parts[f"{section}: {what}"] = parts.get(f"{section}: {what}", 0) + int(n)
    total = sum(parts.values())
    have = available_memory() if available is None else available
    if have is None or total <= have:
        return total
    largest = sorted(parts.items(), key=lambda kv: -kv[1])[:2]
    detail = "; ".join(f"{what} = {format_bytes(n)}" for what, n in largest)
    raise ConfigError(f"{source}: training needs at least {format_bytes(total)} of memory ({detail}), but this "
                      f"machine has {format_bytes(have)} available; make the lattice, its channels or "
                      f"training.batch_size smaller")


def _check_default_training(registry: "Registry", data: dict[str, Any], source: str) -> None:
    """Without a ``training`` section the default strategy fits only the decoder: refuse a config
    whose core is not the default one, which that strategy would leave as initialised."""
    core = data.get("core")
    core_name = core.get("name") if isinstance(core, dict) else core
    if core_name is None or core_name == DEFAULTS["core"]["name"]:
        return
    default = DEFAULTS["training"]["name"]
    others = [n for n in registry.names("strategy") if n != default]
    raise ConfigError(
        f"{source}: training: section missing; the default strategy '{default}' fits only the decoder and "
        f"would leave core '{core_name}' untrained: add a training section"
        + (f" (strategies: {', '.join(others)})" if others else "")
        + f", or write 'training: {{name: {default}}}' to keep the untrained core on purpose")


def load_config(registry: "Registry", path: str | Path, overrides: list[str] | None = None) -> BaseModel:
    """Read a YAML file, apply ``--set`` overrides, validate."""
    data = apply_overrides(read_yaml(path), overrides or [])
    return validate_run_config(registry, data, source=str(path))


def config_to_dict(config: BaseModel) -> dict[str, Any]:
    """A validated config as plain JSON-able data (every default filled in)."""
    return json.loads(config.model_dump_json())


def _type_name(ann: Any) -> str:
    """A short, readable name of a field's type: ``int``, ``a|b``, ``[int, int, int]``, ``str | null``."""
    import types
    import typing

    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        names = [("null" if a is type(None) else _type_name(a)) for a in args]
        tags = []
        for a in args:
            fields = getattr(a, "model_fields", {})
            default = fields["name"].default if "name" in fields else None
            if isinstance(default, str):
                tags.append(default)
        if tags and len(tags) == len([a for a in args if a is not type(None)]):
            return "one of: " + "|".join(tags)
        return " | ".join(names)
    if origin in (tuple, list, dict, set):
        inner = ", ".join(_type_name(a) for a in args if a is not Ellipsis)
        if origin is tuple:
            return f"[{inner}]"
        return f"{origin.__name__}[{inner}]" if inner else origin.__name__
    if isinstance(ann, type):
        if issubclass(ann, BaseModel):
            return "mapping"
        return ann.__name__
    return str(ann).replace("typing.", "")


def describe_fields(config_cls: type[BaseModel], prefix: str = "") -> list[dict[str, Any]]:
    """Rows ``{field, type, default, description}`` of a component's config, for ``cellnet components
    NAME --fields``. Nested models (e.g. the lattice's ``plasticity``) are listed field by field with
    dotted names; a union of named parts (``cell``) shows its names and its default."""
    from pydantic_core import PydanticUndefined

    rows = []
    for fname, info in config_cls.model_fields.items():
        if fname == "name" and not prefix:
            continue
        ann = info.annotation
        if info.default is not PydanticUndefined:
            default = info.default
        elif info.default_factory is not None:
            default = info.default_factory()
        else:
            default = "(required)"
        if isinstance(default, BaseModel):
            default = json.loads(default.model_dump_json())
        if isinstance(default, tuple):
            default = list(default)
        nested = ann if isinstance(ann, type) and issubclass(ann, BaseModel) and "name" not in ann.model_fields else None
        if nested is not None:
            rows.append({"field": prefix + fname, "type": "mapping", "default": None,
                         "description": info.description or (nested.__doc__ or "").strip().split("\n")[0]})
            rows.extend(describe_fields(nested, prefix=f"{prefix}{fname}."))
            continue
        rows.append({"field": prefix + fname, "type": _type_name(ann), "default": default,
                     "description": info.description or ""})
    return rows


def json_schema(registry: "Registry") -> dict[str, Any]:
    """JSON Schema of a run config for the installed components (``cellnet schema``)."""
    return run_config_model(registry).model_json_schema()
