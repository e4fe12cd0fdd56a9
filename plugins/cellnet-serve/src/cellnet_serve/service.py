"""The model side of the service: loading the run in the background and running one batch.

:class:`Service` owns the pipeline (loaded by a background thread so the server answers
``/healthz`` at once and ``/readyz`` once the run is loaded), the :class:`~cellnet_core.conversations.ConversationStore`
and :meth:`Service.run_batch`, which the :class:`~cellnet_serve.batcher.MicroBatcher` calls with
the jobs of one batch: every job of a kind goes through one pipeline call.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from cellnet_core.conversations import ConversationStore, answer_in_conversations

from cellnet_serve.batcher import Job
from cellnet_serve.settings import ServeSettings

if TYPE_CHECKING:
    from cellnet_core.pipeline import Pipeline

log = logging.getLogger("cellnet.serve")


def run_loader(run_dir: str | Path, device: str | None = None) -> Callable[[], "Pipeline"]:
    """A loader for :class:`Service`: the run at ``run_dir`` through :func:`cellnet_core.api.load_run`."""

    def load() -> "Pipeline":
        from cellnet_core import api

        return api.load_run(run_dir, device=device, warn=False)

    return load


class Service:
    """A run being served: ``loader()`` builds the pipeline (in a background thread after
    :meth:`start_loading`); ``ready`` once it has; ``error`` holds the one-line reason a load failed."""

    def __init__(self, loader: Callable[[], "Pipeline"], settings: ServeSettings | None = None, *,
                 name: str = "run"):
        self.loader = loader
        self.settings = settings or ServeSettings()
        self.name = name
        self.pipe: "Pipeline | None" = None
        self.error: str | None = None
        self.loaded = threading.Event()
        self.load_seconds: float | None = None
        self.conversations = ConversationStore(self.settings.conversations)
        self._thread: threading.Thread | None = None

    # -- loading ------------------------------------------------------------------------------
    def start_loading(self) -> None:
        """Load the run in a background thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._load, name="cellnet-serve-load", daemon=True)
            self._thread.start()

    def _load(self) -> None:
        t0 = time.perf_counter()
        try:
            pipe = self.loader()
            pipe.eval()
            if not self.settings.cache_embeddings and hasattr(pipe.encoder, "enabled"):
                pipe.encoder.enabled = False  # questions go straight to the teacher, nothing kept
            self.pipe = pipe
            self.load_seconds = time.perf_counter() - t0
            log.info("loaded %s in %.1fs", self.name, self.load_seconds)
        except Exception as exc:  # noqa: BLE001 - reported by /readyz and in the log
            self.error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.error("loading %s failed: %s", self.name, self.error)
        finally:
            self.loaded.set()

    @property
    def ready(self) -> bool:
        """True once the run is loaded."""
        return self.pipe is not None

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the load finished (either way); True when the run is ready."""
        self.loaded.wait(timeout)
        return self.ready

    def describe(self) -> dict[str, Any]:
        """What ``/readyz`` reports about the run."""
        out: dict[str, Any] = {"run": self.name, "ready": self.ready}
        if self.error:
            out["error"] = self.error
        if self.pipe is not None:
            cfg = self.pipe.config
            out.update({"encoder": cfg.encoder.name, "reshaper": cfg.reshaper.name, "core": cfg.core.name,
                        "decoder": cfg.decoder.name, "embedding_dim": int(self.pipe.encoder.dim),
                        "takes_context": bool(getattr(self.pipe.reshaper, "context_slots", None)),
                        "load_seconds": round(self.load_seconds or 0.0, 2)})
        return out

    # -- one batch ----------------------------------------------------------------------------
    def run_batch(self, jobs: Sequence[Job]) -> list[Any]:
        """Results for each job (a list per job, one entry per item; an exception object for a job
        that failed), every job of one kind in one pipeline call."""
        import torch

        assert self.pipe is not None
        results: list[Any] = [None] * len(jobs)
        by_kind: dict[str, list[int]] = {}
        for i, j in enumerate(jobs):
            by_kind.setdefault(j.kind, []).append(i)
        with torch.no_grad():
            for kind, idx in by_kind.items():
                group = [jobs[i] for i in idx]
                try:
                    out = getattr(self, f"_batch_{kind}")(group)
                except Exception as exc:  # noqa: BLE001 - a failed group fails its jobs only
                    if len(group) == 1:
                        out = [exc]
                    else:  # one bad job must not fail its neighbours: run each alone
                        out = []
                        for j in group:
                            try:
                                out.extend(getattr(self, f"_batch_{kind}")([j]))
                            except Exception as one:  # noqa: BLE001
                                out.append(one)
                for i, r in zip(idx, out):
                    results[i] = r
        return results

    @staticmethod
    def _split(flat: list[Any], jobs: Sequence[Job]) -> list[list[Any]]:
        out, at = [], 0
        for j in jobs:
            out.append(flat[at:at + j.size])
            at += j.size
        return out

    def _batch_answer(self, jobs: Sequence[Job]) -> list[list[dict[str, Any]]]:
        pipe = self.pipe
        assert pipe is not None
        texts = [t for j in jobs for t in j.items]
        conversations = []
        for j in jobs:
            sid = j.params.get("session_id")
            conversation = self.conversations.get(sid) if sid else None
            conversations.extend([conversation] * j.size)
        k = max(int(j.params.get("k", 5)) for j in jobs)
        answers = answer_in_conversations(pipe, texts, conversations, k=k, settings=self.settings.conversations)
        want_base = [i for i, t in enumerate(texts) if self._job_of(jobs, i).params.get("baseline")]
        base: dict[int, dict[str, Any]] = {}
        if want_base:
            emb = pipe.encode([texts[i] for i in want_base])
            for i, row in zip(want_base, self._decode_rows(emb, 1)):
                base[i] = {"text": row["text"], "score": row["score"]}
        rows = []
        for i, a in enumerate(answers):
            kk = int(self._job_of(jobs, i).params.get("k", 5))
            rows.append({"question": a.question, "answer": a.text, "score": float(a.score),
                         "candidates": a.candidates[:kk], "steps": a.steps, "baseline": base.get(i)})
        return self._split(rows, jobs)

    @staticmethod
    def _job_of(jobs: Sequence[Job], i: int) -> Job:
        for j in jobs:
            if i < j.size:
                return j
            i -= j.size
        raise IndexError(i)

    def _decode_rows(self, emb: Any, k: int) -> list[dict[str, Any]]:
        """One ``{"text", "score", "candidates"}`` per row of ``emb`` through the decoder."""
        import torch

        pipe = self.pipe
        assert pipe is not None
        emb = emb.detach().float().cpu()
        texts = pipe.decoder.decode(emb)
        if hasattr(pipe.decoder, "candidates"):
            cands = pipe.decoder.candidates(emb, k)
        else:
            cands = [[] for _ in texts]
        rows = []
        for i, t in enumerate(texts):
            cand = [{"text": c.text, "score": float(c.score)} for c in cands[i]]
            score = next((c["score"] for c in cand if c["text"] == t), None)
            if score is None:
                score = float(torch.nn.functional.cosine_similarity(
                    pipe.encode([t]).float(), emb[i:i + 1]).item()) if t else 0.0
            rows.append({"text": t, "score": score, "candidates": cand})
        return rows

    def _batch_embed(self, jobs: Sequence[Job]) -> list[list[list[float]]]:
        assert self.pipe is not None
        emb = self.pipe.encode([t for j in jobs for t in j.items]).float().cpu()
        return self._split(emb.tolist(), jobs)

    def _as_embeddings(self, jobs: Sequence[Job], dim: int, what: str):
        import torch

        from cellnet_core.errors import DataError

        for j in jobs:
            for i, row in enumerate(j.items):
                if len(row) != dim:
                    raise DataError(f"{what}[{i}]: {len(row)} numbers; this run's {what} have {dim}")
        return torch.tensor([row for j in jobs for row in j.items], dtype=torch.float32)

    def _batch_think(self, jobs: Sequence[Job]) -> list[list[list[float]]]:
        pipe = self.pipe
        assert pipe is not None
        text_jobs = [j for j in jobs if j.params.get("input") == "texts"]
        emb_jobs = [j for j in jobs if j.params.get("input") != "texts"]
        out: dict[int, list[list[float]]] = {}
        if text_jobs:
            texts = [t for j in text_jobs for t in j.items]
            # a context run takes [k·D]: each text as the latest turn, no earlier ones (zeros in front)
            x = pipe.context_input(texts, [[] for _ in texts]) if getattr(pipe.reshaper, "context_slots", None) \
                else pipe.encode(texts)
            res = pipe.think(x).float().cpu().tolist()
            for j, r in zip(text_jobs, self._split(res, text_jobs)):
                out[id(j)] = r
        if emb_jobs:
            dim = self.think_input_dim()
            x = self._as_embeddings(emb_jobs, dim, "embeddings")
            res = pipe.think(x).float().cpu().tolist()
            for j, r in zip(emb_jobs, self._split(res, emb_jobs)):
                out[id(j)] = r
        return [out[id(j)] for j in jobs]

    def think_input_dim(self) -> int:
        """The width ``think`` takes: the teacher's D, times the turns for a context run."""
        assert self.pipe is not None
        slots = getattr(self.pipe.reshaper, "context_slots", None) or 1
        return int(self.pipe.encoder.dim) * int(slots)

    def output_dim(self) -> int:
        """The width of ``think``'s output (what ``decode`` takes)."""
        assert self.pipe is not None
        return int(getattr(self.pipe.reshaper, "out_dim", None) or self.pipe.encoder.dim)

    def _batch_decode(self, jobs: Sequence[Job]) -> list[list[dict[str, Any]]]:
        x = self._as_embeddings(jobs, self.output_dim(), "embeddings")
        k = max(int(j.params.get("k", 5)) for j in jobs)
        rows = self._decode_rows(x, k)
        for j_rows, j in zip(self._split(rows, jobs), jobs):
            for r in j_rows:
                r["candidates"] = r["candidates"][: int(j.params.get("k", 5))]
        return self._split(rows, jobs)
