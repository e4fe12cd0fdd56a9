"""Several teachers combined into one embedding.

- ``concat``: each teacher's output L2-normalised, times ``sqrt(weight_i / sum(weights))``, joined:
  the cosine of two concatenations is then the weighted mean of the teachers' cosines.
- ``mean``: each teacher's output ``[B, D_i]`` L2-normalised and projected to ``dim`` by a fixed
  random orthogonal map ``[D_i, dim]`` drawn from a seeded generator (orthonormal rows when
  ``D_i <= dim``, so a teacher's own geometry is kept exactly), then the weighted mean.

The projections depend only on the seed and the sizes; they are still saved with the run
(``save(dir)``) and checked on ``load(dir)``, so a run keeps its combination even if the way they
are drawn changes. Each teacher's encodes go through the embedding cache under its own fingerprint.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import torch

from cellnet_core.errors import CheckpointError
from cellnet_teachers.preprocessing import Teacher

PROJ_FILE = "ensemble.safetensors"


def orthogonal_projection(d_in: int, d_out: int, seed: int) -> torch.Tensor:
    """``[d_in, d_out]`` with orthonormal rows (d_in <= d_out) or columns (d_in > d_out)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(max(d_in, d_out), min(d_in, d_out), generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))  # unique QR → the same matrix everywhere
    return (q if d_in >= d_out else q.T).float().contiguous()


class EnsembleEncoder(Teacher):
    """Several teachers as one encoder: their L2-normalised embeddings concatenated (weighted), or
    averaged after seeded orthogonal projections to a common size; then the shared preprocessing."""

    def __init__(self, teachers: list[Any], *, combine: str = "concat", dim: int | None = None,
                 weights: list[float] | None = None, seed: int = 0, normalize: bool = True,
                 preprocess: str = "none", pca_dim: int | None = None, cache_dir: str | Path | None = None):
        from cellnet_core.cache import CachedEncoder

        self.teachers = teachers
        # each teacher through the disk cache under its own fingerprint (a lone minilm run shares it)
        self._cached = [CachedEncoder(t, cache_dir) for t in teachers]
        self.combine, self.seed, self.normalize = combine, seed, normalize
        w = torch.tensor(weights if weights is not None else [1.0] * len(teachers), dtype=torch.float32)
        self.weights = w / w.sum()
        dims = [int(t.dim) for t in teachers]
        if combine == "concat":
            self.base_dim = sum(dims)
            self.projections: list[torch.Tensor] = []
        else:
            self.base_dim = int(dim or max(dims))
            self.projections = [orthogonal_projection(d, self.base_dim, seed * 1000 + i) for i, d in enumerate(dims)]
        self._init_preprocessing(preprocess, pca_dim)

    @property
    def base_fingerprint(self) -> str:  # type: ignore[override] - teachers' fingerprints change when fitted
        """The members' fingerprints, the weights, the combination and a hash of the projections."""
        parts = "+".join(f"[{t.fingerprint}]" for t in self.teachers)
        w = ",".join(f"{x:.6g}" for x in self.weights.tolist())
        proj = ""
        if self.projections:
            h = hashlib.sha256()
            for p in self.projections:
                h.update(p.numpy().tobytes())
            proj = f":proj={h.hexdigest()[:12]}"
        return f"ensemble:{self.combine}:dim={self.base_dim}:w={w}:norm={self.normalize}{proj}:{parts}"

    def base_encode(self, texts: Sequence[str]) -> torch.Tensor:
        """``texts`` → ``[B, D]``: each member's cached embedding, normalised, combined."""
        texts = list(texts)
        outs = [torch.nn.functional.normalize(c.encode(texts).float(), dim=-1) for c in self._cached]
        if self.combine == "concat":
            out = torch.cat([o * w.sqrt() for o, w in zip(outs, self.weights)], dim=-1)
        else:
            out = sum(w * (o @ p) for o, w, p in zip(outs, self.weights, self.projections))
        if self.normalize:
            out = torch.nn.functional.normalize(out, dim=-1)
        return out

    def fit_preprocessing(self, texts_or_embeddings: Sequence[str] | torch.Tensor) -> "EnsembleEncoder":
        """Fit each member's own preprocessing on the texts, then the ensemble's; returns ``self``."""
        if not isinstance(texts_or_embeddings, torch.Tensor):
            for t in self.teachers:  # teachers with their own preprocessing fit on the same texts
                if hasattr(t, "fit"):
                    t.fit(list(texts_or_embeddings))
        super().fit_preprocessing(texts_or_embeddings)
        return self

    def save(self, directory: Path) -> list[Path]:
        """Write the preprocessing, the projections and each fitted member (``teacher<i>/``); return
        the files."""
        from cellnet_core.checkpoint import save_tensors

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = list(super().save(directory))
        if self.projections:
            path = directory / PROJ_FILE
            save_tensors(path, {f"proj.{i}": p for i, p in enumerate(self.projections)},
                         metadata={"combine": self.combine, "dim": str(self.base_dim)})
            files.append(path)
        for i, t in enumerate(self.teachers):
            if hasattr(t, "save"):
                files.extend(t.save(directory / f"teacher{i}") or [])
        return files

    def load(self, directory: Path) -> None:
        """Read what :meth:`save` wrote."""
        from cellnet_core.checkpoint import load_tensors

        directory = Path(directory)
        for i, t in enumerate(self.teachers):
            if hasattr(t, "load") and (directory / f"teacher{i}").exists():
                t.load(directory / f"teacher{i}")
        if self.projections:
            path = directory / PROJ_FILE
            saved = load_tensors(path)
            new = []
            for i, p in enumerate(self.projections):
                q = saved.get(f"proj.{i}")
                if q is None or q.shape != p.shape:
                    raise CheckpointError(f"{path}: projection {i} missing or not of shape {list(p.shape)}")
                new.append(q.float())
            self.projections = new
        super().load(directory)


def build_ensemble(cfg: Any, ctx: Any) -> EnsembleEncoder:
    """Factory of the ``ensemble`` encoder: builds each member from ``encoders`` through the
    registry."""
    from cellnet_core.pipeline import BuildContext

    if ctx is None:
        from cellnet_core.plugins import load

        ctx = BuildContext(registry=load()[1])
    teachers = [ctx.registry.build("encoder", ctx.registry.config_for("encoder", sub, where=f"encoder.encoders[{i}]"),
                                   ctx) for i, sub in enumerate(cfg.encoders)]
    return EnsembleEncoder(teachers, combine=cfg.combine, dim=cfg.dim, weights=cfg.weights,
                           seed=int(getattr(ctx, "seed", 0) or 0) + cfg.seed, normalize=cfg.normalize,
                           preprocess=cfg.preprocess, pca_dim=cfg.pca_dim)
