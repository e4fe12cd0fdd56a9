"""Text clean-up of decoded answers and joining of several phrases into one answer."""

from __future__ import annotations

import re
from typing import Sequence

_SPACES = re.compile(r"\s+")
_SENTENCE_START = re.compile(r"(^|[.!?]\s+)([a-z])")
# a word (letters, digits, apostrophes) followed by the same word, case-insensitive
_REPEAT = re.compile(r"\b(\w[\w']*)(\s+\1\b)+", re.IGNORECASE)
_END = re.compile(r"[.!?…:;\"')\]]$")


def postprocess(text: str, steps: Sequence[str]) -> str:
    """Apply clean-up ``steps`` in order (see ``PhrasebankConfig.postprocess``)."""
    for step in steps:
        if step == "whitespace":
            text = _SPACES.sub(" ", text).strip()
        elif step == "capitalize":
            text = _SENTENCE_START.sub(lambda m: m.group(1) + m.group(2).upper(), text)
        elif step == "repeats":
            text = _REPEAT.sub(lambda m: m.group(1), text)
        else:  # pragma: no cover - the config only allows the three names
            raise ValueError(f"unknown post-processing step {step!r}")
    return text


def join_phrases(phrases: Sequence[str]) -> str:
    """Join phrases into one answer; a phrase without closing punctuation gets a full stop so the
    result reads as separate sentences."""
    parts = []
    for i, p in enumerate(phrases):
        p = p.strip()
        if not p:
            continue
        if i < len(phrases) - 1 and not _END.search(p):
            p += "."
        parts.append(p)
    return " ".join(parts)
