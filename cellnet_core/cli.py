"""The ``cellnet`` command.

Exit codes: 0 success, 1 failure (a bug or an unexpected error), 2 bad input or config (one
readable line on stderr, no traceback; set ``CELLNET_DEBUG=1`` to see one anyway).

The core's own commands are defined here; plugins add theirs, and options of these, through the
``cellnet_register_commands`` hook (:mod:`cellnet_core.commands`), which :func:`build_parser`
calls for every plugin.
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
    """``cellnet plugins``: each plugin, its distribution, version and what it provides."""
    pm, registry = _load(quiet=True)
    build_parser(pm, warn=False)  # records each plugin's commands, and a plugin whose commands failed
    rows = [{"name": p.name, "distribution": p.distribution, "version": p.version, "module": p.module,
             "provides": p.provides, "error": p.error, "problems": p.problems} for p in pm.report.plugins]
    if args.json:
        _print({"plugins": rows, "warnings": pm.report.warnings}, True)
        return 0
    for r, info in zip(rows, pm.report.plugins):
        status = f"FAILED: {r['error']}" if r["error"] else ", ".join(r["provides"]) or (
            "hooks: " + ", ".join(h for h in info.hooks if not h.startswith("cellnet_register_"))
            if any(not h.startswith("cellnet_register_") for h in info.hooks) else "(nothing registered)")
        if r["problems"]:  # parts refused at registration; the warnings below say why
            status += f"  [refused: {', '.join(q.split(': ', 1)[0] for q in r['problems'])}]"
        print(f"{r['name']:<12} {r['distribution'] or '-':<28} {r['version'] or '-':<8} {status}")
    for w in pm.report.warnings:
        print(f"warning: {w}")
    return 0


def _fmt_default(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def cmd_components(args) -> int:
    """``cellnet components``: registered parts by kind, or one part's config fields."""
    _, registry = _load()
    from cellnet_core.registry import KINDS, _unknown_message

    if args.kind and args.kind not in KINDS:
        raise ConfigError(_unknown_message("kind", args.kind, list(KINDS), "--kind"))
    if args.fields and not args.name:
        raise ConfigError("components: --fields lists one component's config fields; give its NAME, "
                          "e.g. 'cellnet components lattice --fields'")
    if args.name:
        return _component_detail(registry, args)
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
    print("(a component's config fields: cellnet components NAME --fields)")
    return 0


