"""The components themselves."""

from __future__ import annotations

import hashlib
import random

from cellnet_core.interfaces import Pair

GREETINGS = [
    ("hello", "hello, nice to meet you"), ("hi", "hi there"), ("good morning", "good morning to you too"),
    ("good evening", "good evening, how was your day?"), ("how are you?", "i am well, thank you"),
    ("how is it going?", "it is going fine"), ("what's up?", "not much, and you?"),
    ("nice to meet you", "nice to meet you too"), ("goodbye", "goodbye, see you later"),
    ("see you tomorrow", "see you tomorrow then"), ("good night", "good night, sleep well"),
    ("thank you", "you are welcome"), ("thanks a lot", "no problem at all"), ("hey", "hey, what can i do for you?"),
    ("how have you been?", "i have been busy but fine"), ("long time no see", "yes, it has been a while"),
    ("are you there?", "yes, i am here"), ("can you hear me?", "yes, loud and clear"),
    ("welcome back", "thanks, it is good to be back"), ("have a nice day", "you too, have a nice day"),
    ("sorry", "no worries"), ("excuse me", "yes, how can i help?"), ("cheers", "cheers to you"),
    ("bye", "bye for now"),
]


class GreetingsDataset:
    """24 greeting pairs split 16/4/4 by a seeded shuffle."""

    def __init__(self, seed: int = 0):
        idx = list(range(len(GREETINGS)))
        random.Random(seed).shuffle(idx)
        self._split = {"train": idx[:16], "val": idx[16:20], "test": idx[20:]}

    def pairs(self, split: str) -> list[Pair]:
        """The split's pairs (one group per pair)."""
        return [Pair(GREETINGS[i][0], GREETINGS[i][1], group=str(i)) for i in self._split[split]]

    def texts(self, split: str) -> list[str]:
        """Questions and answers of the split's pairs."""
        return [t for p in self.pairs(split) for t in (p.question, p.answer)]


class CharNgramEncoder:
    """Hashed character n-grams of the lower-cased text, L2-normalised; ``dim`` wide."""

    def __init__(self, dim: int = 256, n: int = 3):
        self.dim, self.n = dim, n
        self.fingerprint = f"char-ngram:dim={dim}:n={n}"

    def encode(self, texts):
        """``texts`` → ``[B, dim]`` float32."""
        import torch

        out = torch.zeros(len(texts), self.dim)
        for row, text in enumerate(texts):
            padded = f" {text.lower()} "
            for i in range(max(1, len(padded) - self.n + 1)):
                h = int.from_bytes(hashlib.sha1(padded[i:i + self.n].encode()).digest()[:4], "little")
                out[row, h % self.dim] += 1.0
        return torch.nn.functional.normalize(out, dim=-1)


def build_greetings(cfg, ctx):
    """Factory of the ``greetings`` dataset."""
    return GreetingsDataset(cfg.seed)


def build_char_ngram(cfg, ctx):
    """Factory of the ``char-ngram`` encoder."""
    return CharNgramEncoder(cfg.dim, cfg.n)
