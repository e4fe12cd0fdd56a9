"""Docs match the code: the generated reference is current, every component has prose, every
Python snippet in the docs runs, and the docs speak of cellnet and its users' machines only."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_reference_is_current():
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gen_reference.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_registered_component_is_documented(registry):
    # the generated reference lists every component by construction: prose means the other pages
    prose = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs").rglob("*.md") if p.name != "reference.md")
    missing = [f"{e.kind}:{e.name}" for e in registry.entries() if f"`{e.name}`" not in prose]
    assert not missing, f"not mentioned in docs/: {missing}"


def test_readme_commands_match_ci():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in ci and "make test" in readme.split("\n## ")[0]
    assert "make demo" in readme.split("\n## ")[0]


# -- words about how the project was made, not about cellnet ---------------------------------------

#: case-insensitive; word boundaries keep "silently" (lent) and "gpu_session.sh" (session) apart
BUILD_WORDS = [r"\bsessions?\b", r"\bdevice machine", r"\$OUT\b", r"carry=", r"\bcarried\b", r"\blent\b",
               r"\bsandbox", r"\bagents?\b"]
_BUILD_RE = re.compile("|".join(BUILD_WORDS), re.IGNORECASE)


def _user_facing_files() -> list[Path]:
    files = [ROOT / "README.md"]
    files += sorted(p for p in (ROOT / "docs").rglob("*") if p.is_file())
    files += sorted(p for p in (ROOT / "bench").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    files += sorted(ROOT.glob("plugins/*/README.md")) + sorted(ROOT.glob("examples/*/README.md"))
    return files


def build_word_hits(paths) -> list[str]:
    """``file:line: text`` for every line of ``paths`` that holds one of :data:`BUILD_WORDS`."""
    hits = []
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError:  # a binary file (a picture) has no prose
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if _BUILD_RE.search(line):
                rel = Path(path).relative_to(ROOT) if Path(path).is_relative_to(ROOT) else path
                hits.append(f"{rel}:{n}: {line.strip()[:120]}")
    return hits


def test_docs_and_bench_speak_of_cellnet_not_of_how_it_was_made():
    hits = build_word_hits(_user_facing_files())
    assert not hits, "words about how the project was made (say what a user's machine does instead):\n" + \
        "\n".join(hits)


def test_the_word_check_catches_each_word(tmp_path):
    lines = ["no GPU in this session", "on the device machine", 'tee "$OUT/log"', "run(carry=[.whl])",
             "with .whl carried", "no GPU was lent", "in the sandbox", "the agent ran it"]
    f = tmp_path / "page.md"
    f.write_text("\n".join(lines + ["fails silently", "bash bench/gpu_session.sh", "excellent"]) + "\n")
    assert [h.split(":", 2)[1] for h in build_word_hits([f])] == [str(i) for i in range(1, len(lines) + 1)]


# -- every ```python snippet runs ---------------------------------------------------------------------

_NOT_RUN = re.compile(r"^<!--\s*not-run:(.*?)-->\s*$")


def python_snippets(path: Path) -> list[tuple[int, str, str | None]]:
    """``(line, code, not_run_reason)`` of every ```python fence in a Markdown file. A fence is
    marked as not runnable by ``<!-- not-run: reason -->`` on the last non-blank line before it
    (``reason`` is then ``""`` when the comment gives none)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i + 1
            j = start
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            k = i - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            m = _NOT_RUN.match(lines[k].strip()) if k >= 0 else None
            out.append((i + 1, "\n".join(lines[start:j]), m.group(1).strip() if m else None))
            i = j
        i += 1
    return out


def _snippet_pages() -> list[Path]:
    return [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))


def _all_snippets():
    for page in _snippet_pages():
        for line, code, reason in python_snippets(page):
            yield pytest.param(page, line, code, reason, id=f"{page.relative_to(ROOT)}:{line}")


def test_snippet_parser_reads_fences_and_reasons(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("text\n\n```python\nx = 1\n```\n\n<!-- not-run: needs a GPU -->\n\n```python\ny = 2\n```\n"
                    "<!-- not-run: -->\n```python\nz = 3\n```\n```bash\nls\n```\n")
    assert python_snippets(page) == [(3, "x = 1", None), (9, "y = 2", "needs a GPU"), (13, "z = 3", "")]


def test_not_run_markers_sit_before_a_python_fence():
    """A ``not-run`` comment that marks nothing (a typo, a moved fence) would hide a snippet."""
    orphans = []
    for page in _snippet_pages():
        lines = page.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines):
            if "not-run" in line and line.strip().startswith("<!--"):
                nxt = next((x.strip() for x in lines[n + 1:] if x.strip()), "")
                if nxt != "```python":
                    orphans.append(f"{page.relative_to(ROOT)}:{n + 1}")
    assert not orphans, f"not-run markers not followed by a ```python fence: {orphans}"


@pytest.mark.parametrize("page,line,code,reason", list(_all_snippets()))
def test_python_snippet_runs(page, line, code, reason, tmp_path):
    if reason is not None:
        assert reason, f"{page.name}:{line}: a not-run snippet must say why (<!-- not-run: reason -->)"
        pytest.skip(f"not run: {reason}")
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # a fresh working folder per snippet: what a snippet writes (run/decoder, out/...) stays there
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"{page.relative_to(ROOT)}:{line} failed:\n{code}\n--- output ---\n" + \
        (r.stdout + r.stderr)[-3000:]


# -- links stay inside the repository -------------------------------------------------------------

_LINK = re.compile(r"\]\(([^)\s]+)\)")


def broken_links(paths, root: Path = ROOT) -> list[str]:
    """``file: target`` for every relative Markdown link of ``paths`` that does not resolve to a
    file or folder inside ``root`` (web links and in-page anchors are not checked)."""
    bad = []
    for path in paths:
        for target in _LINK.findall(Path(path).read_text(encoding="utf-8")):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue
            resolved = (Path(path).parent / target.split("#", 1)[0]).resolve()
            if not resolved.exists() or not resolved.is_relative_to(root):
                bad.append(f"{Path(path).relative_to(root)}: {target}")
    return bad


def test_doc_links_resolve_inside_the_repository():
    pages = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md")) + sorted(ROOT.glob("plugins/*/README.md"))
    assert not broken_links(pages), "links that lead nowhere or out of the repository:\n" + \
        "\n".join(broken_links(pages))
    outside = [f"{p.relative_to(ROOT)}:{n}" for p in pages
               for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
               if re.search(r"\.\./shared/|shared/(ARCHITECTURE|STYLE)\.md", line)]
    assert not outside, f"references to files outside the repository: {outside}"


def test_the_link_check_catches_a_link_out_of_the_repository(tmp_path):
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "ARCHITECTURE.md").write_text("outside\n")
    (repo / "docs" / "architecture.md").write_text("here\n")
    page = repo / "docs" / "page.md"
    page.write_text("[a](architecture.md) [b](../../shared/ARCHITECTURE.md) [c](https://x.org) [d](#top) "
                    "[e](nowhere.md#x)\n")
    assert broken_links([page], root=repo) == ["docs/page.md: ../../shared/ARCHITECTURE.md",
                                               "docs/page.md: nowhere.md#x"]
