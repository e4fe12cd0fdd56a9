"""Preprocessing of teacher embeddings fitted on the training split, and the base class every
teacher here shares (fit / save / load / fingerprint).

A teacher computes a *base* embedding ``[B, D0]`` (pooled, optionally L2-normalised); the fitted
preprocessing maps it to the output ``[B, D]`` (``D = pca_dim`` for 'pca' / 'whiten' with
``pca_dim``, else ``D0``). Fitting happens in :meth:`Teacher.fit` — the training strategies call
``encoder.fit(train_texts)`` when the encoder has ``fit``; it is saved with the run by
``save(run_dir/"encoder")`` and restored by ``load``.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Sequence

import torch

from cellnet_core.errors import CellnetError, CheckpointError, DataError

PRE_FILE = "preprocessing.safetensors"


class NotFittedError(CellnetError):
    """The encoder's preprocessing must be fitted (``encoder.fit(train_texts)``) before encoding."""


class Preprocessor:
    """``none`` | ``center`` | ``l2`` | ``whiten`` | ``pca`` on ``[N, D0]`` float32 embeddings.

    Fitted state: ``mean [D0]`` and ``matrix [D0, D]`` (identity-free methods keep ``matrix`` empty).
    """

    def __init__(self, method: str = "none", pca_dim: int | None = None, eps: float = 1e-6):
        self.method, self.pca_dim, self.eps = method, pca_dim, eps
        self.mean: torch.Tensor | None = None
        self.matrix: torch.Tensor | None = None

    @property
    def needs_fit(self) -> bool:
        """Whether the method has parameters to fit (every method but ``none``)."""
        return self.method != "none"

    @property
    def fitted(self) -> bool:
        """Whether :meth:`apply` can run (fitted, or nothing to fit)."""
        return not self.needs_fit or self.mean is not None

    def out_dim(self, in_dim: int) -> int:
        """Embedding size after preprocessing of ``in_dim``-wide inputs."""
        if self.method in ("pca", "whiten") and self.pca_dim is not None:
            return self.pca_dim
        return in_dim

    def fit(self, emb: torch.Tensor) -> "Preprocessor":
        """Fit on base embeddings ``[N, D0]`` of the *training* texts."""
        if not self.needs_fit:
            return self
        emb = emb.detach().to("cpu", torch.float64)
        n, d = emb.shape
        if n < 2:
            raise DataError(f"preprocess '{self.method}': needs at least 2 training texts to fit, got {n}")
        k = self.out_dim(d)
        if k > d:
            raise DataError(f"preprocess '{self.method}': pca_dim {k} is larger than the embedding size {d}")
        if self.method == "pca" and k > n:
            raise DataError(f"preprocess 'pca': pca_dim {k} needs at least {k} training texts, got {n}")
        mean = emb.mean(0)
        matrix = None
        if self.method in ("whiten", "pca"):
            x = emb - mean
            cov = x.T @ x / (n - 1)
            evals, evecs = torch.linalg.eigh(cov)  # ascending
            evals, evecs = evals.flip(0)[:k].clamp_min(0), evecs.flip(1)[:, :k]
            # a fixed sign per axis (largest |component| positive) makes the fit reproducible
            signs = torch.sign(evecs.gather(0, evecs.abs().argmax(0, keepdim=True))).squeeze(0)
            evecs = evecs * torch.where(signs == 0, torch.ones_like(signs), signs)
            if self.method == "whiten":
                floor = self.eps * float(evals.max().clamp_min(1e-12))
                matrix = evecs / torch.sqrt(evals.clamp_min(floor))
            else:
                matrix = evecs
        self.mean = mean.float()
        self.matrix = None if matrix is None else matrix.float().contiguous()
        return self

    def apply(self, emb: torch.Tensor) -> torch.Tensor:
        """``emb [N, D0]`` → ``[N, D]`` with the fitted parameters; NotFittedError before
        :meth:`fit`."""
        if not self.needs_fit:
            return emb
        if self.mean is None:
            raise NotFittedError(
                f"preprocess '{self.method}' is not fitted: call encoder.fit(training texts) first "
                "(the training strategy does) or load a trained run")
        x = emb - self.mean
        if self.matrix is not None:
            x = x @ self.matrix
        if self.method == "l2":
            x = torch.nn.functional.normalize(x, dim=-1)
        return x

    def digest(self) -> str:
        """Changes whenever the fitted parameters change (part of the encoder's fingerprint)."""
        if not self.needs_fit:
            return "none"
        if self.mean is None:
            return f"{self.method}:unfitted"
        h = hashlib.sha256(self.method.encode())
        h.update(self.mean.numpy().tobytes())
        if self.matrix is not None:
            h.update(self.matrix.numpy().tobytes())
        return f"{self.method}:{self.out_dim(self.mean.shape[0])}:{h.hexdigest()[:16]}"

    def tensors(self) -> dict[str, torch.Tensor]:
        """The fitted parameters by name (``mean``, ``matrix``) for saving."""
        out = {}
        if self.mean is not None:
            out["mean"] = self.mean
        if self.matrix is not None:
            out["matrix"] = self.matrix
        return out

    def set_tensors(self, tensors: dict[str, torch.Tensor], source: str, in_dim: int) -> None:
        """Load fitted parameters, checking their shapes against ``in_dim``; a mismatch is a
        CheckpointError naming ``source``."""
        mean, matrix = tensors.get("mean"), tensors.get("matrix")
        if mean is None or mean.shape != (in_dim,):
            raise CheckpointError(f"{source}: preprocessing 'mean' missing or not of size {in_dim}")
        if self.method in ("whiten", "pca"):
            want = (in_dim, self.out_dim(in_dim))
            if matrix is None or tuple(matrix.shape) != want:
                raise CheckpointError(f"{source}: preprocessing 'matrix' missing or not of shape {list(want)}")
        self.mean, self.matrix = mean.float(), None if matrix is None else matrix.float()


