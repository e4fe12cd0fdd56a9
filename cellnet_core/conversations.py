"""Conversations: the recent turns of one conversation, shared by ``cellnet ask`` and ``cellnet serve``.

A :class:`Conversation` keeps the last ``max_turns`` (question, answer) turns of a conversation. Two things
use them when a question is answered in a conversation (:func:`answer_in_conversations`):

- **repetition penalty**: a candidate answer that the conversation gave in its last ``penalty_turns``
  turns loses ``penalty`` from its score before the candidates are ranked, so a repeated question
  gets the next-best answer instead of the same one again (``penalty: 0`` turns this off);
- **context**: when the run's reshaper takes several turns (``context_slots``, e.g.
  ``context-planes``), the conversation's turns, oldest first (question, answer, question, answer, …),
  are passed as the previous turns of the conversation (:meth:`~cellnet_core.pipeline.Pipeline.context_input`).

A :class:`ConversationStore` holds many conversations by id for a server: at most ``max_conversations`` (the one
used longest ago is dropped first) and each is forgotten ``idle_timeout`` seconds after its last
use. It is thread-safe.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from cellnet_core.pipeline import Answer, Pipeline

__all__ = ["ConversationSettings", "Turn", "Conversation", "ConversationStore", "takes_context", "apply_penalty",
           "answer_in_conversations"]


@dataclass(frozen=True)
class ConversationSettings:
    """How conversations behave.

    ``max_turns``: turns kept per conversation; ``penalty``: score subtracted from a candidate that the
    conversation answered in its last ``penalty_turns`` turns (cosine units for retrieval decoders; 0 turns
    the penalty off); ``max_conversations`` and ``idle_timeout`` (seconds) bound a :class:`ConversationStore`.
    """

    max_turns: int = 8
    penalty: float = 0.1
    penalty_turns: int = 3
    max_conversations: int = 1000
    idle_timeout: float = 1800.0

    def __post_init__(self) -> None:
        from cellnet_core.errors import ConfigError

        for name in ("max_turns", "penalty_turns", "max_conversations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"conversations: {name} must be at least 1, got {getattr(self, name)}")
        if self.penalty < 0:
            raise ConfigError(f"conversations: penalty must be 0 or more, got {self.penalty}")
        if self.idle_timeout <= 0:
            raise ConfigError(f"conversations: idle_timeout must be more than 0 seconds, got {self.idle_timeout}")


@dataclass(frozen=True)
class Turn:
    """One turn of a conversation: the question and the answer given ("" when none was)."""

    question: str
    answer: str


@dataclass
class Conversation:
    """The recent turns of one conversation (at most ``max_turns``, oldest dropped first)."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    max_turns: int = 8
    turns: deque = field(default_factory=deque)
    last_used: float = field(default_factory=time.monotonic)

    def record(self, question: str, answer: str) -> None:
        """Append a turn, dropping the oldest beyond ``max_turns``."""
        self.turns.append(Turn(question, answer))
        while len(self.turns) > self.max_turns:
            self.turns.popleft()

    def recent_answers(self, n: int) -> list[str]:
        """The non-empty answers of the last ``n`` turns, newest first."""
        return [t.answer for t in list(self.turns)[-n:][::-1] if t.answer]

    def context(self) -> list[str]:
        """The turns as a conversation's previous turns, oldest first: q1, a1, q2, a2, … (a turn
        without an answer contributes its question only)."""
        out: list[str] = []
        for t in self.turns:
            out.append(t.question)
            if t.answer:
                out.append(t.answer)
        return out

    def to_dict(self) -> dict[str, Any]:
        """``{"session_id", "turns": [{"question", "answer"}, ...]}``."""
        return {"session_id": self.id, "turns": [{"question": t.question, "answer": t.answer} for t in self.turns]}


