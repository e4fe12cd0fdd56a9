"""The FAISS side of the phrase bank: building, searching, measuring and saving the index.

Vectors are float32 ``[N, D]``, L2-normalised by the caller, so inner product = cosine.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from cellnet_core.errors import CheckpointError

INDEX_FILE = "index.faiss"

#: how many times 'target_recall' tuning may double nprobe / ef_search
_MAX_DOUBLINGS = 6


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """``[N, D]`` float32 rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(x / norms, dtype=np.float32)


class faiss_threads:
    """Run FAISS with ``n`` OpenMP threads inside the block (``0``: leave as is)."""

    def __init__(self, n: int = 0):
        self.n = n

    def __enter__(self) -> None:
        self.before = faiss.omp_get_max_threads()
        if self.n and self.n != self.before:
            faiss.omp_set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        if self.n and self.n != self.before:
            faiss.omp_set_num_threads(self.before)


def one_thread() -> faiss_threads:
    """One OpenMP thread: a search of a few queries gains nothing from threads, and waking them
    costs more than the search when the cores are busy."""
    return faiss_threads(1)


@dataclass
class IndexParams:
    """The index settings of :class:`cellnet_phrasebank.config.PhrasebankConfig`."""

    index: str = "auto"
    approximate: str = "hnsw"
    exact_below: int = 50_000
    nlist: int = 0
    nprobe: int = 16
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 64
    target_recall: float = 0.95
    recall_sample: int = 500
    recall_noise: float = 0.5
    seed: int = 0
    parallel_min_batch: int = 8
    threads: int = 0

    @classmethod
    def from_config(cls, cfg: Any) -> "IndexParams":
        """The index settings of a phrase-bank config."""
        return cls(**{f: getattr(cfg, f) for f in cls.__dataclass_fields__})


