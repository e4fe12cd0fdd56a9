"""Text clean-up of decoded answers and joining of several phrases into one answer."""

from __future__ import annotations

import re
from typing import Sequence

_SPACES = re.compile(r"\s+")
_SENTENCE_START = re.compile(r"(^|[.!?]\s+)([a-z])")
# a word (letters, digits, apostrophes) followed by the same word, case-insensitive
_REPEAT = re.compile(r"\b(\w[\w']*)(\s+\1\b)+", re.IGNORECASE)
_END = re.compile(r"[.!?…:;\"')\]]$")
# a sentence ends at . ! ? … (full-width too) followed by white space
_SENTENCES = re.compile(r"(?<=[.!?…。！？])\s+")
_CLOSERS = "\"')]»”’ "


def is_question(text: str) -> bool:
    """True when every sentence of ``text`` is a question (ends with ``?`` or ``？``, closing quotes
    and brackets aside): "How are you doing?" and "Why? When?" are questions; "I'm doing well.
    How are you?" is an answer with a question back, and so is not."""
    sentences = [s.rstrip(_CLOSERS) for s in _SENTENCES.split(text.strip()) if s.strip()]
    return bool(sentences) and all(s.endswith(("?", "？")) for s in sentences)


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