class Teacher:
    """Base of the encoders here: ``base_encode`` (model) → fitted preprocessing → optional L2.

    Subclasses set ``base_dim``, ``base_fingerprint`` and implement ``base_encode(texts)``.
    """

    base_dim: int
    base_fingerprint: str
    normalize: bool = True
    #: where ``fit`` caches base embeddings; ``None`` → the default embedding cache directory
    base_cache_dir: str | Path | None = None

    def _init_preprocessing(self, method: str, pca_dim: int | None) -> None:
        self.pre = Preprocessor(method, pca_dim)
        if pca_dim is not None and pca_dim > self.base_dim:
            from cellnet_core.errors import ConfigError

            raise ConfigError(f"encoder.pca_dim: {pca_dim} is larger than the teacher's size {self.base_dim}")

    @property
    def dim(self) -> int:
        """Output size D (after preprocessing)."""
        return self.pre.out_dim(self.base_dim)

    @property
    def fingerprint(self) -> str:
        """Cache key: the model's fingerprint plus, when fitted preprocessing is used, its digest."""
        fp = self.base_fingerprint
        if self.pre.needs_fit:
            fp += f"|pre={self.pre.digest()}|norm={self.normalize}"
        return fp

    def base_encode(self, texts: Sequence[str]) -> torch.Tensor:  # pragma: no cover - abstract
        """``texts`` → ``[B, D0]`` from the model, before preprocessing; subclasses implement it."""
        raise NotImplementedError

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """``texts`` → ``[B, D]`` float32 on CPU. Empty input → ``[0, D]``."""
        texts = list(texts)
        if not texts:
            return torch.zeros(0, self.dim)
        if not self.pre.fitted:
            self.pre.apply(torch.zeros(1, self.base_dim))  # raises NotFittedError with the how-to
        out = self.pre.apply(self.base_encode(texts))
        if self.pre.needs_fit and self.normalize:
            out = torch.nn.functional.normalize(out, dim=-1)
        return out.float().contiguous()

    def cached_base_encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Base embeddings through the disk cache (key: ``base_fingerprint``, shared with the same
        teacher without preprocessing)."""
        from cellnet_core.cache import CachedEncoder

        return CachedEncoder(_BaseView(self), self.base_cache_dir).encode(list(texts))

    # -- fitting and artefacts ------------------------------------------------------------
    def fit(self, texts: Sequence[str] | torch.Tensor) -> "Teacher":
        """Fit the preprocessing on the training split: texts, or their base embeddings ``[N, D0]``."""
        return self.fit_preprocessing(texts)

    def fit_preprocessing(self, texts_or_embeddings: Sequence[str] | torch.Tensor) -> "Teacher":
        """Fit the preprocessing on training texts (encoded here) or on base embeddings ``[N, D0]``;
        returns ``self``."""
        if not self.pre.needs_fit:
            return self
        if isinstance(texts_or_embeddings, torch.Tensor):
            emb = texts_or_embeddings
            if emb.ndim != 2 or emb.shape[1] != self.base_dim:
                raise DataError(f"fit: expected base embeddings [N, {self.base_dim}], got {list(emb.shape)}")
        else:
            emb = self.cached_base_encode(list(texts_or_embeddings))
        self.pre.fit(emb)
        return self

    def save(self, directory: Path) -> list[Path]:
        """Write the fitted preprocessing (if any) into ``directory``; return the files written."""
        from cellnet_core.checkpoint import save_tensors

        if not self.pre.needs_fit:
            return []
        if not self.pre.fitted:
            warnings.warn(f"encoder preprocessing '{self.pre.method}' was never fitted; nothing saved",
                          stacklevel=2)
            return []
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / PRE_FILE
        save_tensors(path, self.pre.tensors(), metadata={
            "method": self.pre.method, "pca_dim": str(self.pre.pca_dim), "base": self.base_fingerprint})
        return [path]

    def load(self, directory: Path) -> None:
        """Read the fitted preprocessing written by ``save`` from ``directory``."""
        from safetensors import safe_open

        from cellnet_core.checkpoint import load_tensors

        if not self.pre.needs_fit:
            return
        path = Path(directory) / PRE_FILE
        tensors = load_tensors(path)  # CheckpointError when missing or damaged
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        if meta.get("method") != self.pre.method:
            raise CheckpointError(f"{path}: fitted for preprocess '{meta.get('method')}', the config asks "
                                  f"for '{self.pre.method}'")
        if meta.get("base") not in (None, self.base_fingerprint):
            raise CheckpointError(f"{path}: fitted for another teacher ({meta.get('base')})")
        self.pre.set_tensors(tensors, str(path), self.base_dim)


class _BaseView:
    """The teacher without its preprocessing, as an encoder (for the cache)."""

    def __init__(self, teacher: Teacher):
        self.teacher = teacher
        self.dim = teacher.base_dim
        self.fingerprint = teacher.base_fingerprint

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        texts = list(texts)
        if not texts:
            return torch.zeros(0, self.dim)
        return self.teacher.base_encode(texts)




