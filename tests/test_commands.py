"""Plugins add commands and options through ``cellnet_register_commands``: a command of an installed
plugin runs like a core command and is listed with its plugin; a plugin whose registration fails, or
that takes a name already taken, loses its commands (reported) while every other command works; an
option's take-over of a core command; plugin commands and options used without their plugin."""

from __future__ import annotations

import argparse
import json

import pytest

from cellnet_core.cli import build_parser, main
from cellnet_core.commands import CommandError, CommandRegistry
from cellnet_core.testing.fakes import GREETINGS_CONFIG

HELLO = """
from cellnet_core import hookimpl
from cellnet_core.errors import DataError


def configure(parser):
    parser.add_argument("who", help="whom to greet")
    parser.add_argument("--shout", action="store_true", help="in capitals")


def run(args):
    if args.who == "nobody":
        raise DataError("hello: nobody to greet")
    text = f"hello {args.who}"
    print(text.upper() if args.shout else text)
    return 0


@hookimpl
def cellnet_register_commands(cli):
    cli.add_command("hello", help="greet someone", configure=configure, run=run,
                    examples="  cellnet hello world\\n  cellnet hello world --shout")
"""

BROKEN = """
from cellnet_core import hookimpl


@hookimpl
def cellnet_register_commands(cli):
    cli.add_command("early", help="added before the failure", configure=lambda p: None, run=lambda a: 0,
                    examples="  cellnet early")
    raise RuntimeError("boom in registration")
"""

CLASH = """
from cellnet_core import hookimpl


@hookimpl
def cellnet_register_commands(cli):
    cli.add_command("mine", help="a command of its own", configure=lambda p: None, run=lambda a: 0,
                    examples="  cellnet mine")
    cli.add_command("{name}", help="a second {name}", configure=lambda p: None, run=lambda a: 41,
                    examples="  cellnet {name}")
"""

OPTION = """
from cellnet_core import hookimpl


def configure(parser):
    parser.add_argument("--dry-count", action="store_true", help="print how many configs, do nothing else")


def run(args):
    if not args.dry_count:
        return None  # validate proceeds as usual
    print(f"{len(args.configs)} config(s)")
    return 0


@hookimpl
def cellnet_register_commands(cli):
    cli.add_options("validate", configure, run=run, examples="  cellnet validate configs/*.yaml --dry-count")
"""

BAD_CONFIGURE = """
from cellnet_core import hookimpl


def configure(parser):
    parser.add_argument("--set", help="clashes with validate's own --set")


@hookimpl
def cellnet_register_commands(cli):
    cli.add_options("validate", configure)
"""


@pytest.fixture
def plugin(fake_distribution):
    """``plugin("name", source)``: an installed plugin distribution found by real discovery."""

    def make(name: str, source: str) -> None:
        fake_distribution(f"fakeplug-{name}", {name: f"fakeplug_{name}"}, {f"fakeplug_{name}.py": source})

    return make


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _plugins_json(capsys) -> dict[str, dict]:
    assert main(["plugins", "--json"]) == 0
    return {p["name"]: p for p in json.loads(capsys.readouterr().out)["plugins"]}


def test_a_plugin_command_runs_like_a_core_command(plugin, capsys):
    plugin("hello", HELLO)
    assert main(["hello", "world", "--shout"]) == 0
    assert capsys.readouterr().out == "HELLO WORLD\n"
    assert main(["hello", "nobody"]) == 2  # a CellnetError from run: one line, exit 2
    err = capsys.readouterr().err
    assert err == "error: hello: nobody to greet\n"
    assert "command:hello" in _plugins_json(capsys)["hello"]["provides"]


def test_help_lists_every_command_with_the_plugin_that_provides_it(plugin, capsys):
    plugin("hello", HELLO)
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    providers = {words[0]: words[1] for words in lines if len(words) > 2 and words[1] in (
        "core", "hello", "lattice", "serve")}
    assert providers["hello"] == "hello" and providers["viz"] == "lattice"
    for name in ("plugins", "components", "validate", "train", "ask", "eval", "cache", "bench"):
        assert providers[name] == "core", name
    with pytest.raises(SystemExit):
        main(["hello", "--help"])
    out = capsys.readouterr().out
    assert "cellnet hello world --shout" in out and "provided by plugin 'hello' (fakeplug-hello 1.0)" in out


