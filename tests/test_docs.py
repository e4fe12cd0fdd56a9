"""Docs match the code: the generated reference is current and every component has prose."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_reference_is_current():
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gen_reference.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_registered_component_is_documented(registry):
    prose = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs").rglob("*.md"))
    missing = [f"{e.kind}:{e.name}" for e in registry.entries() if f"`{e.name}`" not in prose]
    assert not missing, f"not mentioned in docs/: {missing}"


def test_readme_commands_match_ci():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in ci and "make test" in readme.split("\n## ")[0]
    assert "make demo" in readme.split("\n## ")[0]
