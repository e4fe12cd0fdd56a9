"""Named fakes for tests: tiny in-memory data so strategy tests need no plugin."""

from __future__ import annotations

from cellnet_core.interfaces import Pair

_QA = [
    ("hello", "hi there"), ("how are you", "i am fine thanks"), ("what is your name", "my name is cell"),
    ("do you like tea", "yes i like green tea"), ("where do you live", "i live in a lattice"),
    ("what time is it", "it is noon"), ("are you a robot", "i am a cellular network"),
    ("goodbye", "see you soon"), ("what is the weather", "it is sunny today"),
    ("can you help me", "of course i can help"), ("tell me a joke", "why did the cell divide"),
    ("what do you eat", "i eat embeddings"),
]


class FakePairs:
    """A fake dataset of 12 hand-written pairs: 8 train, 2 val, 2 test (fixed)."""

    def pairs(self, split: str) -> list[Pair]:
        """The split's pairs: 8 train, 2 val, 2 test, one group per pair."""
        sl = {"train": slice(0, 8), "val": slice(8, 10), "test": slice(10, 12)}[split]
        return [Pair(q, a, group=str(i)) for i, (q, a) in enumerate(_QA)][sl]

    def texts(self, split: str) -> list[str]:
        """Questions and answers of the split's pairs, in order."""
        return [t for p in self.pairs(split) for t in (p.question, p.answer)]


#: a run config that trains in well under a second with parts of the core only (greetings data,
#: hashing encoder, identity core, nearest decoder): for command-line and run-directory tests
GREETINGS_CONFIG = """
seed: 0
data: {name: greetings}
encoder: {name: hashing, dim: 256}
reshaper: {name: flat, channels: 1}
core: {name: identity}
decoder: {name: nearest}
training: {name: retrieval}
"""