def _component_detail(registry, args) -> int:
    from cellnet_core.config import describe_fields
    from cellnet_core.registry import _unknown_message

    kinds = [args.kind] if args.kind else [k for k in registry.kinds() if args.name in registry.names(k)]
    entries = [registry.get(k, args.name, where="components") for k in kinds if args.name in registry.names(k)]
    if not entries:
        every = sorted({n for k in registry.kinds() for n in registry.names(k)} if not args.kind
                       else set(registry.names(args.kind)))
        raise ConfigError(_unknown_message(args.kind or "component", args.name, every, "components"))
    out = []
    for e in entries:
        doc = (e.config_cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        out.append({"kind": e.kind, "name": e.name, "plugin": e.plugin, "summary": e.summary or doc,
                    "fields": describe_fields(e.config_cls)})
    if args.json:
        _print(out if len(out) > 1 else out[0], True)
        return 0
    for i, row in enumerate(out):
        if i:
            print()
        print(f"{row['kind']} '{row['name']}' ({row['plugin']}): {row['summary']}")
        if not row["fields"]:
            print("  (no fields besides name)")
        for f in row["fields"]:
            default = "" if f["type"] == "mapping" and f["default"] is None else f" = {_fmt_default(f['default'])}"
            print(f"  {f['field']}: {f['type']}{default}")
            if f["description"]:
                print(f"      {f['description']}")
    return 0


def cmd_validate(args) -> int:
    """``cellnet validate``: check configs and their data files; exit 2 when one is bad."""
    from cellnet_core.api import check_baselines
    from cellnet_core.config import check_memory, load_config

    pm, registry = _load()
    bad = 0
    for path in args.configs:
        try:
            config = load_config(registry, path, args.set)
            check_memory(config, path)  # what training would try to allocate
            check_baselines(config, pm, path)  # what eval would reject
            if not args.no_data:  # what training builds first: a missing or malformed data file fails here too
                registry.build("dataset", config.data, None)
            print(f"{path}: ok")
        except CellnetError as exc:
            print(str(exc), file=sys.stderr)
            bad += 1
    return 2 if bad else 0


def cmd_config(args) -> int:
    """``cellnet config``: the resolved config of a YAML file or run directory, defaults filled in."""
    import yaml

    from cellnet_core import api

    pm, registry = _load()
    data = api.resolved_config(args.source, args.set, plugins=(pm, registry))
    if args.json:
        _print(data, True)
    else:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return 0


def cmd_schema(args) -> int:
    """``cellnet schema``: the JSON Schema of a run config for the installed components."""
    from cellnet_core.config import json_schema

    _, registry = _load()
    text = json.dumps(json_schema(registry), indent=2)
    if args.out:
        from cellnet_core.checkpoint import atomic_write_text

        atomic_write_text(output_file(args.out, "schema: --out"), text + "\n")
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


def output_file(path: str | Path, option: str) -> Path:
    """``path`` as a file to write, refused (one line naming it) when it is a folder or its folder
    does not exist: an output option never creates folders the user did not ask for."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{option} {path}: is a folder; give a file name, e.g. {p / 'out.json'}")
    folder = p.parent
    if not folder.exists():
        raise ConfigError(f"{option} {path}: no such folder '{folder}' (create it first)")
    if not folder.is_dir():
        raise ConfigError(f"{option} {path}: '{folder}' is not a folder")
    return p


def train_target(args) -> tuple[str | None, Path]:
    """The config file (None for ``--resume``) and the run directory that a ``cellnet train``
    command line names, after checking that its arguments go together (:class:`ConfigError` if not).

    Public for plugins that take over ``train`` (``cellnet_register_commands``'s ``add_options``):
    the training plugin's ``--nproc`` launch resolves the run the same way."""
    from cellnet_core.run import target_of

    if args.resume and args.config:
        raise ConfigError("train: give a CONFIG file or --resume RUN_DIR, not both (a resumed run keeps its "
                          "own config; change it with --set)")
    if args.resume and args.run_dir:
        raise ConfigError("train: --resume RUN_DIR names the run; drop --run-dir")
    if not args.resume and not args.config:
        raise ConfigError("train: give a CONFIG file or --resume RUN_DIR")
    if getattr(args, "restart", False) and not args.resume:
        raise ConfigError("train: --restart goes with --resume RUN_DIR (it trains that run again from scratch)")
    if args.resume:
        return None, target_of(args.resume)
    return args.config, Path(args.run_dir) if args.run_dir else _default_run_dir(args.config)


def cmd_train(args) -> int:
    """``cellnet train``: train a run (:func:`cellnet_core.api.train`)."""
    from cellnet_core import api

    pm, registry = _load()
    config, run_dir = train_target(args)
    pipe = api.train(config, run_dir, overwrite=args.overwrite, resume=bool(args.resume),
                     overrides=args.set, plugins=(pm, registry), restart=args.restart)
    if pipe.train_info is not None:
        print(f"saved run: {pipe.run_dir}")
    return 0


def _questions(args) -> list[str]:
    """The questions of a non-interactive ``ask``: the TEXT arguments, else stdin's lines, stripped.
    Empty ones are skipped, saying so (none left: an error); text that is not valid UTF-8 is an
    error naming the question or line and the byte."""
    from cellnet_core.errors import DataError

    if args.texts:
        given, what = [(f"question {i}", t) for i, t in enumerate(args.texts, 1)], "question"
    elif sys.stdin is None:
        return []
    else:
        given, what = [(f"stdin line {n}", t) for n, t in enumerate(_stdin_lines(), 1)], "stdin line"
    out, empty = [], []
    for where, text in given:
        bad = not_utf8(text)
        if bad:
            raise DataError(f"ask: {where} is not valid UTF-8 ({bad}); give questions as UTF-8 text")
        if text.strip():
            out.append(text.strip())
        else:
            empty.append(where.rsplit(" ", 1)[1])
    if empty:
        note = f"{len(empty)} empty {what}(s) ({what} {', '.join(empty[:5])}{', …' if len(empty) > 5 else ''})"
        if not out:
            raise DataError(f"ask: nothing to answer: {note}")
        print(f"ask: skipped {note}", file=sys.stderr)
    return out


def _stdin_lines() -> list[str]:
    """stdin's lines decoded as UTF-8 here (not by the locale's codec), so that a bad byte is an
    error naming its line instead of a traceback."""
    from cellnet_core.errors import DataError

    raw = getattr(sys.stdin, "buffer", None)
    if raw is None:  # a text stream (e.g. io.StringIO in tests)
        return [line.rstrip("\r\n") for line in sys.stdin]
    lines = []
    for n, line in enumerate(raw, 1):
        try:
            lines.append(line.decode("utf-8").rstrip("\r\n"))
        except UnicodeDecodeError as exc:
            raise DataError(f"ask: stdin line {n} is not valid UTF-8 (byte 0x{line[exc.start]:02x} at column "
                            f"{exc.start + 1}); give questions as UTF-8 text") from None
    return lines


def not_utf8(text: str) -> str | None:
    """Why ``text`` cannot be encoded as UTF-8 (``"byte 0xff at character 3"``), or None. Command-line
    arguments that are not valid UTF-8 reach Python as lone surrogates (``surrogateescape``)."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"lone surrogate U+{code:04X}"
        return f"{what} at character {exc.start + 1}"


def _at_least_one(value: int, option: str, command: str) -> None:
    if value < 1:
        raise ConfigError(f"{command}: {option} must be at least 1, got {value}")


def _readline_history() -> Any:
    """Line editing and a history file (``<cellnet home>/ask_history``) for interactive ``ask``."""
    try:
        import readline
    except ImportError:  # e.g. Windows without pyreadline: plain input()
        return None
    import atexit

    from cellnet_core.cache import cellnet_home

    path = cellnet_home() / "ask_history"
    try:
        readline.read_history_file(path)
    except (FileNotFoundError, OSError):
        pass
    readline.set_history_length(1000)

    def save() -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)
        except OSError:
            pass

    atexit.register(save)
    return readline


def _load_run(args, registry, *, chatty: bool | None = None):
    from cellnet_core import api

    t0 = time.perf_counter()
    chatty = sys.stderr.isatty() if chatty is None else chatty
    if chatty:
        print(f"loading {args.run_dir} …", file=sys.stderr, flush=True)
    pipe = api.load_run(args.run_dir, device=args.device, plugins=(None, registry), warn=False)
    if chatty:
        print(f"loaded in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    note = api.untrained_warning(args.run_dir)
    if note:
        print(note, file=sys.stderr, flush=True)
    return pipe


class _Loader:
    """Loads the run in a background thread while the first question is typed: most of ``ask``'s
    start-up is importing torch and the teacher's model code and reading its weights."""

    def __init__(self, args, registry):
        import threading

        self.args, self.registry = args, registry
        self.pipe, self.error = None, None
        self.t0 = time.perf_counter()
        self.thread = threading.Thread(target=self._run, name="cellnet-ask-load", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from cellnet_core import api

        try:
            self.pipe = api.load_run(self.args.run_dir, device=self.args.device, plugins=(None, self.registry),
                                     warn=False)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread by get()
            self.error = exc

    def get(self):
        """The loaded pipeline (waiting for it, visibly, if it is not ready yet)."""
        if self.thread.is_alive():
            print("(still loading …)", file=sys.stderr, flush=True)
            self.thread.join()
            print(f"loaded in {time.perf_counter() - self.t0:.1f}s", file=sys.stderr, flush=True)
        if self.error is not None:
            raise self.error
        return self.pipe


def cmd_ask(args) -> int:
    """``cellnet ask``: answer the questions given, from stdin, or typed on a terminal."""
    from cellnet_core import api

    _at_least_one(args.k, "-k", "ask")
    for i, turn in enumerate(args.context or [], 1):
        if not_utf8(turn):
            raise ConfigError(f"ask: --context turn {i} is not valid UTF-8 ({not_utf8(turn)})")
    _, registry = _load()
    interactive = not args.texts and sys.stdin is not None and sys.stdin.isatty()
    conversation = _ask_conversation(args) if interactive else None
    if interactive:
        # the cheap checks now (a damaged run fails before the prompt), the slow loading meanwhile
        api.check_run_dir(args.run_dir)
        print(f"loading {args.run_dir} … (type your first question meanwhile)", file=sys.stderr, flush=True)
        loader = _Loader(args, registry)
        note = api.untrained_warning(args.run_dir)
        if note:
            print(note, file=sys.stderr, flush=True)
        _readline_history()
        print("cellnet ask: one question per line, Ctrl-D to end", file=sys.stderr)
        questions_iter = iter(lambda: input("> "), None)
        pipe = None
    else:
        pipe = _load_run(args, registry)
        questions_iter = iter(_questions(args))
    results = []
    while True:
        try:
            q = next(questions_iter)
        except (StopIteration, EOFError):
            if interactive:
                print(file=sys.stderr)
            break
        except UnicodeDecodeError as exc:  # typed on a terminal whose encoding is not UTF-8
            print(f"(not valid UTF-8: byte 0x{exc.object[exc.start]:02x}; type the question again)", file=sys.stderr)
            continue
        if interactive and not_utf8(q):
            print(f"(not valid UTF-8: {not_utf8(q)}; type the question again)", file=sys.stderr)
            continue
        if not q.strip():
            continue
        if pipe is None:
            pipe = loader.get()
        if conversation is not None:  # the conversation so far: answers just given rank lower; context runs get the turns
            from cellnet_core.conversations import answer_in_conversations

            ans = answer_in_conversations(pipe, [q], [conversation[0]], k=args.k, settings=conversation[1],
                                          context=args.context)[0]
        else:
            ans = pipe.answer([q], k=args.k, context=args.context)[0]
        row = {"question": q, "answer": ans.text, "score": ans.score, "candidates": ans.candidates,
               "steps": ans.steps}
        if args.baseline:
            import torch

            with torch.no_grad():
                base = pipe.decoder.decode(pipe.encode([q]))[0]
            row["baseline_answer"] = base
        results.append(row)
        if not args.json:
            if not interactive:  # the terminal already shows what was typed
                print(f"Q: {printable(q)}")
            if ans.text:
                print(f"A: {printable(ans.text)}   [score {ans.score:.3f}"
                      + (f", {ans.steps} steps]" if ans.steps else "]"))
            else:
                print("A: (no confident match" + _nearest_note(pipe, ans) + ")")
            if args.baseline:
                print(f"   baseline (question's own embedding): "
                      f"{printable(row['baseline_answer']) or '(no confident match)'}")
            sys.stdout.flush()
    if args.json:
        _print(results, True)
    return 0


def _ask_conversation(args) -> Any:
    """``(Conversation, ConversationSettings)`` of an interactive ``ask`` (see :mod:`cellnet_core.conversations`)."""
    from cellnet_core.conversations import Conversation, ConversationSettings

    settings = ConversationSettings(penalty=args.repeat_penalty)
    return Conversation(max_turns=settings.max_turns), settings


def printable(text: str) -> str:
    """``text`` safe to print on a terminal: control characters (escape sequences, carriage
    returns, bells; tabs excepted) are shown as ``\\x1b``-style escapes instead of acting."""
    return "".join(c if c == "\t" or (c.isprintable() or c == " ") else repr(c)[1:-1] for c in text)


def _nearest_note(pipe: Any, ans: Any) -> str:
    """``: nearest "…" scores 0.28 < min_score 0.35`` for an answer the decoder held back."""
    if not ans.candidates:
        return ""
    best = ans.candidates[0]
    text = printable(best["text"] if len(best["text"]) <= 60 else best["text"][:57] + "...")
    limit = getattr(getattr(pipe.decoder, "cfg", None), "min_score", None)
    return f': nearest "{text}" scores {best["score"]:.3f}' + (f" < min_score {limit:g}" if limit is not None else "")


def cmd_eval(args) -> int:
    """``cellnet eval``: the run beside its baselines on held-out data (:func:`cellnet_core.api.evaluate`)."""
    from cellnet_core import api
    from cellnet_core.evaluation import format_table

    _at_least_one(args.k, "-k", "eval")
    pm, registry = _load()
    pipe = _load_run(args, registry)
    names = args.baselines.split(",") if args.baselines else None
    result = api.evaluate(pipe, args.data, names, plugins=(pm, registry), text=not args.no_text, dump=args.dump,
                          k=args.k)
    if args.json:
        _print(result, True)
    else:
        print(f"{result['data']}: {result['questions']} questions"
              + (f", {result['candidates']} candidate answers" if "candidates" in result else ""))
        print(format_table(result))
    if "dump" in result:
        print(f"wrote {result['dump']['rows']} rows (one per question) to {result['dump']['path']}", file=sys.stderr)
    return 0


def cmd_cache(args) -> int:
    """``cellnet cache``: where the embedding cache is (and how that was chosen), what it holds; clear it."""
    from cellnet_core.cache import cache_clear, cache_dir_source, cache_info

    if args.dir:
        root, how = Path(args.dir), "given with --dir"
    else:
        root, how = cache_dir_source()
    if args.action == "clear":
        n = cache_clear(root)
        print(f"removed {n} cache file(s) from {root}")
        return 0
    rows = cache_info(root)
    if args.json:
        _print({"dir": str(root), "chosen_by": how, "encoders": rows}, True)
        return 0
    print(f"embedding cache: {root}  ({how})")
    if not rows:
        print("  (empty)")
    for r in rows:
        print(f"  {r['texts']:>8} texts  {r['bytes'] / 1e6:8.1f} MB  {r['shards']:>4} shards  {r['fingerprint']}")
    return 0


def cmd_bench(args) -> int:
    """``cellnet bench``: run every ``bench_*.py`` script under ``--root``."""
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
def _version() -> str:
    from importlib import metadata

    from cellnet_core import __version__

    try:
        n = len({ep.name for ep in metadata.entry_points(group="cellnet.plugins")})
    except Exception:  # noqa: BLE001 - a broken distribution must not break --version
        n = 0
    return f"cellnet {__version__} (cellnet-core); {n} plugin(s) installed, see 'cellnet plugins'"


_KIND_HELP = "encoder, reshaper, core, kernel, decoder, strategy, dataset, cell or loss"
_SET_HELP = "override a config field, e.g. --set training.epochs=5 (the value is read as YAML; repeatable)"
_DEVICE_HELP = "run on this device instead of the run's own: cpu, cuda, cuda:N, mps or auto"


#: Commands and options that plugins provide, by the distribution that brings them: only for the
#: one-line hint when one is used without its plugin (the core imports none of them).
PLUGIN_COMMANDS: dict[str, str] = {"viz": "cellnet-lattice", "serve": "cellnet-serve", "sweep": "cellnet-sweep",
                                   "compare": "cellnet-sweep", "card": "cellnet-sweep"}
PLUGIN_OPTIONS: dict[tuple[str, str], str] = {("train", "--nproc"): "cellnet-training"}


class _CommandListFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the provider column of the command list (``plugins   core     list plugins…``)
    aligned: the first word and its padding stay as written, the rest wraps beside them."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        word, gap, rest = text.partition(" ")
        pad = len(rest) - len(rest.lstrip(" "))
        if not gap or pad == 0:
            return super()._split_lines(text, width)
        prefix = word + " " * (pad + 1)
        lines = super()._split_lines(rest.lstrip(" "), max(width - len(prefix), 20))
        return [prefix + lines[0]] + [" " * len(prefix) + line for line in lines[1:]]


def _sub(sub, name: str, help: str, examples: str, description: str | None = None, note: str = ""):
    epilog = ("examples:\n" + examples if examples else "") + (f"\n\n{note}" if note else "")
    return sub.add_parser(name, help=help,
                          description=description or help[:1].upper() + help[1:] + ".",
                          epilog=epilog or None, formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser(pm: Any = None, *, warn: bool = True) -> argparse.ArgumentParser:
    """The ``cellnet`` argument parser: every subcommand with help for each option and examples.

    The core's commands, then those the plugins of ``pm`` (default: a fresh discovery) add
    through ``cellnet_register_commands``; a plugin whose commands fail is recorded in
    ``pm.report`` and, with ``warn``, named in a warning line on stderr.
    """
    p = argparse.ArgumentParser(
        prog="cellnet", description=__doc__.splitlines()[0] if __doc__ else "",
        epilog="examples:\n  cellnet validate configs/default.yaml\n  cellnet train configs/default.yaml "
               "--run-dir runs/demo\n  cellnet ask runs/demo \"how are you?\"\n\n"
               "'cellnet COMMAND --help' explains each command and its options.",
        formatter_class=_CommandListFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    p.add_argument("--version", action="version", version=_version(),
                   help="print cellnet's version and how many plugins are installed, then exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = _sub(sub, "plugins", "list plugins, versions and what each provides",
             "  cellnet plugins\n  cellnet plugins --json")
    s.add_argument("--json", action="store_true", help="print the plugins and any warnings as JSON")
    s.set_defaults(func=cmd_plugins)

    s = _sub(sub, "components", "list registered components, or one component's config fields",
             "  cellnet components --kind core\n  cellnet components lattice --fields\n"
             "  cellnet components --kind kernel --fields fused --json")
    s.add_argument("name", nargs="?", metavar="NAME", help="show this component (its summary and config fields)")
    s.add_argument("--kind", help=f"only this kind: {_KIND_HELP}")
    s.add_argument("--fields", action="store_true",
                   help="list NAME's config fields with type, default and description")
    s.add_argument("--json", action="store_true", help="print as JSON")
    s.set_defaults(func=cmd_components)

    s = _sub(sub, "validate", "check config files (and their data files) without training",
             "  cellnet validate configs/*.yaml\n  cellnet validate configs/default.yaml --set core.steps=20\n"
             "  cellnet validate configs/*.yaml --no-data")
    s.add_argument("configs", nargs="+", metavar="CONFIG", help="YAML run configs")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=_SET_HELP)
    s.add_argument("--no-data", action="store_true",
                   help="skip reading the datasets (faster for large corpora; config checks only)")
    s.set_defaults(func=cmd_validate)

    s = _sub(sub, "config", "print a run's or a YAML file's config with every default filled in",
             "  cellnet config configs/default.yaml\n  cellnet config runs/demo\n"
             "  cellnet config configs/default.yaml --set core.steps=20 --json")
    s.add_argument("source", metavar="RUN_DIR_OR_YAML", help="a run directory or a YAML config file")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=_SET_HELP)
    s.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    s.set_defaults(func=cmd_config)

    s = _sub(sub, "schema", "JSON Schema of a run config for the installed components",
             "  cellnet schema --out cellnet.schema.json")
    s.add_argument("--out", metavar="FILE", help="write to this file instead of stdout")
    s.set_defaults(func=cmd_schema)

    s = _sub(sub, "train", "train a run from a config",
             "  cellnet train configs/default.yaml --run-dir runs/demo\n"
             "  cellnet train configs/default.yaml --run-dir runs/demo --overwrite\n"
             "  cellnet train --resume runs/demo --set training.epochs=20\n"
             "  cellnet train --resume runs/demo --restart",
             description="Train a run from a config. The run is written into a hidden sibling "
                         "(.NAME.partial) and moved to the run directory when complete; an interrupted "
                         "run stays there for --resume.")
    s.add_argument("config", nargs="?", metavar="CONFIG", help="YAML run config (not with --resume)")
    s.add_argument("--run-dir", metavar="DIR", help="where to write the run (default runs/<config>-<time>); "
                                                    "must be empty or new unless --overwrite")
    s.add_argument("--overwrite", action="store_true",
                   help="replace the run in --run-dir (the old one stays until the new one is complete)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=_SET_HELP)
    s.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run (or train a complete one "
                                                       "further) from its last checkpoint")
    s.add_argument("--restart", action="store_true",
                   help="with --resume: train the run again from scratch with its config (when its training "
                        "state is gone or not wanted); the run stays in place until the new training is complete")
    s.set_defaults(func=cmd_train)

    s = _sub(sub, "ask", "answer questions with a trained run",
             "  cellnet ask runs/demo \"how are you?\"\n  cellnet ask runs/demo < examples/questions.txt\n"
             "  cellnet ask runs/demo            (interactive: line editing and history)\n"
             "  cellnet ask runs/demo \"hi\" --json -k 3\n"
             "  cellnet ask --context \"I just got back from Spain\" runs/chat \"how was it?\"",
             description="Answer questions with a trained run: the texts given, one per line from stdin, "
                         "or interactively on a terminal. The score is the decoder's score of the answer "
                         "(cosine similarity to the lattice's output embedding for retrieval decoders).")
    s.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by 'cellnet train'")
    s.add_argument("texts", nargs="*", metavar="TEXT", help="questions (default: one per line from stdin)")
    s.add_argument("-k", type=int, default=5, metavar="K", help="candidates to report per question (default 5)")
    s.add_argument("--json", action="store_true", help="print answers, candidates, scores and lattice steps as JSON")
    s.add_argument("--baseline", action="store_true",
                   help="also show the answer of the question's own embedding (no lattice)")
    s.add_argument("--context", action="append", metavar="TURN",
                   help="a previous turn of the conversation, oldest first (repeat for several); for runs "
                        "whose reshaper takes several turns (context-planes)")
    s.add_argument("--repeat-penalty", type=float, default=0.1, metavar="W",
                   help="interactive: score taken off an answer given in the last 3 turns, so a repeated "
                        "question gets the next-best answer (default 0.1; 0: off)")
    s.add_argument("--device", default=None, help=_DEVICE_HELP)
    s.set_defaults(func=cmd_ask)

    s = _sub(sub, "eval", "evaluate a run and the baselines on held-out data",
             "  cellnet eval runs/demo\n  cellnet eval runs/demo --baselines identity,mean --json\n"
             "  cellnet eval runs/demo --data my_pairs.jsonl\n"
             "  cellnet eval runs/demo --dump answers.jsonl     (one row per question, for error analysis)\n"
             "  cellnet eval runs/demo --no-text                (embedding metrics only: no decoding)",
             description="Evaluate a run and the baselines on held-out data: rank the candidate answers by "
                         "embedding (recall@1, recall@10, MRR, cosine) and, on question-answer pairs, score "
                         "the answer text decoded through the run's decoder against the reference answers "
                         "(BLEU, sentence BLEU, ROUGE-L, token F1, exact match, re-embedding cosine; an empty "
                         "answer counts as an abstention and scores 0).")
    s.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by 'cellnet train'")
    s.add_argument("--data", metavar="FILE", help="a pairs (JSONL/CSV/TSV) or selection (JSONL) file "
                                                  "(default: the test split of the run's dataset)")
    s.add_argument("--baselines", metavar="A,B", help="comma-separated baseline names (default: the config's "
                                                      "eval.baselines)")
    s.add_argument("--json", action="store_true", help="print the metrics, text scores and comparisons as JSON")
    s.add_argument("--no-text", action="store_true",
                   help="skip decoding and the text metrics (decoding costs one decoder call per question)")
    s.add_argument("--dump", metavar="FILE.jsonl",
                   help="write one JSON line per test question: question, reference, answer, scores, the "
                        "run's top candidates with scores and each baseline's answer")
    s.add_argument("-k", type=int, default=5, metavar="K", help="candidates per question in --dump (default 5)")
    s.add_argument("--device", default=None, help=_DEVICE_HELP)
    s.set_defaults(func=cmd_eval)

    s = _sub(sub, "cache", "show where the embedding cache is and what it holds, or clear it",
             "  cellnet cache info\n  cellnet cache clear\n  CELLNET_HOME=/data/cellnet cellnet cache info",
             description="Show where the embedding cache is and what it holds, or clear it. Its folder: "
                         "$CELLNET_CACHE_DIR if set, else $CELLNET_HOME/embeddings, else "
                         "~/.cache/cellnet/embeddings.")
    s.add_argument("action", choices=["info", "clear"], help="info: location and contents; clear: delete the "
                                                             "cached embeddings")
    s.add_argument("--dir", metavar="DIR", help="this cache folder instead of the default")
    s.add_argument("--json", action="store_true", help="print the location and contents as JSON")
    s.set_defaults(func=cmd_cache)

    s = _sub(sub, "bench", "run the benchmark scripts (they write docs/RESULTS.md fragments)",
             "  cellnet bench --quick\n  cellnet bench --root bench")
    s.add_argument("--root", default="bench", metavar="DIR", help="folder of bench_*.py scripts (default bench)")
    s.add_argument("--quick", action="store_true", help="pass --quick to every script (smaller, faster runs)")
    s.set_defaults(func=cmd_bench)

    _plugin_commands(sub, pm, warn=warn)
    p.epilog += "\nBeside each command: the plugin that provides it ('core': cellnet-core itself)."
    return p


def _plugin_commands(sub: Any, pm: Any, *, warn: bool) -> None:
    """Add the commands and options of every plugin (``cellnet_register_commands``) to ``sub``."""
    from cellnet_core.commands import CORE, CommandRegistry, collect_commands, report_failure

    if pm is None:
        from cellnet_core.plugins import create_plugin_manager

        pm = create_plugin_manager()
    cli = CommandRegistry()
    cli.current_plugin = CORE
    core = dict(sub.choices)
    for name, sp in core.items():
        cli.add_command(name, help=sp.description or "", configure=lambda _p: None, run=sp.get_default("func"))
    warnings = collect_commands(pm, cli)
    while True:  # configure on scratch parsers first: a plugin that fails there adds nothing at all
        failure = _try_configure(cli, core)
        if failure is None:
            break
        warnings.append(report_failure(pm, *failure))
        cli.remove_plugin(failure[0])
    infos = {i.name: i for i in pm.report.plugins}
    parsers = dict(core)
    for cmd in cli.commands():
        if cmd.plugin == CORE:
            continue
        info = infos.get(cmd.plugin)
        origin = f"{info.distribution} {info.version}".strip() if info is not None else ""
        note = f"provided by plugin '{cmd.plugin}'" + (f" ({origin})" if origin else "")
        parsers[cmd.name] = sp = _sub(sub, cmd.name, cmd.help, cmd.examples, cmd.description, note)
        cmd.configure(sp)
        sp.set_defaults(func=cmd.run)
        if info is not None:
            info.provides = sorted(set(info.provides) | {f"command:{cmd.name}"})
    for opt in cli.options():
        sp = parsers[opt.command]
        before = set(sp._option_string_actions)
        opt.configure(sp)
        added = [o for o in sp._option_string_actions if o not in before and o.startswith("--")]
        info = infos.get(opt.plugin)
        if info is not None and added:
            info.provides = sorted(set(info.provides) | {f"option:{opt.command} {' '.join(added)}"})
        if opt.examples:
            sp.epilog = (sp.epilog or "examples:") + "\n" + opt.examples.rstrip("\n")
    for name in cli.names():
        if any(o.run is not None for o in cli.options(name)):
            parsers[name].set_defaults(func=cli.runner(name))
    providers = {c.name: c.plugin for c in cli.commands()}
    width = max(map(len, providers.values()))
    for action in sub._choices_actions:  # the provider as a column of 'cellnet --help'
        action.help = f"{providers.get(action.dest, CORE):<{width}}  {action.help}"
    if warn:
        for line in warnings:
            print(f"warning: {line}", file=sys.stderr)


def _try_configure(cli: Any, core: dict[str, argparse.ArgumentParser]) -> tuple[str, str] | None:
    """Run every plugin's ``configure`` on scratch parsers; ``(plugin, error)`` of the first that
    raises (a clashing option included), or None."""
    from cellnet_core.commands import CORE

    scratch: dict[str, argparse.ArgumentParser] = {
        n: argparse.ArgumentParser(prog=f"cellnet {n}", add_help=False, parents=[sp]) for n, sp in core.items()}
    steps = [(c.plugin, f"cellnet {c.name}", c.name, c.configure) for c in cli.commands() if c.plugin != CORE]
    steps += [(o.plugin, f"options of 'cellnet {o.command}'", o.command, o.configure) for o in cli.options()]
    for plugin, what, name, configure in steps:
        parser = scratch.setdefault(name, argparse.ArgumentParser(prog=f"cellnet {name}"))
        try:
            configure(parser)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - reported as the plugin's failure
            return plugin, f"configuring {what} raised {type(exc).__name__}: {exc}"
    return None


def _missing_plugin(parser: argparse.ArgumentParser, argv: Sequence[str]) -> str | None:
    """The one-line hint for a command or option whose plugin is not loaded, or None."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is None:
        return None
    if command not in sub.choices:
        dist = PLUGIN_COMMANDS.get(command)
        return None if dist is None else f"'cellnet {command}' {_needs(dist)}"
    taken = set(sub.choices[command]._option_string_actions)
    for (cmd, option), dist in PLUGIN_OPTIONS.items():
        if cmd == command and option not in taken and any(a == option or a.startswith(option + "=") for a in argv):
            return f"{command} {option} {_needs(dist)}"
    return None


def _needs(dist: str) -> str:
    return (f"needs the {dist} plugin, which is not installed or did not load (see 'cellnet plugins'): "
            f"pip install {dist} (from a source checkout: pip install -e plugins/{dist})")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cellnet`` command line on ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    missing = _missing_plugin(parser, argv)
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    args.argv = argv  # for commands that start other processes with the same arguments
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
    except OSError as exc:  # disk full, read-only folder, a path that is not a folder: the path and why
        if os.environ.get("CELLNET_DEBUG"):
            raise
        where = exc.filename if exc.filename is not None else None
        why = exc.strerror or str(exc)
        print(f"error: {where}: {why}" if where is not None else f"error: {why}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug: one line saying where, the traceback on request
        if os.environ.get("CELLNET_DEBUG"):
            raise
        import traceback

        frame = traceback.extract_tb(exc.__traceback__)[-1]
        print(f"error: unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
              f"(at {Path(frame.filename).name}:{frame.lineno}; a bug in cellnet or a plugin: set CELLNET_DEBUG=1 "
              f"for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
