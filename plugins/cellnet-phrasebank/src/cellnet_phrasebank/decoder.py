"""The ``phrasebank`` decoder: embedding ``[B, D]`` → the nearest known phrase(s).

Phrases and their teacher embeddings are indexed by FAISS (inner product on L2-normalised
vectors = cosine). Three assembly methods:

- ``best``: the nearest phrase.
- ``mmr``: maximal-marginal-relevance rerank of the top phrases (relevance vs redundancy);
  decode joins up to ``max_phrases`` MMR picks whose relevance is within ``mmr_margin`` of the best.
- ``compose``: greedy or beam search over sequences of up to ``max_phrases`` phrases from the top
  ``compose_pool``; each sequence is joined into one text and scored by the cosine between the
  teacher's embedding of that text and the target, so the output is verified, not guessed.

A similarity threshold (``min_score``) gives an explicit "no confident match": ``decode`` returns
``""`` and ``candidates`` flags every row item with ``confident=False``. No hedge phrase is made up.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from cellnet_core.checkpoint import atomic_write_json, atomic_write_text, read_json
from cellnet_core.errors import CheckpointError, ConfigError, DataError
from cellnet_core.interfaces import Candidate

from cellnet_phrasebank.config import PhrasebankConfig
from cellnet_phrasebank.index import INDEX_FILE, IndexParams, PhraseIndex, normalize_rows
from cellnet_phrasebank.text import is_question, join_phrases, postprocess

TEXTS_FILE = "texts.jsonl"
META_FILE = "meta.json"
NO_MATCH = ""  #: what ``decode`` returns for a query below ``min_score``


@dataclass
class PhraseCandidate(Candidate):
    """A :class:`Candidate` with the bank ids it is made of, whether it passed ``min_score`` and its
    plain ``cosine`` to the query (``score`` is the method's ranking value: cosine for ``best``,
    the MMR value for ``mmr``, cosine minus the length penalty for ``compose``)."""

    confident: bool = True
    ids: tuple[int, ...] = ()
    cosine: float = float("nan")


def _to_numpy(emb: Any) -> np.ndarray:
    if hasattr(emb, "detach"):  # torch tensor, without importing torch here
        emb = emb.detach().to("cpu").float().numpy()
    arr = np.asarray(emb, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ConfigError(f"decoder 'phrasebank': expected embeddings of shape [B, D], got {list(arr.shape)}")
    return arr


def read_texts_file(path: str | Path) -> list[str]:
    """Phrases of a text file: one per line, or JSONL with a ``text`` field (``.jsonl``)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"decoder.texts_file: {path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    out = []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                obj = json.loads(line)
                text = obj["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError(f"{path}: line {no}: expected a JSON object with a 'text' field") from None
            if not isinstance(text, str):
                raise DataError(f"{path}: line {no}: 'text' is not a string")
            out.append(text)
        else:
            out.append(line.strip())
    return out


class PhrasebankDecoder:
    """See the module docstring. ``encoder`` (the teacher, e.g. ``ctx.encoder``) is needed by
    ``texts_file`` and by ``compose`` with ``compose_score='encoder'``."""

    def __init__(self, cfg: PhrasebankConfig | None = None, encoder: Any = None, embedding_dim: int | None = None):
        self.cfg = cfg or PhrasebankConfig()
        self.encoder = encoder
        self.embedding_dim = embedding_dim
        self.texts: list[str] = []
        self._ids: dict[str, int] = {}
        self.bank = PhraseIndex(IndexParams.from_config(self.cfg))
        self._cache: OrderedDict[tuple, Any] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0
        #: number of compositions re-embedded by the teacher so far (cost of 'compose')
        self.compose_encoded = 0

    # -- state -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.texts)

    @property
    def recall_at_1(self) -> float | None:
        """Measured recall@1 of the index against exact search (1.0 for the flat index)."""
        return self.bank.recall_at_1

    @property
    def index_kind(self) -> str:
        """The FAISS index type in use: ``flat``, ``ivf`` or ``hnsw``."""
        return self.bank.kind

    @property
    def meta(self) -> dict[str, Any]:
        """Index facts (type, size, build time, recall@1) with the number of texts and the decode
        method."""
        return {**self.bank.meta, "texts": len(self.texts), "method": self.cfg.method}

    def clear_cache(self) -> None:
        """Forget the cached decode results (done whenever the bank changes)."""
        self._cache.clear()

    # -- building --------------------------------------------------------------------------
    def _prepare(self, texts: Sequence[str], embs: Any) -> tuple[list[str], np.ndarray]:
        texts = [str(t) for t in texts]
        vecs = _to_numpy(embs) if len(texts) else np.zeros((0, self.embedding_dim or 0), np.float32)
        if len(texts) != vecs.shape[0]:
            raise DataError(f"decoder 'phrasebank': {len(texts)} texts but {vecs.shape[0]} embeddings")
        return texts, normalize_rows(vecs) if len(texts) else vecs

    def _file_phrases(self) -> tuple[list[str], np.ndarray]:
        texts = read_texts_file(self.cfg.texts_file)
        if self.encoder is None:
            raise ConfigError("decoder.texts_file: encoding the phrases needs the run's encoder "
                              "(build the decoder through a pipeline or pass encoder=...)")
        return texts, _to_numpy(self.encoder.encode(texts)) if texts else np.zeros((0, self.encoder.dim), np.float32)

    def fit(self, texts: Sequence[str], embs: Any) -> dict[str, Any]:
        """Build the bank from ``texts`` and their embeddings ``[N, D]`` (plus the phrases of
        ``texts_file`` when set). Identical texts are kept once (the first embedding wins); texts
        that are only questions (:func:`~cellnet_phrasebank.text.is_question`) are left out unless
        ``include_questions`` is set. Returns :attr:`meta` (index type, size, build time, measured recall)."""
        texts, vecs = self._prepare(texts, embs)
        given = len(texts)
        if not self.cfg.include_questions and given:
            answers = [i for i, t in enumerate(texts) if not is_question(t)]
            if not answers and not self.cfg.texts_file:
                raise DataError(f"decoder 'phrasebank': all {given} texts given to fit() are questions; "
                                "set decoder.include_questions: true to build a bank of questions")
            texts, vecs = [texts[i] for i in answers], vecs[answers]
        questions_dropped = given - len(texts)
        if self.cfg.texts_file:
            ft, fv = self._file_phrases()
            if len(texts) and len(ft) and fv.shape[1] != vecs.shape[1]:
                raise ConfigError(f"decoder.texts_file: the encoder gives {fv.shape[1]} dims but fit() got "
                                  f"{vecs.shape[1]}-dim embeddings")
            texts = texts + ft
            vecs = np.concatenate([vecs, normalize_rows(fv)]) if len(vecs) else normalize_rows(fv)
        if not texts:
            raise DataError("decoder 'phrasebank': fit() got no texts (and texts_file has none)")
        keep: dict[str, int] = {}
        for i, t in enumerate(texts):
            keep.setdefault(t, i)
        idx = np.fromiter(keep.values(), dtype=np.int64, count=len(keep))
        self._check_dim(vecs.shape[1], what="fit() embeddings")
        self.texts = list(keep)
        self._ids = {t: i for i, t in enumerate(self.texts)}
        self.bank = PhraseIndex(IndexParams.from_config(self.cfg))
        self.bank.build(np.ascontiguousarray(vecs[idx]))
        self.bank.meta["duplicates_dropped"] = len(texts) - len(self.texts)
        self.bank.meta["questions_dropped"] = questions_dropped
        self.clear_cache()
        return self.meta

    def add(self, texts: Sequence[str], embs: Any) -> int:
        """Add phrases to a built bank without rebuilding it (texts already present are skipped).
        An empty bank is built instead. Returns the number of phrases added."""
        texts, vecs = self._prepare(texts, embs)
        if not self.texts:
            self.fit(texts, vecs)
            return len(self.texts)
        self._check_dim(vecs.shape[1], what="add() embeddings")
        new: dict[str, int] = {}
        for i, t in enumerate(texts):
            if t not in self._ids and t not in new:
                new[t] = i
        if not new:
            return 0
        idx = np.fromiter(new.values(), dtype=np.int64, count=len(new))
        self.bank.add(np.ascontiguousarray(vecs[idx]))
        for t in new:
            self._ids[t] = len(self.texts)
            self.texts.append(t)
        self.clear_cache()
        return len(new)

    def _ensure_built(self) -> None:
        if self.texts:
            return
        if self.cfg.texts_file:
            self.fit([], np.zeros((0, self.encoder.dim if self.encoder is not None else 0), np.float32))
            return
        raise CheckpointError("decoder 'phrasebank' has no phrases: train the run first (cellnet train), "
                              "call fit(texts, embs), or set decoder.texts_file")

    def _check_dim(self, d: int, what: str) -> None:
        bank_d = self.bank.dim if self.bank.index is not None else self.embedding_dim
        if bank_d is not None and d != bank_d:
            holder = "the bank holds" if self.bank.index is not None else "the pipeline gives the decoder"
            raise ConfigError(f"decoder 'phrasebank': {what} have {d} dims but {holder} {bank_d}-dim vectors")

    # -- queries ---------------------------------------------------------------------------
    def _queries(self, emb: Any) -> np.ndarray:
        self._ensure_built()
        q = _to_numpy(emb)
        if q.shape[1] != self.bank.dim:
            raise ConfigError(f"decoder 'phrasebank': query embedding has {q.shape[1]} dims but the bank holds "
                              f"{self.bank.dim}-dim vectors")
        return normalize_rows(q)

    def _cached(self, q: np.ndarray, tag: tuple, compute: Callable[[np.ndarray], list[Any]]) -> list[Any]:
        """Per-row LRU cache keyed by the rounded query bytes; misses are computed in batches."""
        size = self.cfg.cache_size
        if size == 0:
            return self._batched(q, compute)
        keys = [tag + ((np.round(row, self.cfg.cache_decimals) + 0.0).astype(np.float32).tobytes(),) for row in q]
        out: list[Any] = [None] * len(q)
        missing = []
        for i, key in enumerate(keys):
            hit = self._cache.get(key)
            if hit is None:
                missing.append(i)
            else:
                self._cache.move_to_end(key)
                out[i] = hit
        self.cache_hits += len(q) - len(missing)
        self.cache_misses += len(missing)
        if missing:
            computed = self._batched(q[missing], compute)
            for i, value in zip(missing, computed):
                out[i] = value
                self._cache[keys[i]] = value
                self._cache.move_to_end(keys[i])
            while len(self._cache) > size:
                self._cache.popitem(last=False)
        return out

    def _batched(self, q: np.ndarray, compute: Callable[[np.ndarray], list[Any]]) -> list[Any]:
        bs = self.cfg.batch_size
        out: list[Any] = []
        for i in range(0, len(q), bs):
            out.extend(compute(q[i:i + bs]))
        return out

    def _clean(self, text: str) -> str:
        return postprocess(text, self.cfg.postprocess)

    def _confident(self, top_score: float) -> bool:
        return self.cfg.min_score is None or top_score >= self.cfg.min_score

    # -- assembly methods --------------------------------------------------------------------
    def _rows_best(self, q: np.ndarray, k: int) -> list[list[PhraseCandidate]]:
        scores, ids = self.bank.search(q, k)
        rows = []
        for s_row, i_row in zip(scores, ids):
            ok = self._confident(float(s_row[0]))
            rows.append([PhraseCandidate(self._clean(self.texts[j]), float(s), ok, (int(j),), float(s))
                         for s, j in zip(s_row, i_row) if j >= 0])
        return rows

    def _rows_mmr(self, q: np.ndarray, k: int) -> list[list[PhraseCandidate]]:
        """MMR order of the top ``max(k, mmr_pool)`` phrases. ``score`` is the MMR value
        ``λ·cos(q, c) − (1−λ)·max cos(c, chosen)``, which never increases from one pick to the next;
        ``cosine`` is the plain relevance."""
        pool = max(k, self.cfg.mmr_pool)
        scores, ids = self.bank.search(q, pool)
        lam = self.cfg.mmr_lambda
        rows = []
        for s_row, i_row in zip(scores, ids):
            valid = i_row >= 0
            s_row, i_row = s_row[valid], i_row[valid]
            vecs = self.bank.reconstruct(i_row)
            sim = vecs @ vecs.T
            chosen: list[int] = []
            values: list[float] = []
            remaining = list(range(len(i_row)))
            while remaining and len(chosen) < k:
                if chosen:
                    redundancy = sim[np.ix_(remaining, chosen)].max(axis=1)
                else:
                    redundancy = np.zeros(len(remaining), np.float32)
                value = lam * s_row[remaining] - (1 - lam) * redundancy
                best_at = int(np.argmax(value))
                pick = remaining[best_at]
                values.append(float(value[best_at]))
                chosen.append(pick)
                remaining.remove(pick)
            ok = self._confident(float(s_row[0])) if len(s_row) else False
            rows.append([PhraseCandidate(self._clean(self.texts[int(i_row[c])]), v, ok, (int(i_row[c]),),
                                         float(s_row[c]))
                         for c, v in zip(chosen, values)])
        return rows

    def _mmr_answer(self, row: list[PhraseCandidate]) -> str:
        if not row or not row[0].confident:
            return NO_MATCH
        top = row[0].cosine
        picks = [c.text for c in row[:self.cfg.max_phrases] if c.cosine >= top - self.cfg.mmr_margin]
        return self._clean(join_phrases(picks))

    def _score_texts(self, q_rows: np.ndarray, texts: list[str], seqs: list[tuple[int, ...]]) -> np.ndarray:
        """Cosine between each composed text and its query row (``q_rows[i]`` for ``texts[i]``)."""
        if self.cfg.compose_score == "sum":
            v = np.stack([self.bank.reconstruct(np.asarray(s)).sum(axis=0) for s in seqs])
        else:
            if self.encoder is None:
                raise ConfigError("decoder 'phrasebank': method 'compose' with compose_score 'encoder' needs the "
                                  "teacher encoder (build it through a pipeline or pass encoder=...); or set "
                                  "compose_score: sum")
            v = _to_numpy(self.encoder.encode(texts))
            self.compose_encoded += len(texts)
            if v.shape[1] != q_rows.shape[1]:
                raise ConfigError(f"decoder 'phrasebank': the encoder gives {v.shape[1]} dims but the queries have "
                                  f"{q_rows.shape[1]}; 'compose' needs them equal")
        return np.einsum("nd,nd->n", normalize_rows(v), q_rows)

    def _rows_compose(self, q: np.ndarray, k: int) -> list[list[PhraseCandidate]]:
        """Beam search per query over phrase sequences from the top ``compose_pool`` phrases;
        every sequence is scored by re-embedding its text. All rows of a step share one encoder call."""
        cfg = self.cfg
        width = 1 if cfg.compose_search == "greedy" else cfg.beam_width
        base_scores, base_ids = self.bank.search(q, cfg.compose_pool)
        b = len(q)
        pools = [[int(j) for j in row if j >= 0] for row in base_ids]
        confident = [self._confident(float(s[0])) for s in base_scores]
        penalty = cfg.compose_length_penalty
        # per row: text → (penalised score, cosine, sequence)
        scored: list[dict[str, tuple[float, float, tuple[int, ...]]]] = [{} for _ in range(b)]
        render_cache: dict[tuple[int, ...], str] = {}

        def render(seq: tuple[int, ...]) -> str:
            if seq not in render_cache:
                render_cache[seq] = self._clean(join_phrases([self.texts[j] for j in seq]))
            return render_cache[seq]

        def score(expansions: list[list[tuple[int, ...]]]) -> list[list[tuple[float, tuple[int, ...]]]]:
            flat_rows, flat_texts, flat_seqs, owners = [], [], [], []
            for r, seqs in enumerate(expansions):
                for s in seqs:
                    flat_rows.append(r)
                    flat_texts.append(render(s))
                    flat_seqs.append(s)
                    owners.append(r)
            out: list[list[tuple[float, tuple[int, ...]]]] = [[] for _ in range(b)]
            if not flat_texts:
                return out
            sims = self._score_texts(q[flat_rows], flat_texts, flat_seqs)
            for r, s, v in zip(owners, flat_seqs, sims):
                pen = float(v) - penalty * (len(s) - 1)
                out[r].append((pen, s))
                text = render(s)
                if text not in scored[r] or scored[r][text][0] < pen:
                    scored[r][text] = (pen, float(v), s)
            return out

        # step 1: single phrases (re-embedded too, so every score is on the same scale)
        results = score([[(j,) for j in pools[r]] if confident[r] else [] for r in range(b)])
        beams = [sorted(res, reverse=True)[:width] for res in results]
        best = [beams[r][0][0] if beams[r] else -np.inf for r in range(b)]
        active = [bool(beams[r]) for r in range(b)]
        for _ in range(cfg.max_phrases - 1):
            expansions = []
            for r in range(b):
                if not active[r]:
                    expansions.append([])
                    continue
                exp = {s + (j,) for _, s in beams[r] for j in pools[r] if j not in s}
                expansions.append(sorted(exp))
            if not any(expansions):
                break
            results = score(expansions)
            for r in range(b):
                if not active[r]:
                    continue
                new = sorted(results[r], reverse=True)[:width]
                if not new or new[0][0] <= best[r]:
                    active[r] = False
                    continue
                best[r] = new[0][0]
                beams[r] = new
            if not any(active):
                break

        rows = []
        for r in range(b):
            if not confident[r]:
                # no confident match: report the nearest single phrases, flagged, no composition
                rows.append([PhraseCandidate(self._clean(self.texts[int(j)]), float(s), False, (int(j),), float(s))
                             for s, j in zip(base_scores[r][:k], base_ids[r][:k]) if j >= 0])
                continue
            ranked = sorted(scored[r].items(), key=lambda kv: (-kv[1][0], len(kv[1][2]), kv[0]))
            rows.append([PhraseCandidate(t, pen, True, seq, cos) for t, (pen, cos, seq) in ranked[:k]])
        return rows

    # -- public API ----------------------------------------------------------------------------
    def candidates(self, emb: Any, k: int | None = None) -> list[list[PhraseCandidate]]:
        """``[B, D]`` → per row up to ``k`` :class:`PhraseCandidate` (text, score, confident, ids,
        cosine), best first; texts are post-processed like ``decode``'s, ``ids`` name the bank phrases. For ``mmr`` the order is the MMR order and ``score`` the cosine relevance."""
        q = self._queries(emb)
        k = int(k or self.cfg.k)
        method = self.cfg.method
        if method == "best":
            compute = lambda x: self._rows_best(x, k)  # noqa: E731
        elif method == "mmr":
            compute = lambda x: self._rows_mmr(x, k)  # noqa: E731
        else:
            compute = lambda x: self._rows_compose(x, k)  # noqa: E731
        rows = self._cached(q, ("cand", k), compute)
        return [list(r) for r in rows]

    def decode(self, emb: Any) -> list[str]:
        """``[B, D]`` → B strings; ``""`` where no phrase reaches ``min_score``."""
        q = self._queries(emb)
        method = self.cfg.method
        if method == "compose":
            # through candidates(k=cfg.k): a following candidates() call (Pipeline.answer) is a cache hit
            return [r[0].text if r and r[0].confident else NO_MATCH for r in self.candidates(q, self.cfg.k)]

        def compute(x: np.ndarray) -> list[str]:
            if method == "best":
                return [r[0].text if r and r[0].confident else NO_MATCH for r in self._rows_best(x, 1)]
            return [self._mmr_answer(r) for r in self._rows_mmr(x, self.cfg.max_phrases)]

        return self._cached(q, ("decode",), compute)

    def decode_batch(self, embs: Any, batch_size: int | None = None) -> list[str]:
        """Decode many queries, ``batch_size`` (default ``cfg.batch_size``) per FAISS call."""
        q = _to_numpy(embs)
        bs = batch_size or self.cfg.batch_size
        out: list[str] = []
        for i in range(0, len(q), bs):
            out.extend(self.decode(q[i:i + bs]))
        return out

    # -- files -------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> list[Path]:
        """Write ``index.faiss`` (faiss.write_index), ``texts.jsonl`` and ``meta.json``."""
        directory = Path(directory)
        self._ensure_built()
        directory.mkdir(parents=True, exist_ok=True)
        index_path = self.bank.save(directory)
        atomic_write_text(directory / TEXTS_FILE,
                          "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in self.texts))
        atomic_write_json(directory / META_FILE, {**self.meta, "format": "cellnet-phrasebank", "version": 1})
        return [index_path, directory / TEXTS_FILE, directory / META_FILE]

    def load(self, directory: str | Path) -> None:
        """Read a saved bank; a missing file or an index whose size disagrees with the texts raises
        :class:`CheckpointError` naming the files."""
        directory = Path(directory)
        meta_path, texts_path = directory / META_FILE, directory / TEXTS_FILE
        for p in (texts_path, directory / INDEX_FILE):
            if not p.exists():
                raise CheckpointError(f"{p}: missing (phrase bank files: {INDEX_FILE}, {TEXTS_FILE}, {META_FILE})")
        meta: dict[str, Any] = read_json(meta_path, "") if meta_path.exists() else {}
        texts = []
        for no, line in enumerate(texts_path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                texts.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise CheckpointError(f"{texts_path}: line {no}: damaged (expected {{\"text\": ...}})") from None
        bank = PhraseIndex(IndexParams.from_config(self.cfg))
        bank.load(directory, meta)
        if bank.ntotal != len(texts):
            raise CheckpointError(
                f"{directory}: {INDEX_FILE} holds {bank.ntotal} vectors but {TEXTS_FILE} has {len(texts)} texts; "
                "the phrase bank is damaged or its files come from different saves")
        if len(set(texts)) != len(texts):
            raise CheckpointError(f"{texts_path}: duplicate texts; the phrase bank is damaged")
        self.bank, self.texts = bank, texts
        self._ids = {t: i for i, t in enumerate(texts)}
        self.clear_cache()


def build_phrasebank(cfg: PhrasebankConfig, ctx: Any) -> PhrasebankDecoder:
    """Factory: keeps a reference to ``ctx.encoder`` (texts_file, compose) and ``ctx.embedding_dim``."""
    encoder = getattr(ctx, "encoder", None) if ctx is not None else None
    dim = getattr(ctx, "embedding_dim", None) if ctx is not None else None
    if cfg.method == "compose" and cfg.compose_score == "encoder" and encoder is not None and dim is not None \
            and encoder.dim != dim:
        raise ConfigError(f"decoder.method: 'compose' scores with the teacher, which gives {encoder.dim} dims, but "
                          f"the decoder receives {dim}-dim embeddings; use compose_score: sum or a reshaper whose "
                          "out_dim equals the teacher's")
    return PhrasebankDecoder(cfg, encoder=encoder, embedding_dim=dim)
