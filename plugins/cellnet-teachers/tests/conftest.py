"""Shared fixtures of the teacher tests.

- every test gets its own ``CELLNET_CACHE_DIR`` (embedding cache) under ``tmp_path``;
- ``smollm2_home``: one ``CELLNET_HOME`` for the whole session, so the GGUF → HF conversion
  (about a minute) runs once per test session, not once per test.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _tmp_embedding_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLNET_CACHE_DIR", str(tmp_path / "emb-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # these tests never reach a hub


@pytest.fixture(scope="session")
def smollm2_home(tmp_path_factory):
    """A session-wide CELLNET_HOME with SmolLM2 converted into it (once)."""
    from cellnet_teachers.smollm2 import ensure_converted

    home = tmp_path_factory.mktemp("cellnet-home")
    old = os.environ.get("CELLNET_HOME")
    os.environ["CELLNET_HOME"] = str(home)
    try:
        folder, converted_now = ensure_converted()
    finally:
        if old is None:
            os.environ.pop("CELLNET_HOME", None)
        else:
            os.environ["CELLNET_HOME"] = old
    assert converted_now, "a fresh CELLNET_HOME must trigger the one-time conversion"
    return home


@pytest.fixture
def use_smollm2_home(smollm2_home, monkeypatch):
    monkeypatch.setenv("CELLNET_HOME", str(smollm2_home))
    return smollm2_home


@pytest.fixture(scope="session")
def minilm_dir():
    from cellnet_teachers.hf import minilm_path

    return minilm_path()


#: 50 fixed sentences: chit-chat, questions, statements, an empty string and a long text
SENTENCES = [
    "How old are you?", "What is your age?", "Hello there!", "Good morning, how are you doing today?",
    "I am fine, thank you.", "What is your name?", "My name is Cell.", "Do you like music?",
    "I love listening to jazz in the evening.", "The weather is nice today.", "It is raining again.",
    "Where do you live?", "I live in a small town near the sea.", "What time is it?", "It is half past five.",
    "Can you help me with my homework?", "Of course, what subject is it?", "Tell me a joke.",
    "Why did the chicken cross the road?", "I don't know.", "What is the capital of France?",
    "Paris is the capital of France.", "How do I reset my password?", "Click on 'forgot password' on the login page.",
    "The stock market fell sharply this afternoon.", "Photosynthesis converts light into chemical energy.",
    "She sells sea shells by the sea shore.", "A quick brown fox jumps over the lazy dog.", "",
    "¿Dónde está la biblioteca?", "Ich habe Hunger.", "😀 emoji only", "12345 67890",
    "Are you a robot?", "I am a computer program.", "What do you eat?", "I do not eat, I consume electricity.",
    "Goodbye!", "See you later.", "Thanks a lot for your help.", "You're welcome.",
    "Is it going to snow tomorrow?", "The train to London leaves at nine.", "Please close the window.",
    "What's your favourite colour?", "Blue, like the sky.", "Do you have any pets?",
    "I have two cats and a dog.", "When is your birthday?",
    " ".join(["This is a very long sentence that keeps going"] * 40),
]


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    return list(SENTENCES)
