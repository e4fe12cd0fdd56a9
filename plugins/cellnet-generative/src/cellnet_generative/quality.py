"""Which generated texts are not worth showing: too short, repeating, or not made of words.

A small generator trained for minutes writes, now and then, "I", "IIIII.", "." or "y". Such a
text can still win a re-embedding ranking (the teacher embeds "I" close to many first-person
answers), so ``ret``, ``cct-mamba`` and ``hybrid`` drop them before anything is ranked or shown.
No torch import here.
"""

from __future__ import annotations

import re
from typing import Any

_WORDS = re.compile(r"\w+")


def degenerate_reason(text: str, min_chars: int = 2, min_alnum_share: float = 0.5, max_char_run: int = 3,
                      min_distinct_words: float = 0.5) -> str | None:
    """Why ``text`` is degenerate, or None when it is not.

    - fewer than ``min_chars`` letters or digits ("I", "y", ".");
    - letters and digits are less than ``min_alnum_share`` of its non-space characters ("?!?!", emoji);
    - a letter repeated more than ``max_char_run`` times in a row ("IIIII.", "nooooo");
    - with 4 or more words, distinct words are less than ``min_distinct_words`` of them ("no no no no").
    """
    chars = [c for c in text if not c.isspace()]
    alnum = [c for c in chars if c.isalnum()]
    if len(alnum) < min_chars:
        return f"fewer than {min_chars} letters or digits"
    if len(alnum) < min_alnum_share * len(chars):
        return f"letters and digits are less than {min_alnum_share:.0%} of it"
    run, prev = 0, ""
    for c in text.casefold():
        run = run + 1 if c == prev and c.isalpha() else 1
        prev = c
        if run > max_char_run:
            return f"a letter repeated more than {max_char_run} times in a row"
    words = _WORDS.findall(text.casefold())
    if len(words) >= 4 and len(set(words)) < min_distinct_words * len(words):
        return f"fewer than {min_distinct_words:.0%} of its words are distinct"
    return None


def filter_options(cfg: Any) -> dict[str, Any] | None:
    """The thresholds of a generative decoder config, or None when its filter is off."""
    if not getattr(cfg, "filter_degenerate", False):
        return None
    return {"min_chars": cfg.min_chars, "min_alnum_share": cfg.min_alnum_share, "max_char_run": cfg.max_char_run,
            "min_distinct_words": cfg.min_distinct_words}


def is_degenerate(text: str, **options: Any) -> bool:
    """True when :func:`degenerate_reason` finds a reason."""
    return degenerate_reason(text, **options) is not None
