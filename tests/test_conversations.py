"""cellnet_core.conversations: turns, bounds, the repetition penalty, context passing, and interactive ``ask``."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

import pytest

from cellnet_core.errors import ConfigError
from cellnet_core.pipeline import Answer
from cellnet_core.conversations import (Conversation, ConversationSettings, ConversationStore, answer_in_conversations, apply_penalty)
from cellnet_core.testing.fakes import GREETINGS_CONFIG


def test_conversation_keeps_the_last_turns_as_context():
    s = Conversation(max_turns=2)
    s.record("hi", "hello")
    s.record("how are you", "")
    s.record("and you?", "fine")
    assert [t.question for t in s.turns] == ["how are you", "and you?"]
    assert s.context() == ["how are you", "and you?", "fine"]
    assert s.recent_answers(3) == ["fine"]


def test_store_bounds_conversations_and_forgets_idle_ones():
    now = [0.0]
    store = ConversationStore(ConversationSettings(max_conversations=2, idle_timeout=10), clock=lambda: now[0])
    store.get("a").record("q", "x")
    store.get("b")
    store.get("a")  # a used last: b goes first
    store.get("c")
    assert store.peek("b") is None and store.peek("a").turns and len(store) == 2
    now[0] = 11.0
    assert store.peek("a") is None and len(store) == 0
    assert not store.get("a").turns  # a new, empty conversation under the same id
    assert len(store.get(None).id) == 32


@pytest.mark.parametrize("field, value, message", [
    ("max_turns", 0, "max_turns must be at least 1"), ("penalty", -1, "penalty must be 0 or more"),
    ("idle_timeout", 0, "idle_timeout must be more than 0 seconds")])
def test_settings_refuse_bad_values(field, value, message):
    with pytest.raises(ConfigError, match=message):
        ConversationSettings(**{field: value})


def _ans(rows, text=None):
    cands = [{"text": t, "score": s} for t, s in rows]
    return Answer("q", cands[0]["text"] if text is None else text, cands[0]["score"], cands, 0)


def test_penalty_reranks_and_keeps_scores():
    a = apply_penalty(_ans([("x", 0.9), ("y", 0.85), ("z", 0.2)]), ["x"], 0.1, k=2)
    assert a.text == "y" and a.score == pytest.approx(0.85)
    assert [c["text"] for c in a.candidates] == ["y", "x"] and a.candidates[1] == {"text": "x", "score": 0.9,
                                                                                   "penalised": True}
    assert apply_penalty(_ans([("x", 0.9), ("y", 0.5)]), ["x"], 0.1, k=2).text == "x"  # still best after 0.1
    assert apply_penalty(_ans([("x", 0.9), ("y", 0.5)]), ["x"], 0.0, k=2).text == "x"


def test_penalty_respects_min_score_and_held_back_answers():
    assert apply_penalty(_ans([("x", 0.9), ("y", 0.3)]), ["x"], 1.0, k=2, min_score=0.35).text == ""
    held = apply_penalty(_ans([("x", 0.2), ("y", 0.1)], text=""), ["x"], 1.0, k=2)
    assert held.text == "" and held.candidates[0]["text"] == "y"


class _FakePipe:
    """Records what :func:`answer_in_conversations` asks of the pipeline."""

    def __init__(self, slots):
        self.reshaper = type("R", (), {"context_slots": slots})()
        self.decoder = object()
        self.calls = []

    def answer(self, texts, k=5, context=None):
        self.calls.append((list(texts), k, context))
        return [_ans([("same", 0.9), ("other", 0.85)]) for _ in texts]


def test_context_runs_get_the_conversation_turns():
    pipe, s = _FakePipe(slots=3), Conversation()
    answer_in_conversations(pipe, ["hi"], [s])
    answer_in_conversations(pipe, ["again", "alone"], [s, None], context=["earlier"])
    assert pipe.calls[0][2] == [[]]
    assert pipe.calls[1][2] == [["earlier", "hi", "same"], ["earlier"]]
    assert [t.answer for t in s.turns] == ["same", "other"]  # the repeat was penalised
    assert pipe.calls[1][1] == 5 + 1  # one extra candidate per penalised answer


def test_single_turn_runs_get_no_context():
    pipe, s = _FakePipe(slots=None), Conversation()
    answer_in_conversations(pipe, ["hi"], [s])
    answer_in_conversations(pipe, ["hi"], [s])
    assert [c[2] for c in pipe.calls] == [None, None]


@pytest.fixture(scope="module")
def greet_run(tmp_path_factory):
    from cellnet_core import api

    d = tmp_path_factory.mktemp("conversations")
    (d / "greet.yaml").write_text(GREETINGS_CONFIG)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CELLNET_CACHE_DIR", str(d / "cache"))
        api.train(str(d / "greet.yaml"), d / "run", echo=None)
    return d / "run"


def _interactive_ask(run, lines, *extra):
    """``cellnet ask RUN`` with a terminal as stdin; returns what it printed."""
    main, tty = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "cellnet_core.cli", "ask", str(run), *extra], stdin=tty,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "CELLNET_HOME": str(run.parent / "home"),
                                 "CELLNET_CACHE_DIR": str(run.parent / "cache")})
    os.close(tty)
    os.write(main, "".join(line + "\n" for line in lines).encode() + b"\x04")
    out, _ = proc.communicate(timeout=120)
    os.close(main)
    assert proc.returncode == 0
    return [line.split("A: ", 1)[1].split("   [")[0] for line in out.splitlines() if "A: " in line]


def test_interactive_ask_does_not_repeat_itself(greet_run, monkeypatch):
    from cellnet_core import api

    answers = _interactive_ask(greet_run, ["good morning", "good morning"], "--repeat-penalty", "1")
    monkeypatch.setenv("CELLNET_CACHE_DIR", str(greet_run.parent / "cache"))
    alone = api.answer(greet_run, "good morning")[0].text  # what ask answers outside a conversation
    assert len(answers) == 2 and answers[0] == alone and answers[1] != alone