@dataclass
class PhraseIndex:
    """A FAISS inner-product index plus what was measured about it."""

    params: IndexParams
    index: Any = None
    kind: str = ""  #: 'flat', 'ivf' or 'hnsw' (what 'auto' resolved to)
    #: recall@1 of this index against exact search on a perturbed sample of the bank (1.0 for flat)
    recall_at_1: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    # -- properties ------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        """Number of vectors in the index."""
        return 0 if self.index is None else int(self.index.ntotal)

    @property
    def dim(self) -> int | None:
        """Vector size of the index (``None`` before it exists)."""
        return None if self.index is None else int(self.index.d)

    # -- building --------------------------------------------------------------------------
    def resolve_kind(self, n: int) -> str:
        """The index type for ``n`` vectors: the configured one, or with ``auto`` exact ``flat``
        below ``exact_below`` and the approximate type above."""
        p = self.params
        if p.index != "auto":
            return p.index
        return "flat" if n < p.exact_below else p.approximate

    def build(self, vectors: np.ndarray) -> None:
        """Build a new index over ``vectors [N, D]`` (normalised); measure and tune its recall."""
        with faiss_threads(self.params.threads):
            self._build(vectors)

    def _build(self, vectors: np.ndarray) -> None:
        t0 = time.perf_counter()
        n, d = vectors.shape
        p = self.params
        self.kind = self.resolve_kind(n)
        if self.kind == "flat":
            index = faiss.IndexFlatIP(d)
            index.add(vectors)
        elif self.kind == "ivf":
            nlist = p.nlist or int(round(4 * math.sqrt(n)))
            nlist = max(1, min(nlist, n // 39 if n >= 39 else 1))
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = p.seed
            # k-means on at most 64 vectors per cell (FAISS itself samples 256): enough for the
            # centroids, and it keeps a 1M-vector build in seconds rather than minutes
            cap = 64 * nlist
            if n > cap:
                sample = np.random.default_rng(p.seed).choice(n, size=cap, replace=False)
                index.train(np.ascontiguousarray(vectors[np.sort(sample)]))
            else:
                index.train(vectors)
            index.add(vectors)
            index.make_direct_map()  # reconstruct() of candidates for MMR / compose
            index.nprobe = min(p.nprobe, nlist)
        elif self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, p.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = p.ef_construction
            index.add(vectors)
            index.hnsw.efSearch = p.ef_search
        else:  # pragma: no cover - config restricts the names
            raise ValueError(f"unknown index type {self.kind!r}")
        self.index = index
        build_s = time.perf_counter() - t0
        self.meta = {"index": self.kind, "requested": p.index, "ntotal": n, "dim": d, "build_seconds": build_s}
        self.measure_recall(vectors, tune=True)

    def add(self, vectors: np.ndarray) -> None:
        """Add vectors to the existing index: no retraining (IVF keeps its cells, HNSW links the new
        nodes in). Recall is measured again afterwards (without retuning)."""
        with faiss_threads(self.params.threads):
            self.index.add(vectors)
            self.meta["ntotal"] = self.ntotal
            self.meta["added_after_build"] = self.meta.get("added_after_build", 0) + len(vectors)
            self.measure_recall(None, tune=False)

    # -- search ----------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``[B, D]`` normalised queries → (scores ``[B, k]``, ids ``[B, k]``), best first; id -1 pads."""
        k = max(1, min(k, self.ntotal))
        threads = self.params.threads if len(queries) >= self.params.parallel_min_batch else 1
        with faiss_threads(threads):
            return self.index.search(queries, k)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of ``ids`` (``[M]`` → ``[M, D]``)."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.index.reconstruct_batch(ids)

    def all_vectors(self) -> np.ndarray:
        """Every stored vector ``[N, D]`` (float32)."""
        return self.index.reconstruct_n(0, self.ntotal)

    # -- recall ----------------------------------------------------------------------------
    def _set_search_param(self, value: int) -> None:
        if self.kind == "ivf":
            self.index.nprobe = int(value)
        elif self.kind == "hnsw":
            self.index.hnsw.efSearch = int(value)

    def search_param(self) -> dict[str, int]:
        """The search-time settings of the index (IVF ``nlist``/``nprobe``, HNSW
        ``M``/``efSearch``)."""
        if self.kind == "ivf":
            return {"nlist": int(self.index.nlist), "nprobe": int(self.index.nprobe)}
        if self.kind == "hnsw":
            return {"hnsw_m": self.params.hnsw_m, "ef_search": int(self.index.hnsw.efSearch)}
        return {}

    def measure_recall(self, vectors: np.ndarray | None, tune: bool) -> float:
        """recall@1 of the index against exact search, on ``recall_sample`` bank vectors plus
        Gaussian noise of norm ``recall_noise`` (renormalised). A tie in score counts as a hit.
        With ``tune``, double nprobe / ef_search until ``target_recall`` is met (6 times at most)."""
        p = self.params
        if self.kind == "flat":
            self.recall_at_1 = 1.0
            self.meta.update({"recall_at_1": 1.0, "recall_note": "exact index"})
            return 1.0
        t0 = time.perf_counter()
        if vectors is None:
            vectors = self.all_vectors()
        n, d = vectors.shape
        rng = np.random.default_rng(p.seed)
        m = min(p.recall_sample, n)
        src = rng.choice(n, size=m, replace=False)
        noise = rng.standard_normal((m, d)).astype(np.float32)
        noise *= p.recall_noise / np.maximum(np.linalg.norm(noise, axis=1, keepdims=True), 1e-12)
        queries = normalize_rows(vectors[src] + noise)
        exact_s, exact_i = faiss.knn(queries, vectors, 1, metric=faiss.METRIC_INNER_PRODUCT)

        def recall() -> float:
            s, i = self.index.search(queries, 1)
            hit = (i[:, 0] == exact_i[:, 0]) | (s[:, 0] >= exact_s[:, 0] - 1e-6)
            return float(hit.mean())

        r = recall()
        tuned = 0
        if tune and p.target_recall > 0:
            limit = int(self.index.nlist) if self.kind == "ivf" else 1 << 16
            current = self.search_param().get("nprobe" if self.kind == "ivf" else "ef_search", 1)
            while r < p.target_recall and tuned < _MAX_DOUBLINGS and current < limit:
                current = min(current * 2, limit)
                self._set_search_param(current)
                r = recall()
                tuned += 1
        self.recall_at_1 = r
        self.meta.update({
            "recall_at_1": r,
            "recall_sample": m,
            "recall_noise": p.recall_noise,
            "recall_target": p.target_recall,
            "recall_doublings": tuned,
            "recall_seconds": time.perf_counter() - t0,
            "recall_note": ("recall@1 vs exact search on sampled bank vectors plus Gaussian noise of norm "
                            f"{p.recall_noise}, renormalised"),
            **self.search_param(),
        })
        return r

    # -- files -----------------------------------------------------------------------------
    def save(self, directory: Path) -> Path:
        """Write ``index.faiss`` atomically (temporary file + rename)."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / INDEX_FILE
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{INDEX_FILE}.", suffix=".tmp")
        os.close(fd)
        try:
            faiss.write_index(self.index, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    def load(self, directory: Path, meta: dict[str, Any]) -> None:
        """Read the FAISS index from ``directory`` with its ``meta``; a missing or damaged file is a
        CheckpointError."""
        path = directory / INDEX_FILE
        if not path.exists():
            raise CheckpointError(f"{path}: missing (the phrase bank's FAISS index)")
        try:
            index = faiss.read_index(str(path))
        except Exception as exc:  # noqa: BLE001 - faiss raises RuntimeError on damage
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{path}: damaged or not a FAISS index ({first})") from None
        kind = meta.get("index")
        if kind is None:
            kind = "hnsw" if isinstance(index, faiss.IndexHNSW) else "ivf" if isinstance(index, faiss.IndexIVF) else "flat"
        if kind == "ivf":
            index.make_direct_map()
            if "nprobe" in meta:
                index.nprobe = int(meta["nprobe"])
        elif kind == "hnsw" and "ef_search" in meta:
            index.hnsw.efSearch = int(meta["ef_search"])
        self.index, self.kind, self.meta = index, kind, dict(meta)
        self.recall_at_1 = meta.get("recall_at_1")
