"""The exit-code contract against hostile input: every user error exits 2 with one readable line on
stderr (naming the file, field or path), never a traceback, and leaves nothing half-written.

Each test is a one-command reproduction through :func:`cellnet_core.cli.main` (or a subprocess
where the process itself matters: argv bytes, stdin, the top-level handler). The rows of
docs/hostile-input.md point here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cellnet_core.cli import main
from cellnet_core.testing.fakes import GREETINGS_CONFIG

ROOT = Path(__file__).resolve().parents[1]


def _errors(capsys) -> list[str]:
    """The stderr lines of the last command, plugin warnings aside."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.strip() and not line.startswith("warning: ")]


def one_line(capsys, rc: int, *needles: str) -> str:
    """Assert exit code 2 and exactly one error line holding every needle; return the line."""
    lines = _errors(capsys)
    assert rc == 2, lines
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def cli(*args: str, stdin: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``cellnet ARGS`` in a fresh process (bytes in, bytes out)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cellnet_core.cli", *args], input=stdin, capture_output=True,
                          env=env, cwd=cwd, timeout=300)


def proc_one_line(r: subprocess.CompletedProcess, *needles: str) -> str:
    err = r.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert r.returncode == 2, (r.returncode, lines)
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def greet(tmp_path) -> Path:
    cfg = tmp_path / "greet.yaml"
    cfg.write_text(GREETINGS_CONFIG)
    return cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hostile")
    cfg = d / "greet.yaml"
    cfg.write_text(GREETINGS_CONFIG)
    assert main(["train", str(cfg), "--run-dir", str(d / "run")]) == 0
    return d / "run"


# -- config files and overrides --------------------------------------------------------------------
def test_set_through_a_scalar(greet, capsys):
    rc = main(["validate", str(greet), "--set", "seed.x=1"])
    one_line(capsys, rc, "seed.x=1", "seed is a number (0)", "not a section")
    rc = main(["validate", str(greet), "--set", "encoder.dim.bits=3"])
    one_line(capsys, rc, "encoder.dim is a number (256)")


def test_set_into_a_section_named_by_a_string_still_works(greet, capsys):
    greet.write_text(GREETINGS_CONFIG.replace("decoder: {name: nearest}", "decoder: nearest"))
    assert main(["validate", str(greet), "--no-data", "--set", "decoder.name=nearest"]) == 0


def test_duplicate_yaml_key_names_key_and_lines(tmp_path, capsys):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("seed: 0\ndata: {name: greetings}\nseed: 1\n")
    rc = main(["validate", str(cfg)])
    one_line(capsys, rc, "dup.yaml: line 3: duplicate key 'seed' (first given on line 1)")
    cfg.write_text(GREETINGS_CONFIG.replace("dim: 256", "dim: 256, dim: 128"))
    rc = main(["validate", str(cfg)])
    one_line(capsys, rc, "duplicate key 'dim'")


def test_yaml_merge_keys_may_override(tmp_path):
    from cellnet_core.config import load_yaml

    assert load_yaml("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\n") == {
        "base": {"x": 1, "y": 2}, "other": {"x": 3, "y": 2}}


def _bomb() -> list[str]:
    """Nine lists of nine aliases of the previous list: 9^9 ≈ 387 million strings once expanded."""
    items, prev = ["&a [x, x, x, x, x, x, x, x, x]"], "a"
    for name in "bcdefghi":
        items.append(f"&{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
        prev = name
    return items


def test_yaml_alias_bomb_is_bounded(tmp_path, greet, capsys):
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text("".join(f"k{i}: {item}\n" for i, item in enumerate(_bomb())))
    rc = main(["validate", str(cfg)])
    one_line(capsys, rc, "bomb.yaml: line 7: the document expands to more than 1,000,000 values")
    rc = main(["validate", str(greet), "--set", "eval.baselines=[" + ", ".join(_bomb()) + "]"])
    one_line(capsys, rc, "--set: 'eval.baselines'", "expands to more than")


def test_recursive_yaml_alias(tmp_path, capsys):
    cfg = tmp_path / "rec.yaml"
    cfg.write_text("seed: 0\nloop: &l [*l]\n")
    rc = main(["validate", str(cfg)])
    one_line(capsys, rc, "rec.yaml: line 2", "recursive")


def test_deeply_nested_yaml(tmp_path, capsys):
    cfg = tmp_path / "deep.yaml"
    cfg.write_text("seed: " + "[" * 100_000 + "]" * 100_000 + "\n")
    rc = main(["validate", str(cfg)])
    one_line(capsys, rc, "deep.yaml", "nested too deeply")
