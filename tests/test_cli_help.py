"""The command line explains itself: --version, help for every option, examples, component fields,
the resolved config, where the cache is, and interactive ``ask``."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cellnet_core import __version__
from cellnet_core.cli import build_parser, main

from cellnet_core.testing.fakes import GREETINGS_CONFIG as GREET


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_version_names_core_version_and_plugin_count(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    from importlib import metadata

    n = len({ep.name for ep in metadata.entry_points(group="cellnet.plugins")})
    assert out.startswith(f"cellnet {__version__}") and f"{n} plugin(s) installed" in out and n >= 2


def test_every_option_of_every_subcommand_has_help_and_every_subcommand_an_example():
    subs = _subparsers(build_parser())
    assert {"plugins", "components", "validate", "config", "schema", "train", "ask", "eval", "cache", "viz",
            "bench"} <= set(subs)
    for name, sp in subs.items():
        assert sp.epilog and "examples:" in sp.epilog and f"cellnet {name}" in sp.epilog, name
        for action in sp._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)


def test_help_exits_0_and_shows_examples():
    r = subprocess.run([sys.executable, "-m", "cellnet_core.cli", "ask", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "examples:" in r.stdout and "-k K" in r.stdout and "--device" in r.stdout


def test_components_fields_lists_type_default_and_description(capsys):
    assert main(["components", "--kind", "core", "--fields", "lattice"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("core 'lattice'")
    assert "  steps: int = 8\n      lattice steps T" in out
    assert "  cell: mapping = " in out and "built in: mlp, gmlp, nca" in out and "plasticity.rule: none|hebbian|bcm = none" in out
    assert main(["components", "nearest", "--fields", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["kind"] == "decoder" and row["fields"] == [
        {"field": "k", "type": "int", "default": 5, "description": "candidates reported per query"}]


@pytest.mark.parametrize("argv,needle", [
    (["components", "--fields"], "give its NAME"),
    (["components", "latice", "--fields"], "did you mean 'lattice'"),
    (["components", "lattice", "--kind", "decoder", "--fields"], "unknown 'lattice'"),
])
def test_components_fields_bad_input_exit_2_one_line(argv, needle):
    r = subprocess.run([sys.executable, "-m", "cellnet_core.cli", *argv], capture_output=True, text=True)
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_config_prints_the_resolved_config_with_defaults(tmp_path, capsys):
    cfg = tmp_path / "greet.yaml"
    cfg.write_text(GREET)
    assert main(["config", str(cfg), "--set", "decoder.k=7"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["decoder"] == {"name": "nearest", "k": 7}
    assert data["encoder"]["ngrams"] == 2 and data["eval"]["max_questions"] == 2000  # defaults filled in
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--run-dir", str(run)]) == 0
    capsys.readouterr()
    assert main(["config", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["decoder"]["k"] == 5
    r = subprocess.run([sys.executable, "-m", "cellnet_core.cli", "config", str(tmp_path / "nope")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("env,where,how", [
    ({"CELLNET_CACHE_DIR": "{tmp}/explicit"}, "{tmp}/explicit", "$CELLNET_CACHE_DIR"),
    ({"CELLNET_HOME": "{tmp}/home"}, "{tmp}/home/embeddings", "$CELLNET_HOME"),
    ({"HOME": "{tmp}/user"}, "{tmp}/user/.cache/cellnet/embeddings", "default"),
])
def test_cache_info_says_where_and_why(tmp_path, env, where, how):
    full = {k: v for k, v in os.environ.items() if k not in ("CELLNET_CACHE_DIR", "CELLNET_HOME", "XDG_CACHE_HOME")}
    full.update({k: v.format(tmp=tmp_path) for k, v in env.items()})
    r = subprocess.run([sys.executable, "-m", "cellnet_core.cli", "cache", "info", "--json"], capture_output=True,
                       text=True, env=full)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["dir"] == where.format(tmp=tmp_path) and how in out["chosen_by"]
    r = subprocess.run([sys.executable, "-m", "cellnet_core.cli", "cache", "info"], capture_output=True,
                       text=True, env=full)
    assert r.stdout.startswith(f"embedding cache: {where.format(tmp=tmp_path)}  (") and how in r.stdout


def test_interactive_ask_loads_visibly_keeps_history_and_does_not_echo(tmp_path):
    pty = pytest.importorskip("pty")
    import select

    cfg = tmp_path / "greet.yaml"
    cfg.write_text(GREET)
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--run-dir", str(run)]) == 0
    env = {**os.environ, "CELLNET_HOME": str(tmp_path / "home"), "TERM": "dumb"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: cellnet ask on a terminal
        os.execve(sys.executable, [sys.executable, "-m", "cellnet_core.cli", "ask", str(run)], env)
    out = b""

    def read_until(needle: bytes, timeout: float = 60.0) -> None:
        nonlocal out
        import time

        end = time.monotonic() + timeout
        while needle not in out and time.monotonic() < end:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    out += os.read(fd, 4096)
                except OSError:
                    return

    read_until(b"> ")
    os.write(fd, b"good morning\r")
    read_until(b"A: ")
    read_until(b"]\r\n> ")  # the answer line, then the next prompt
    import time

    status = None
    for _ in range(10):  # Ctrl-D; typed again if it reached the terminal before readline read it
        time.sleep(0.5)
        try:
            os.write(fd, b"\x04")
        except OSError:  # the terminal closed: ask has ended
            pass
        read_until(b"\x00", timeout=3)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("interactive ask did not end on Ctrl-D:\n" + out.decode("utf-8", "replace"))
    text = out.decode("utf-8", "replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert f"loading {run}" in text and "A: " in text
    assert "Q: good morning" not in text  # the terminal shows what was typed; no echo
    history = (tmp_path / "home" / "ask_history").read_text()
    assert "good morning" in history


def test_train_summary_names_the_run(tmp_path, capsys):
    cfg = tmp_path / "greet.yaml"
    cfg.write_text(GREET)
    assert main(["train", str(cfg), "--run-dir", str(tmp_path / "run")]) == 0
    captured = capsys.readouterr()
    assert f"saved run: {tmp_path / 'run'}" in captured.out
    assert f"run directory: {tmp_path / 'run'}" in captured.err
    assert Path(tmp_path / "run" / "manifest.json").exists()