def test_a_plugin_whose_registration_raises_is_reported_and_the_others_work(plugin, capsys):
    plugin("hello", HELLO)
    plugin("broken", BROKEN)
    assert main(["hello", "world"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "hello world\n"
    assert ("warning: plugin 'broken': cellnet_register_commands raised RuntimeError: boom in registration "
            "(its commands are not available)") in captured.err.splitlines()
    assert "early" not in _subparsers(build_parser(warn=False))  # what it added before raising is dropped
    rows = _plugins_json(capsys)
    assert "RuntimeError: boom in registration" in rows["broken"]["error"]
    assert rows["hello"]["error"] is None
    assert main(["plugins"]) == 0
    assert "FAILED: cellnet_register_commands raised RuntimeError" in capsys.readouterr().out


def test_a_core_command_name_is_refused_for_that_plugin_only(plugin, capsys, tmp_path):
    plugin("hello", HELLO)
    plugin("clash", CLASH.format(name="train"))
    subs = _subparsers(build_parser())
    err = capsys.readouterr().err
    assert ("warning: plugin 'clash': cellnet_register_commands raised CommandError: command 'train' is "
            "provided by the core already; plugin 'clash' cannot add it too (its commands are not available)") in err
    assert "mine" not in subs and {"hello", "train", "viz"} <= set(subs)
    cfg = tmp_path / "greet.yaml"
    cfg.write_text(GREETINGS_CONFIG)
    assert main(["train", str(cfg), "--run-dir", str(tmp_path / "run")]) == 0  # the core's train still trains
    assert (tmp_path / "run" / "manifest.json").exists()
    assert main(["hello", "there"]) == 0 and "hello there\n" in capsys.readouterr().out


def test_two_plugins_with_one_command_name_the_later_one_is_refused(plugin, capsys):
    from cellnet_core.plugins import create_plugin_manager

    plugin("hello", HELLO)
    plugin("clash", CLASH.format(name="hello"))
    order = [p.name for p in create_plugin_manager().report.plugins]
    first, later = sorted(["hello", "clash"], key=order.index)
    subs = _subparsers(build_parser())
    assert (f"command 'hello' is provided by plugin '{first}' already; plugin '{later}' cannot add it too"
            in capsys.readouterr().err)
    assert ("mine" in subs) == (first == "clash") and "hello" in subs
    rows = _plugins_json(capsys)
    assert rows[later]["error"] and rows[first]["error"] is None


def test_an_option_takes_a_core_command_over_only_when_given(plugin, capsys, tmp_path):
    plugin("counting", OPTION)
    cfg = tmp_path / "greet.yaml"
    cfg.write_text(GREETINGS_CONFIG)
    assert main(["validate", str(cfg), str(cfg), "--dry-count"]) == 0
    assert capsys.readouterr().out == "2 config(s)\n"  # taken over: nothing validated
    assert main(["validate", str(cfg)]) == 0
    assert capsys.readouterr().out == f"{cfg}: ok\n"
    assert "option:validate --dry-count" in _plugins_json(capsys)["counting"]["provides"]
    with pytest.raises(SystemExit):
        main(["validate", "--help"])
    assert "cellnet validate configs/*.yaml --dry-count" in capsys.readouterr().out


def test_options_whose_configure_fails_are_reported_and_add_nothing(plugin, capsys, tmp_path):
    plugin("badopt", BAD_CONFIGURE)
    cfg = tmp_path / "greet.yaml"
    cfg.write_text(GREETINGS_CONFIG)
    assert main(["validate", str(cfg), "--set", "decoder.k=3"]) == 0  # validate's own --set is intact
    err = capsys.readouterr().err
    assert "warning: plugin 'badopt': configuring options of 'cellnet validate' raised ArgumentError" in err


def test_train_nproc_without_the_training_plugin_names_the_package(monkeypatch, capsys, tmp_path):
    cfg = tmp_path / "greet.yaml"
    cfg.write_text(GREETINGS_CONFIG)
    monkeypatch.setenv("CELLNET_DISABLED_PLUGINS", "training")
    for argv in (["train", str(cfg), "--nproc", "2"], ["train", "--nproc=2", str(cfg)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith("error: train --nproc needs the cellnet-training plugin") and \
            "pip install cellnet-training" in err
    assert "--nproc" not in _subparsers(build_parser())["train"].format_help()
    assert main(["train", str(cfg), "--run-dir", str(tmp_path / "run")]) == 0  # train itself still works


def test_viz_without_the_lattice_plugin_names_the_package(monkeypatch, capsys):
    monkeypatch.setenv("CELLNET_DISABLED_PLUGINS", "lattice")
    assert main(["viz", "runs/demo", "hello"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "'cellnet viz' needs the cellnet-lattice plugin" in err


def test_train_nproc_comes_from_the_training_plugin(capsys):
    subs = _subparsers(build_parser())
    assert "--nproc" in subs["train"].format_help() and "cellnet train configs/default.yaml --nproc 2" in \
        subs["train"].epilog
    assert "option:train --nproc" in _plugins_json(capsys)["training"]["provides"]


def test_registry_refuses_bad_names_and_options_for_unknown_commands():
    cli = CommandRegistry()
    cli.current_plugin = "p"
    with pytest.raises(CommandError, match="command name 'Bad Name'"):
        cli.add_command("Bad Name", help="x", configure=lambda p: None, run=lambda a: 0)
    cli.add_command("one", help="x", configure=lambda p: None, run=lambda a: 5)
    with pytest.raises(CommandError, match=r"options for unknown command 'two'; commands: one$"):
        cli.add_options("two", lambda p: None)
    with pytest.raises(CommandError, match=r"unknown command 'onr'; commands: one; did you mean 'one'\?"):
        cli.add_options("onr", lambda p: None)
    calls = []
    cli.current_plugin = "q"
    cli.add_options("one", lambda p: None, run=lambda a: calls.append("q") or None)
    cli.current_plugin = "r"
    cli.add_options("one", lambda p: None, run=lambda a: calls.append("r") or (3 if a.stop else None))
    assert cli.runner("one")(argparse.Namespace(stop=False)) == 5 and calls == ["q", "r"]
    assert cli.runner("one")(argparse.Namespace(stop=True)) == 3
    assert [(o.plugin, o.command) for o in cli.options("one")] == [("q", "one"), ("r", "one")]
    assert cli.get("one").plugin == "p"
    cli.remove_plugin("p")  # its command goes, and with it the options for that command
    assert cli.names() == [] and cli.options() == []


LATTICE_RUN = """
seed: 0
device: cpu
data: {name: greetings}
encoder: {name: hashing, dim: 64}
reshaper: {name: surface, shape: [4, 4, 3], channels: 4}
core: {name: lattice, cell: {name: mlp, hidden: 8}, steps: 3}
decoder: {name: nearest}
training: {name: dialogue, epochs: 2, batch_size: 16, plots: false}
"""


def test_viz_runs_through_the_lattice_plugin(tmp_path, capsys):
    cfg = tmp_path / "lattice.yaml"
    cfg.write_text(LATTICE_RUN)
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--run-dir", str(run)]) == 0
    capsys.readouterr()
    assert main(["viz", str(run), "how are you?", "--out", str(tmp_path / "pictures")]) == 0
    files = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[1] for p in files] == ["slices.png", "change.png", "activity.png", "channels.png"]
    assert all((tmp_path / "pictures" / p.rsplit("/", 1)[1]).stat().st_size > 2000 for p in files)
    greet = tmp_path / "greet.yaml"
    greet.write_text(GREETINGS_CONFIG)
    assert main(["train", str(greet), "--run-dir", str(tmp_path / "flat")]) == 0
    capsys.readouterr()
    assert main(["viz", str(tmp_path / "flat"), "hello"]) == 2
    assert capsys.readouterr().err == "error: viz: the run's core 'identity' is not a lattice (nothing to draw)\n"


def test_build_parser_takes_a_plugin_manager_with_an_in_process_plugin(tmp_plugin, capsys):
    from cellnet_core import hookimpl

    class Inline:
        @staticmethod
        @hookimpl
        def cellnet_register_commands(cli):
            cli.add_command("ping", help="answer pong", configure=lambda p: p.add_argument(
                "--times", type=int, default=1, help="how many"), run=lambda a: print("pong " * a.times) or 0,
                examples="  cellnet ping --times 2")

    with tmp_plugin(Inline(), "inline") as (pm, _):
        parser = build_parser(pm)
        args = parser.parse_args(["ping", "--times", "2"])
        assert args.func(args) == 0 and capsys.readouterr().out == "pong pong \n"
        assert "command:ping" in next(p for p in pm.report.plugins if p.name == "inline").provides
        assert "viz" not in _subparsers(parser)  # autoload off: only what this manager holds


def test_every_bench_script_takes_quick():
    """``cellnet bench --quick`` passes ``--quick`` to every ``bench/bench_*.py``: each must accept it."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "bench"
    scripts = sorted(root.glob("bench_*.py"))
    assert scripts
    missing = []
    for s in scripts:
        calls = [n for n in ast.walk(ast.parse(s.read_text(encoding="utf-8")))
                 if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "add_argument"]
        if not any(c.args and isinstance(c.args[0], ast.Constant) and c.args[0].value == "--quick" for c in calls):
            missing.append(s.name)
    assert not missing, f"no --quick option: {missing}"
