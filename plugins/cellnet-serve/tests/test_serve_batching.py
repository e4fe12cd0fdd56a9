"""Micro-batching: concurrent requests share forward passes and get the answers they get alone; a
full queue refuses with 503 and Retry-After; a slow answer times out with 504."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

QUESTIONS = ["hello", "good morning", "good night", "thank you", "how are you", "see you later",
             "good evening", "nice to meet you"]


class Recording:
    """Wraps ``Service.run_batch``: records the requests per batch; while ``hold`` is clear, the
    model waits (a slow forward pass)."""

    def __init__(self, service):
        self.inner = service.run_batch
        self.sizes: list[int] = []
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        service.run_batch = self

    def __call__(self, jobs):
        self.entered.set()
        self.hold.wait(30)
        self.sizes.append(len(jobs))
        return self.inner(jobs)


@pytest.fixture
def make_recorded(tiny_pipe):
    from fastapi.testclient import TestClient

    from cellnet_serve import ServeSettings, Service, create_app

    made = []

    def make(**settings):
        service = Service(lambda: tiny_pipe, ServeSettings(**settings), name="tiny")
        rec = Recording(service)  # before create_app: the batcher calls what run_batch is then
        client = TestClient(create_app(service))
        client.__enter__()
        made.append(client)
        assert service.wait_ready(30)
        return client, rec

    yield make
    for c in made:
        c.__exit__(None, None, None)


def _post(client, body):
    r = client.post("/v1/answer", json=body)
    return r.status_code, r.json(), r.headers


def test_concurrent_requests_share_a_batch_and_match_one_at_a_time(make_recorded):
    client, rec = make_recorded(max_batch=64, max_wait_ms=300)
    alone = [_post(client, {"question": q, "k": 3})[1]["answers"][0] for q in QUESTIONS]
    assert rec.sizes == [1] * len(QUESTIONS)
    rec.sizes.clear()
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        together = list(pool.map(lambda q: _post(client, {"question": q, "k": 3}), QUESTIONS))
    assert all(status == 200 for status, _, _ in together)
    assert sum(rec.sizes) == len(QUESTIONS) and max(rec.sizes) > 1, rec.sizes
    assert len(rec.sizes) < len(QUESTIONS)
    for a, (_, body, _) in zip(alone, together):
        b = body["answers"][0]
        assert b["answer"] == a["answer"] and b["score"] == pytest.approx(a["score"], abs=1e-5)
        assert [c["text"] for c in b["candidates"]] == [c["text"] for c in a["candidates"]]
    metrics = client.get("/metrics").text
    assert "cellnet_batch_requests_count" in metrics


def test_mixed_kinds_in_one_batch(make_recorded):
    client, rec = make_recorded(max_batch=64, max_wait_ms=300)
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(client.post, "/v1/answer", json={"question": "hello"}),
                   pool.submit(client.post, "/v1/embed", json={"texts": ["hello"]}),
                   pool.submit(client.post, "/v1/think", json={"texts": ["hello"]})]
        results = [f.result() for f in futures]
    assert [r.status_code for r in results] == [200, 200, 200]
    assert max(rec.sizes) > 1


def test_full_queue_gets_503_with_retry_after_and_loses_nothing(make_recorded):
    client, rec = make_recorded(max_batch=1, max_wait_ms=0, max_queue=2)
    rec.hold.clear()  # the model is busy: the first request is taken, the next two wait in the queue
    with ThreadPoolExecutor(6) as pool:
        first = pool.submit(_post, client, {"question": "hello"})
        assert rec.entered.wait(10)
        queued = [pool.submit(_post, client, {"question": q}) for q in ("good night", "thank you")]
        deadline = time.time() + 10
        while client.app.state.batcher.depth < 2 and time.time() < deadline:
            time.sleep(0.01)
        t0 = time.perf_counter()
        status, body, headers = _post(client, {"question": "one too many"})
        refused_in = time.perf_counter() - t0
        assert status == 503 and body["detail"].startswith("busy: 2 requests are waiting")
        assert headers["Retry-After"] == "1" and refused_in < 2  # refused at once, no hang
        rec.hold.set()
        done = [first.result()] + [f.result() for f in queued]
    assert [d[0] for d in done] == [200, 200, 200]
    assert 'cellnet_rejected_total{reason="queue_full"} 1.0' in client.get("/metrics").text


def test_slow_answer_times_out_with_504(make_recorded):
    client, rec = make_recorded(timeout=0.3)
    rec.hold.clear()
    try:
        status, body, _ = _post(client, {"question": "hello"})
        assert status == 504 and body["detail"] == "no answer within 0.3 s"
    finally:
        rec.hold.set()
    assert _post(client, {"question": "hello"})[0] == 200  # the service goes on


def test_a_failing_part_is_500_with_one_line_and_the_service_goes_on(make_recorded):
    client, rec = make_recorded()
    inner = rec.inner

    def broken(jobs):
        if any(j.items == ["boom"] for j in jobs):
            raise RuntimeError("lattice exploded\nsecond line")
        return inner(jobs)

    rec.inner = broken
    status, body, _ = _post(client, {"question": "boom"})
    assert status == 500 and body["detail"] == "internal error: RuntimeError: lattice exploded"
    assert _post(client, {"question": "hello"})[0] == 200
