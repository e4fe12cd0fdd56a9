"""Assemble docs/RESULTS.md from the fragments the bench_*.py scripts wrote in docs/results/.

The header names the machine, the library versions and the date; every table below comes from
the fragment of the script that measured it (each fragment says when and how it was run).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["study", "tasks", "tasks_extended", "tasks_2000", "context", "context_tuned", "context_5600", "training", "sweep", "generative", "ret_scaling", "ret_dropout", "hybrid", "prefix_lm", "phrasebank", "serve", "kernels", "lattice", "teachers"]


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def header() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    libs = ", ".join(f"{d} {_version(d)}" for d in
                     ("torch", "transformers", "faiss-cpu", "tokenizers", "sentence-transformers", "cellnet-core"))
    return (
        "# cellnet — results\n\n"
        "Every number on this page was produced by a script under `bench/` on held-out data; "
        "`make bench` reruns them all and rebuilds this page. Where a target was missed the table says so.\n\n"
        f"- assembled: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC\n"
        f"- machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}\n"
        f"- libraries: {libs}\n"
        "- GPU: none on the benchmark machine (see the kernels section for the GPU status)\n"
    )


#: a relative link or image target in a fragment (not a URL, an absolute path or an anchor)
_LINK = re.compile(r"(\]\()(?![a-z]+:|/|#)([^)\s]+)")


def rebase(text: str) -> str:
    """The fragment's relative links, made relative to docs/ (where RESULTS.md is) instead of docs/results/."""
    return _LINK.sub(lambda m: m.group(1) + "results/" + m.group(2), text)


def main() -> None:
    frag_dir = ROOT / "docs" / "results"
    frags = {p.stem: p for p in frag_dir.glob("*.md")}
    parts = [header()]
    names = [n for n in ORDER if n in frags] + sorted(n for n in frags if n not in ORDER)
    if names:
        parts.append("## Contents\n\n" + "\n".join(f"- [{n}](#{n})" for n in names) + "\n")
    for n in names:
        parts.append(f'<a id="{n}"></a>\n\n' + rebase(frags[n].read_text(encoding="utf-8").strip()) + "\n")
    if not names:
        parts.append("_No benchmark has been run yet: `make bench`._\n")
    (ROOT / "docs" / "RESULTS.md").write_text("\n".join(parts), encoding="utf-8")
    print(f"wrote docs/RESULTS.md from {len(names)} fragment(s): {', '.join(names)}")


if __name__ == "__main__":
    main()