class ConversationStore:
    """Conversations by id, bounded in number (least recently used dropped first) and idle time.

    ``clock`` (default :func:`time.monotonic`) is injectable for tests.
    """

    def __init__(self, settings: ConversationSettings | None = None, *, clock: Callable[[], float] = time.monotonic):
        self.settings = settings or ConversationSettings()
        self.clock = clock
        self._conversations: "OrderedDict[str, Conversation]" = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._expire(self.clock())
            return len(self._conversations)

    def _expire(self, now: float) -> None:
        limit = self.settings.idle_timeout
        for sid in [s for s, v in self._conversations.items() if now - v.last_used > limit]:
            del self._conversations[sid]

    def get(self, session_id: str | None) -> Conversation:
        """The conversation ``session_id`` (a new one under that id when unknown or expired; a new id when
        ``None``), marked as used now."""
        now = self.clock()
        with self._lock:
            self._expire(now)
            sid = session_id or uuid.uuid4().hex
            conversation = self._conversations.pop(sid, None)
            if conversation is None:
                conversation = Conversation(sid, max_turns=self.settings.max_turns)
            conversation.last_used = now
            self._conversations[sid] = conversation  # most recently used last
            while len(self._conversations) > self.settings.max_conversations:
                self._conversations.popitem(last=False)
            return conversation

    def peek(self, session_id: str) -> Conversation | None:
        """The conversation if it exists and has not expired (not marked as used)."""
        with self._lock:
            self._expire(self.clock())
            return self._conversations.get(session_id)

    def drop(self, session_id: str) -> bool:
        """Forget a conversation; True when it existed."""
        with self._lock:
            return self._conversations.pop(session_id, None) is not None


def takes_context(pipe: "Pipeline") -> bool:
    """True when the run's reshaper takes several turns (previous turns can be passed as context)."""
    return bool(getattr(pipe.reshaper, "context_slots", None))


def _min_score(pipe: "Pipeline") -> float | None:
    value = getattr(getattr(pipe.decoder, "cfg", None), "min_score", None)
    return float(value) if isinstance(value, (int, float)) else None


def apply_penalty(ans: "Answer", recent: Sequence[str], weight: float, k: int,
                  min_score: float | None = None) -> "Answer":
    """``ans`` re-ranked with the candidates in ``recent`` (answers just given) losing ``weight``.

    Each candidate row keeps its decoder ``score`` and gains ``penalised: true`` when it was
    penalised; rows are ordered by the penalised score and cut to ``k``. The answer becomes the top
    row unless the decoder had held every candidate back (empty answer), and is empty when the top
    row's own score is under the decoder's ``min_score``. Without candidates (a generative decoder)
    the answer is returned unchanged."""
    from cellnet_core.pipeline import Answer

    rows = [dict(r) for r in ans.candidates]
    if not rows or not weight or not recent:
        return Answer(ans.question, ans.text, ans.score, rows[:k], ans.steps)
    if ans.text and all(r["text"] != ans.text for r in rows):
        rows.insert(0, {"text": ans.text, "score": ans.score})
    given = set(recent)
    for r in rows:
        if r["text"] in given:
            r["penalised"] = True
    rows.sort(key=lambda r: -(r["score"] - (weight if r.get("penalised") else 0.0)))
    text, score = ans.text, ans.score
    if ans.text:
        top = rows[0]
        if min_score is not None and top["score"] < min_score:
            text, score = "", top["score"]
        else:
            text, score = top["text"], top["score"]
    return Answer(ans.question, text, score, rows[:k], ans.steps)


def answer_in_conversations(pipe: "Pipeline", questions: Sequence[str], conversations: Sequence[Conversation | None], k: int = 5,
                       *, settings: ConversationSettings | None = None, context: Sequence[str] | None = None,
                       record: bool = True) -> "list[Answer]":
    """Answer ``questions[i]`` in ``conversations[i]`` (``None``: outside any conversation) in one forward pass.

    The conversation's turns are passed as context when the run takes context (``context``: turns put
    before every conversation's own, e.g. ``ask --context``); candidates the conversation answered recently are
    penalised (:func:`apply_penalty`); with ``record`` each question and its answer are appended to
    its conversation. Returns one :class:`~cellnet_core.pipeline.Answer` per question, ``k`` candidates
    each."""
    settings = settings or ConversationSettings()
    questions = list(questions)
    conversations = list(conversations)
    if len(conversations) != len(questions):
        raise ValueError(f"answer_in_conversations: {len(conversations)} conversations for {len(questions)} questions")
    prefix = list(context or [])
    histories = None
    if takes_context(pipe):
        histories = [prefix + (s.context() if s is not None else []) for s in conversations]
    elif prefix:
        histories = [prefix] * len(questions)  # the pipeline says why this run cannot take it
    recent = [s.recent_answers(settings.penalty_turns) if s is not None else [] for s in conversations]
    pool = k + max((len(r) for r in recent), default=0) if settings.penalty else k
    raw = pipe.answer(questions, k=pool, context=histories)
    floor = _min_score(pipe)
    out = [apply_penalty(a, r, settings.penalty, k, floor) for a, r in zip(raw, recent)]
    if record:
        for q, a, s in zip(questions, out, conversations):
            if s is not None:
                s.record(q, a.text)
    return out
