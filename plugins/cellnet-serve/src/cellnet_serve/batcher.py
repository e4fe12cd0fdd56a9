"""Micro-batching: requests that arrive close together share one forward pass.

Requests are :class:`Job`\\ s in a bounded :class:`asyncio.Queue`. One worker task takes the first
waiting job, then keeps gathering jobs until the batch holds ``max_batch`` texts or ``max_wait_ms``
have passed since it took the first, and hands the batch to ``run_batch`` in a single worker thread
(so the event loop keeps accepting requests while the model runs, and batches run one at a time).
A full queue refuses at once (:class:`QueueFull`, a 503 with ``Retry-After``); a job whose request
gave up waiting (timeout, client gone) is skipped. :meth:`MicroBatcher.stop` lets every job already
queued finish before the worker exits (SIGTERM drains).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


class QueueFull(Exception):
    """The queue holds ``max_queue`` requests already."""


class Stopping(Exception):
    """The service is shutting down and takes no new requests."""


@dataclass
class Job:
    """One request's work: ``kind`` (answer, embed, think, decode), its ``items`` (texts or
    embeddings), the request's ``params``; ``future`` receives the list of results, one per item."""

    kind: str
    items: list[Any]
    params: dict[str, Any] = field(default_factory=dict)
    future: asyncio.Future | None = None
    queued_at: float = field(default_factory=time.perf_counter)

    @property
    def size(self) -> int:
        """Texts (or embeddings) in the job: what it adds to a batch."""
        return len(self.items)


_STOP = object()


class MicroBatcher:
    """Gathers :class:`Job` s into batches for ``run_batch(jobs) -> list[results per job]``.

    ``on_batch(n_texts, n_jobs)`` (optional) is told the size of every batch run (metrics).
    """

    def __init__(self, run_batch: Callable[[Sequence[Job]], list[list[Any]]], *, max_batch: int = 32,
                 max_wait_ms: float = 5.0, max_queue: int = 256,
                 on_batch: Callable[[int, int], None] | None = None):
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cellnet-serve-model")
        self.stopping = False
        self.batches = 0
        self.in_flight = 0  # jobs queued or being run

    def start(self) -> None:
        """Start the worker task on the running event loop."""
        self.queue = asyncio.Queue(maxsize=self.max_queue)
        self.worker = asyncio.get_running_loop().create_task(self._work(), name="cellnet-serve-batcher")

    @property
    def depth(self) -> int:
        """Requests waiting for a batch."""
        return self.queue.qsize() if self.queue is not None else 0

    async def submit(self, job: Job, timeout: float) -> list[Any]:
        """Queue ``job`` and wait at most ``timeout`` seconds for its results.

        Raises :class:`QueueFull` at once when the queue is full, :class:`Stopping` after
        :meth:`stop`, :class:`asyncio.TimeoutError` when the answer takes longer than ``timeout``,
        and whatever ``run_batch`` raised for this job."""
        if self.stopping or self.queue is None:
            raise Stopping()
        job.future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFull() from None
        self.in_flight += 1
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout)
        finally:
            self.in_flight -= 1
            if not job.future.done():
                job.future.cancel()  # the worker skips it

    async def _gather(self, first: Job) -> tuple[list[Job], bool]:
        batch, n, stop = [first], first.size, False
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while n < self.max_batch:
            assert self.queue is not None
            try:
                job = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), left)
                except asyncio.TimeoutError:
                    break
            if job is _STOP:
                stop = True
                break
            batch.append(job)
            n += job.size
        return batch, stop

    async def _work(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        stop = False
        while not stop:
            first = await self.queue.get()
            if first is _STOP:
                break
            batch, stop = await self._gather(first)
            live = [j for j in batch if j.future is not None and not j.future.done()]
            if not live:
                continue
            self.batches += 1
            if self.on_batch is not None:
                self.on_batch(sum(j.size for j in live), len(live))
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, live)
            except Exception as exc:  # noqa: BLE001 - every job of the batch gets the error
                for j in live:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            for j, r in zip(live, results):
                if j.future.done():
                    continue
                if isinstance(r, BaseException):
                    j.future.set_exception(r)
                else:
                    j.future.set_result(r)

    async def stop(self) -> None:
        """Refuse new jobs, let the queued ones finish, stop the worker."""
        self.stopping = True
        if self.queue is not None and self.worker is not None and not self.worker.done():
            await self.queue.put(_STOP)
            await self.worker
        self.executor.shutdown(wait=True)
