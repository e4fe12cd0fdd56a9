"""The wheels are what users install: ``make wheels`` builds one for cellnet-core, every plugin and
the example plugin; a fresh virtual environment gets torch the project's way (the Makefile's
``TORCH_SPEC``) and then only those wheels — no editable install, no source tree on the path — and
``cellnet plugins``, ``validate``, a tiny ``train`` and ``ask`` run there.

Slow (about 5 minutes on 2 cores: ten isolated wheel builds, a torch install, a short training).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TINY = """
seed: 0
device: cpu
data: {name: greetings}
encoder: {name: char-ngram, dim: 48}
reshaper: {name: surface, shape: [4, 4, 2], channels: 4}
core: {name: lattice, cell: {name: residual-tanh, hidden: 8}, steps: 2, kernel: auto}
decoder: {name: phrasebank}
training:
  name: dialogue
  epochs: 3
  batch_size: 16
  lr: 0.01
  plots: false
  loss: [{name: cosine-margin, margin: 0.3, weight: 1.0}, {name: infonce, weight: 0.5}]
"""


def _torch_spec() -> list[str]:
    """The Makefile's ``TORCH_SPEC`` (or the environment's, as ``make TORCH_SPEC=...`` would take)."""
    spec = os.environ.get("TORCH_SPEC")
    if not spec:
        match = re.search(r"^TORCH_SPEC\s*\?=\s*(.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
        assert match, "the Makefile defines no TORCH_SPEC"
        spec = match.group(1).strip()
    return shlex.split(spec)


def _distributions() -> set[str]:
    """The wheel name of every package the tree holds: core, plugins, the example plugin."""
    dirs = [ROOT, *sorted((ROOT / "plugins").glob("cellnet-*")), ROOT / "examples" / "cellnet-example-plugin"]
    names = set()
    for d in dirs:
        if (d / "pyproject.toml").exists():
            name = re.search(r'^name\s*=\s*"([^"]+)"', (d / "pyproject.toml").read_text(), re.MULTILINE).group(1)
            names.add(name.replace("-", "_"))
    return names


def _run(cmd, cwd: Path, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.mark.slow
def test_only_the_wheels_in_a_fresh_virtual_environment(tmp_path):
    t0 = time.perf_counter()
    outside = tmp_path / "elsewhere"  # the working directory: nothing of the source tree is importable here
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(CELLNET_HOME=str(tmp_path / "home"), CELLNET_CACHE_DIR=str(tmp_path / "home" / "embeddings"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PIP_DISABLE_PIP_VERSION_CHECK="1", MPLBACKEND="Agg")

    dist = tmp_path / "dist"
    _run(["make", "-s", "-C", ROOT, "wheels", f"DIST={dist}"], cwd=outside, env=env)
    wheels = sorted(dist.glob("*.whl"))
    built = {w.name.split("-")[0] for w in wheels}
    assert built == _distributions(), f"wheels built: {sorted(built)}"
    assert "cellnet_example_plugin" in built
    for wheel in wheels:  # the files each package reads besides its modules travel with it
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
        package = wheel.name.split("-")[0]
        assert any(n.endswith("/py.typed") for n in names), f"{wheel.name} lacks py.typed"
        assert not any("/tests/" in n or n.startswith("tests/") for n in names), f"{wheel.name} holds tests"
        if package == "cellnet_datasets":
            assert {f"cellnet_datasets/data/squad/{f}" for f in ("dev-v1.1.json.gz", "LICENSE")} <= set(names)
        if package == "cellnet_serve":
            assert "cellnet_serve/static/index.html" in names

    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", None) or sys.executable
    _run([base, "-m", "venv", venv], cwd=outside, env=env)
    py, cellnet = venv / "bin" / "python", venv / "bin" / "cellnet"
    pip = [py, "-m", "pip", "install", "-q", "--progress-bar", "off"]
    _run([*pip, *_torch_spec()], cwd=outside, env=env)  # torch first, the project's way
    _run([*pip, *wheels], cwd=outside, env=env)  # then only the wheels (their dependencies from the index)

    # every cellnet package comes from the new environment's site-packages, none is editable
    probe = ("import json, importlib, importlib.metadata as m; "
             "mods = ['cellnet_core', 'cellnet_lattice', 'cellnet_training', 'cellnet_example']; "
             "print(json.dumps({'files': {n: importlib.import_module(n).__file__ for n in mods}, "
             "'direct': [d.metadata['Name'] for d in m.distributions() "
             "if (d.read_text('direct_url.json') or '').find('editable') >= 0]}))")
    found = json.loads(_run([py, "-c", probe], cwd=outside, env=env).stdout)
    for name, path in found["files"].items():
        assert Path(path).resolve().is_relative_to(venv.resolve()), f"{name} imported from {path}"
    assert found["direct"] == []

    plugins = json.loads(_run([cellnet, "plugins", "--json"], cwd=outside, env=env).stdout)
    rows = {r["distribution"]: r for r in plugins["plugins"]}
    want = {w.replace("_", "-") for w in built}
    assert want <= set(rows), f"missing: {want - set(rows)}"
    assert [r["name"] for r in plugins["plugins"] if r["error"]] == []
    example = rows["cellnet-example-plugin"]["provides"]
    assert {"dataset:greetings", "encoder:char-ngram", "cell:residual-tanh", "loss:cosine-margin"} <= set(example)

    usage = _run([cellnet, "--help"], cwd=outside, env=env).stdout  # plugins' commands, from their wheels
    assert re.search(r"^\s+viz\s+lattice\s", usage, re.MULTILINE), usage

    cfg = outside / "tiny.yaml"
    cfg.write_text(TINY)
    _run([cellnet, "validate", cfg], cwd=outside, env=env)
    _run([cellnet, "train", cfg, "--run-dir", outside / "run"], cwd=outside, env=env)
    assert (outside / "run" / "manifest.json").exists()
    asked = json.loads(_run([cellnet, "ask", outside / "run", "hello there", "--json"], cwd=outside, env=env).stdout)
    (row,) = asked if isinstance(asked, list) else asked["answers"]
    assert row["question"] == "hello there" and row["candidates"]
    print(f"wheel install test: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
