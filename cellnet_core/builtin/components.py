"""Implementations of the built-in parts."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from cellnet_core.checkpoint import atomic_write_text
from cellnet_core.errors import CheckpointError, ConfigError
from cellnet_core.interfaces import Candidate, TrainResult

_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


class HashingEncoder:
    """Word (and optional character) n-gram feature hashing into ``dim`` signed buckets,
    L2-normalised. Deterministic across processes (SHA-1, not Python's ``hash``)."""

    def __init__(self, dim: int = 384, ngrams: int = 2, char_ngrams: int = 0, lowercase: bool = True):
        self.dim, self.ngrams, self.char_ngrams, self.lowercase = dim, ngrams, char_ngrams, lowercase
        self.fingerprint = f"hashing:dim={dim}:ngrams={ngrams}:char={char_ngrams}:lower={lowercase}"

    def _features(self, text: str) -> list[str]:
        if self.lowercase:
            text = text.lower()
        words = _WORD.findall(text)
        feats = [" ".join(words[i:i + n]) for n in range(1, self.ngrams + 1) for i in range(len(words) - n + 1)]
        if self.char_ngrams:
            padded = f" {text} "
            n = self.char_ngrams
            feats += ["#" + padded[i:i + n] for i in range(len(padded) - n + 1)]
        return feats

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """``texts`` → ``[B, dim]`` float32, each row the signed hash counts of its features,
        L2-normalised."""
        out = torch.zeros(len(texts), self.dim)
        for row, text in enumerate(texts):
            for f in self._features(text):
                h = int.from_bytes(hashlib.sha1(f.encode("utf-8")).digest()[:8], "little")
                out[row, h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        return nn.functional.normalize(out, dim=-1)


class FlatReshaper(nn.Module):
    """``[B, D]`` ↔ ``[B, X, Y, Z, C]`` by an exact reshape; X·Y·Z·C must equal D."""

    def __init__(self, dim: int, shape: tuple[int, int, int] | None, channels: int):
        super().__init__()
        if shape is None:
            if dim % channels:
                raise ConfigError(f"reshaper.channels: {channels} does not divide the embedding size {dim}")
            shape = (dim // channels, 1, 1)
        x, y, z = shape
        if x * y * z * channels != dim:
            raise ConfigError(
                f"reshaper: shape {list(shape)} × channels {channels} = {x * y * z * channels} cells·channels, "
                f"but the encoder gives {dim} dims; they must be equal for 'flat'")
        self.shape, self.channels, self.out_dim = (x, y, z), channels, dim

    def to_field(self, emb: torch.Tensor) -> torch.Tensor:
        """``emb [B, D]`` → ``field [B, X, Y, Z, C]`` by a plain reshape (D = X·Y·Z·C)."""
        return emb.reshape(emb.shape[0], *self.shape, self.channels)

    def from_state(self, state: torch.Tensor) -> torch.Tensor:
        """``state [B, X, Y, Z, C]`` → ``[B, X·Y·Z·C]``, the exact inverse of :meth:`to_field`."""
        return state.reshape(state.shape[0], -1)


class IdentityCore(nn.Module):
    """``forward(field) = field``: the "question's embedding is the answer's" baseline."""

    def __init__(self, shape: tuple[int, int, int], channels: int):
        super().__init__()
        self.shape, self.channels, self.last_steps = shape, channels, 0

    def forward(self, field: torch.Tensor) -> torch.Tensor:
        """Returns ``field`` unchanged (the baseline: the answer's embedding is the question's)."""
        return field


class NearestDecoder:
    """Exact cosine nearest neighbour over the texts it was fit on."""

    def __init__(self, k: int = 5):
        self.k = k
        self.texts: list[str] = []
        self.bank = torch.zeros(0, 0)

    def fit(self, texts: Sequence[str], embs: torch.Tensor) -> None:
        """Remember the distinct ``texts`` (first occurrence wins) and their L2-normalised
        embeddings ``[N, D]``."""
        seen: dict[str, int] = {}
        for i, t in enumerate(texts):
            seen.setdefault(t, i)
        idx = list(seen.values())
        self.texts = [texts[i] for i in idx]
        self.bank = nn.functional.normalize(embs[idx].float(), dim=-1)

    def _check(self, emb: torch.Tensor) -> None:
        if not self.texts:
            raise CheckpointError("decoder 'nearest' has no texts: train the run first (cellnet train)")
        if emb.shape[-1] != self.bank.shape[-1]:
            raise ConfigError(f"decoder 'nearest': embedding has {emb.shape[-1]} dims, the bank has "
                              f"{self.bank.shape[-1]}")

    def candidates(self, emb: torch.Tensor, k: int | None = None) -> list[list[Candidate]]:
        """The ``k`` (default: the config's) most cosine-similar known texts per row of ``emb [B,
        D]``, best first."""
        self._check(emb)
        k = min(k or self.k, len(self.texts))
        sims = nn.functional.normalize(emb.float(), dim=-1) @ self.bank.T
        vals, idx = sims.topk(k, dim=-1)
        return [[Candidate(self.texts[j], float(v)) for v, j in zip(vr.tolist(), ir.tolist())]
                for vr, ir in zip(vals, idx)]

    def decode(self, emb: torch.Tensor) -> list[str]:
        """The most similar known text per row of ``emb [B, D]``."""
        return [row[0].text for row in self.candidates(emb, 1)]

    def save(self, directory: Path) -> list[Path]:
        """Write ``bank.safetensors`` and ``texts.jsonl`` into ``directory``; return both paths."""
        from cellnet_core.checkpoint import save_tensors

        directory.mkdir(parents=True, exist_ok=True)
        save_tensors(directory / "bank.safetensors", {"bank": self.bank})
        atomic_write_text(directory / "texts.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in self.texts))
        return [directory / "bank.safetensors", directory / "texts.jsonl"]

    def load(self, directory: Path) -> None:
        """Read what :meth:`save` wrote; a bank and text list of different lengths is a
        CheckpointError."""
        from cellnet_core.checkpoint import load_tensors

        self.bank = load_tensors(directory / "bank.safetensors")["bank"]
        lines = (directory / "texts.jsonl").read_text(encoding="utf-8").splitlines()
        self.texts = [json.loads(line)["text"] for line in lines if line.strip()]
        if len(self.texts) != self.bank.shape[0]:
            raise CheckpointError(f"{directory}: bank has {self.bank.shape[0]} vectors but texts.jsonl has "
                                  f"{len(self.texts)} texts")


class RetrievalStrategy:
    """Fit the decoder on the training answers (and optionally validation ones). Trains no weights:
    with the identity core this is the retrieval baseline."""

    def __init__(self, include_val: bool = False):
        self.include_val = include_val

    def fit(self, pipeline: Any, data: Any, run: Any) -> TrainResult:
        """Fit the decoder on the training (and, with ``include_val``, validation) answers; trains
        no weights."""
        t0 = time.perf_counter()
        splits = ["train", "val"] if self.include_val else ["train"]
        if hasattr(pipeline.encoder.inner, "fit"):  # fitted preprocessing: training texts only
            pipeline.encoder.fit(data.texts("train"))
        answers = [p.answer for s in splits for p in data.pairs(s)]
        if not answers:
            answers = [t for s in splits for t in data.texts(s)]
        embs = pipeline.encode(answers)
        pipeline.decoder.fit(answers, embs)
        return TrainResult(epochs=0, metrics={"bank_size": float(len(set(answers)))},
                           seconds=time.perf_counter() - t0)


def build_hashing(cfg, ctx) -> HashingEncoder:
    """Factory of the ``hashing`` encoder."""
    return HashingEncoder(cfg.dim, cfg.ngrams, cfg.char_ngrams, cfg.lowercase)


def build_flat(cfg, ctx) -> FlatReshaper:
    """Factory of the ``flat`` reshaper (D from the encoder)."""
    return FlatReshaper(ctx.embedding_dim, cfg.shape, cfg.channels)


def build_identity(cfg, ctx) -> IdentityCore:
    """Factory of the ``identity`` core (shape and channels from the reshaper)."""
    r = ctx.reshaper
    return IdentityCore(tuple(r.shape), r.channels)


def build_nearest(cfg, ctx) -> NearestDecoder:
    """Factory of the ``nearest`` decoder."""
    return NearestDecoder(cfg.k)


def build_retrieval(cfg, ctx) -> RetrievalStrategy:
    """Factory of the ``retrieval`` strategy."""
    return RetrievalStrategy(cfg.include_val)
