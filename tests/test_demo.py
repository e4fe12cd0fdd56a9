"""What `make demo` shows: the default pipeline answering questions it was never trained on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cellnet_core.config import load_config

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ROOT / "examples" / "questions.txt"


def _key(text: str) -> str:
    """Case, spacing and closing punctuation aside: 'Can you die' and 'can you die?' are one question."""
    return re.sub(r"\s+", " ", text.casefold()).strip().rstrip("?!. ")


@pytest.fixture(scope="module")
def demo_data(registry):
    if "chatterbot" not in registry.names("dataset"):
        pytest.skip("needs the 'chatterbot' dataset of cellnet-datasets")
    pytest.importorskip("chatterbot_corpus")
    config = load_config(registry, ROOT / "configs" / "default.yaml")
    return registry.build("dataset", config.data, None)


def test_demo_questions_are_held_out_of_training(demo_data):
    questions = [q.strip() for q in QUESTIONS.read_text(encoding="utf-8").splitlines() if q.strip()]
    assert len(questions) >= 4
    seen = {_key(p.question) for split in ("train", "val") for p in demo_data.pairs(split)}
    held_out = {_key(p.question) for p in demo_data.pairs("test")}
    assert [q for q in questions if _key(q) in seen] == []  # never trained on, never used to pick epochs
    assert [q for q in questions if _key(q) not in held_out] == []  # and all from the test split


def test_demo_bank_leaves_out_questions_by_default(registry):
    config = load_config(registry, ROOT / "configs" / "default.yaml")
    bank = config.decoder if config.decoder.name == "phrasebank" else None
    if bank is None:
        pytest.skip(f"the default decoder is {config.decoder.name!r}")
    assert bank.include_questions is False and bank.min_score is not None


def test_make_shares_the_default_cache_and_setup_says_what_it_installs():
    """`make demo` and a plain `.venv/bin/cellnet` use one cache (no CELLNET_* exports in the
    Makefile), and setup announces each step and lets pip print what it installs."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipes = [line for line in makefile.splitlines() if line.startswith("\t")]
    assert not re.search(r"^\s*export\s+CELLNET_", makefile, re.M)
    assert not [r for r in recipes if "pip" in r and re.search(r"\s(--quiet|-q)\b", r)]
    steps = re.findall(r'@echo "==> \[(\d)/(\d)\]', makefile)
    assert steps and [int(i) for i, _ in steps] == list(range(1, int(steps[0][1]) + 1))
