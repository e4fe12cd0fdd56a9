"""Protocols for every component kind. Shapes: B batch, D embedding size, X·Y·Z lattice,
C state channels. All tensors float32, batch first, lattice channels-last ``[B, X, Y, Z, C]``.

Components that hold learned tensors are ``torch.nn.Module`` s: the pipeline saves their
``state_dict`` in the run's ``weights.safetensors``. Components with other artefacts (a FAISS
index, a tokenizer, a fitted preprocessing) implement ``save(dir)`` / ``load(dir)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    import torch


@runtime_checkable
class Encoder(Protocol):
    """Text → teacher embedding. Frozen, deterministic."""

    dim: int  #: D
    fingerprint: str  #: changes whenever weights, pooling or preprocessing change (cache key)

    def encode(self, texts: Sequence[str]) -> "torch.Tensor":
        """Return ``[len(texts), D]`` float32 on CPU. Empty input → ``[0, D]``."""


@runtime_checkable
class Reshaper(Protocol):
    """Embedding ↔ lattice field. Owns I/O placement. Usually an ``nn.Module``."""

    shape: tuple[int, int, int]  #: (X, Y, Z)
    channels: int  #: C of the field and of the state
    out_dim: int  #: D' of ``from_state``

    def to_field(self, emb: "torch.Tensor") -> "torch.Tensor":
        """``[B, D]`` → ``[B, X, Y, Z, C]``."""

    def from_state(self, state: "torch.Tensor") -> "torch.Tensor":
        """``[B, X, Y, Z, C]`` → ``[B, D']``."""


@runtime_checkable
class Core(Protocol):
    """The lattice dynamics (an ``nn.Module``): ``forward(field [B,X,Y,Z,C]) -> state [B,X,Y,Z,C]``."""

    shape: tuple[int, int, int]
    channels: int

    def __call__(self, field: "torch.Tensor") -> "torch.Tensor": ...


@runtime_checkable
class Kernel(Protocol):
    """One synchronous lattice step, same maths as the ``reference`` kernel."""

    name: str

    def step(self, state: "torch.Tensor", field: "torch.Tensor | None", cell: Any, topology: Any) -> "torch.Tensor":
        """``state [B,X,Y,Z,C]``, optional injected ``field [B,X,Y,Z,C]`` → new state ``[B,X,Y,Z,C]``."""


@dataclass
class Candidate:
    """One decoder candidate: its text and score (higher is better)."""

    text: str
    score: float


@runtime_checkable
class Decoder(Protocol):
    """Embedding → text. Trainable decoders add ``fit(texts, embs)``."""

    def decode(self, emb: "torch.Tensor") -> list[str]:
        """``[B, D]`` → B strings. A decoder with a "no confident match" rule returns ``""`` there."""

    def candidates(self, emb: "torch.Tensor", k: int = 5) -> list[list[Candidate]]:
        """Top-k candidates with scores (higher is better) per row, best first."""

    def fit(self, texts: Sequence[str], embs: "torch.Tensor") -> Any:
        """Trainable decoders: learn from ``texts`` and their embeddings ``embs [N, D]``; returns
        what it measured."""

    def save(self, directory: Path) -> list[Path]:
        """Write artefacts into ``directory``; return the files written (hashed into the manifest)."""

    def load(self, directory: Path) -> None:
        """Read the artefacts :meth:`save` wrote into ``directory``."""


@dataclass
class Pair:
    """A question → answer pair. ``group`` keeps related pairs on one side of a split."""

    question: str
    answer: str
    group: str = ""


@dataclass
class SelectionItem:
    """Answer selection: a question, candidate answers and 0/1 labels."""

    question: str
    candidates: list[str]
    labels: list[int]


@runtime_checkable
class Dataset(Protocol):
    """Real data with a fixed, seeded, grouped train/val/test split."""

    def pairs(self, split: str) -> list[Pair]:
        """``split`` in ``train``, ``val``, ``test``."""

    def texts(self, split: str) -> list[str]:
        """The single texts of ``split`` (questions and answers, or sentences), for decoders and
        autoencoders."""


@dataclass
class TrainResult:
    """What a strategy returns."""

    epochs: int = 0
    best_epoch: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


@runtime_checkable
class Strategy(Protocol):
    """Trains a pipeline; see :meth:`fit`."""

    def fit(self, pipeline: Any, data: Dataset, run: Any) -> TrainResult:
        """Train ``pipeline`` (its reshaper/core/decoder) on ``data``; ``run`` is a
        :class:`cellnet_core.run.RunContext` (directory, checkpoints, logging, resume)."""


def iter_batches(seq: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """Consecutive slices of ``seq`` of at most ``size`` items."""
    for i in range(0, len(seq), size):
        yield seq[i:i + size]
