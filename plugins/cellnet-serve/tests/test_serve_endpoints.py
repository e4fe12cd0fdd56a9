"""Every endpoint of ``cellnet serve`` through an in-process client, and its refusals (401, 413, 422, 503)."""

from __future__ import annotations

import threading

import pytest

from cellnet_core.errors import ConfigError


def test_answer_one_question_with_candidates_and_baseline(client, tiny_pipe):
    r = client.post("/v1/answer", json={"question": "good morning", "k": 3, "baseline": True})
    assert r.status_code == 200, r.text
    (row,) = r.json()["answers"]
    direct = tiny_pipe.answer(["good morning"], k=3)[0]
    assert row["question"] == "good morning"
    assert row["answer"] == direct.text and row["score"] == pytest.approx(direct.score)
    assert [c["text"] for c in row["candidates"]] == [c["text"] for c in direct.candidates]
    assert len(row["candidates"]) == 3
    base = tiny_pipe.decoder.decode(tiny_pipe.encode(["good morning"]))[0]
    assert row["baseline"]["text"] == base


def test_answer_a_list(client, tiny_pipe):
    qs = ["hello", "good night", "thank you"]
    r = client.post("/v1/answer", json={"question": qs, "k": 2})
    assert r.status_code == 200, r.text
    rows = r.json()["answers"]
    assert [x["question"] for x in rows] == qs
    assert [x["answer"] for x in rows] == [a.text for a in tiny_pipe.answer(qs, k=2)]
    assert all(len(x["candidates"]) == 2 and "baseline" not in x for x in rows)


def test_embed_think_decode_chain_equals_answer(client, tiny_pipe):
    emb = client.post("/v1/embed", json={"texts": ["hello", "good night"]})
    assert emb.status_code == 200, emb.text
    body = emb.json()
    assert body["dim"] == tiny_pipe.encoder.dim and len(body["embeddings"]) == 2
    want = tiny_pipe.encode(["hello"])[0].tolist()
    assert body["embeddings"][0] == pytest.approx(want, abs=1e-6)
    by_text = client.post("/v1/think", json={"texts": ["hello", "good night"]}).json()
    by_emb = client.post("/v1/think", json={"embeddings": body["embeddings"]}).json()
    assert by_text["embeddings"][1] == pytest.approx(by_emb["embeddings"][1], abs=1e-6)
    dec = client.post("/v1/decode", json={"embeddings": by_text["embeddings"], "k": 2})
    assert dec.status_code == 200, dec.text
    answers = client.post("/v1/answer", json={"question": ["hello", "good night"]}).json()["answers"]
    assert [d["text"] for d in dec.json()["decoded"]] == [a["answer"] for a in answers]
    assert all(len(d["candidates"]) == 2 for d in dec.json()["decoded"])


def test_think_and_decode_check_widths(client):
    r = client.post("/v1/decode", json={"embeddings": [[0.1, 0.2]]})
    assert r.status_code == 422 and "embeddings[0]: 2 numbers" in r.json()["detail"]
    r = client.post("/v1/think", json={})
    assert r.status_code == 422 and r.json()["detail"] == "give either texts or embeddings"


def test_health_metrics_docs_and_page(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["decoder"] == "nearest"
    client.post("/v1/answer", json={"question": "hello"})
    text = client.get("/metrics").text
    for name in ("cellnet_requests_total", "cellnet_request_seconds_bucket", "cellnet_batch_texts_bucket",
                 "cellnet_queue_depth", "cellnet_batches_total"):
        assert name in text, name
    assert 'cellnet_requests_total{method="POST",route="/v1/answer",status="200"} 1.0' in text
    spec = client.get("/openapi.json").json()
    assert {"/v1/answer", "/v1/embed", "/v1/think", "/v1/decode", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "/static/chat.js" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from elsewhere
    assert client.get("/static/chat.js").status_code == 200


def test_bad_json_and_bad_fields_get_422_with_a_readable_line(client):
    r = client.post("/v1/answer", content=b'{"question": ', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"].startswith("body: not valid JSON")
    r = client.post("/v1/answer", json={"questoin": "hi", "k": 0})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "body.question: Field required" in detail and "body.questoin: Extra inputs are not permitted" in detail
    assert "body.k: Input should be greater than or equal to 1" in detail
    assert r.json()["errors"]  # the field errors, machine-readable
    r = client.post("/v1/answer", json={"question": ["hi", "   "]})
    assert r.status_code == 422 and r.json()["detail"] == "question[1]: empty text"
    r = client.post("/v1/answer", json={"question": "hi", "session_id": "a b"})
    assert r.status_code == 422 and "body.session_id" in r.json()["detail"]


def test_oversize_gets_413(make_client):
    c = make_client(max_body_bytes=300, max_texts=2, max_chars=40, max_k=10)
    r = c.post("/v1/answer", json={"question": "x" * 400})
    assert r.status_code == 413 and r.json()["detail"] == "request body over 300 bytes"

    def chunks():  # no Content-Length: the body is counted as it arrives
        for _ in range(10):
            yield b'{"question": "' + b"y" * 50

    r = c.post("/v1/answer", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = c.post("/v1/answer", json={"question": ["a", "b", "c"]})
    assert r.status_code == 413 and "at most 2 per request" in r.json()["detail"]
    r = c.post("/v1/answer", json={"question": "z" * 41})
    assert r.status_code == 413 and "41 characters; at most 40" in r.json()["detail"]
    r = c.post("/v1/answer", json={"question": "hi", "k": 11})
    assert r.status_code == 413
    assert c.post("/v1/answer", json={"question": "hi"}).status_code == 200


def test_api_key_checked_on_every_request(make_client):
    c = make_client(api_key="s3cret")
    for method, path, body in (("post", "/v1/answer", {"question": "hi"}), ("post", "/v1/embed", {"texts": ["a"]}),
                               ("get", "/metrics", None), ("get", "/readyz", None), ("get", "/healthz", None)):
        r = getattr(c, method)(path, json=body) if body else getattr(c, method)(path)
        assert r.status_code == 401 and r.json()["detail"].startswith("missing API key"), path
        r = getattr(c, method)(path, json=body, headers={"X-API-Key": "wrong"}) if body else \
            getattr(c, method)(path, headers={"X-API-Key": "wrong"})
        assert r.status_code == 401 and r.json()["detail"].startswith("wrong API key"), path
    assert c.post("/v1/answer", json={"question": "hi"}, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert c.get("/metrics", headers={"X-API-Key": "s3cret"}).status_code == 200
    assert 'route="/v1/answer",status="401"' in c.get("/metrics", headers={"X-API-Key": "s3cret"}).text
    assert c.get("/").status_code == 200  # the page itself holds no data; it asks for the key
    spec = c.get("/openapi.json").json()  # the API page offers to send the key
    assert spec["security"] == [{"bearer": []}] and spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_non_loopback_needs_a_key():
    from cellnet_serve import ServeSettings

    with pytest.raises(ConfigError, match="binding 0.0.0.0 .* needs an API key: give --api-key KEY or set CELLNET_API_KEY"):
        ServeSettings(host="0.0.0.0")
    assert ServeSettings(host="0.0.0.0", api_key="k").api_key == "k"
    assert ServeSettings(host="::1").host == "::1" and ServeSettings(host="localhost")


def test_readiness_before_and_after_load(make_client):
    gate = threading.Event()
    c = make_client(gate=gate)
    r = c.get("/readyz")
    assert r.status_code == 503 and r.json()["ready"] is False and r.headers["Retry-After"]
    assert c.get("/healthz").status_code == 200
    r = c.post("/v1/answer", json={"question": "hello"})
    assert r.status_code == 503 and "still loading" in r.json()["detail"] and r.headers["Retry-After"]
    gate.set()
    assert c.service.wait_ready(30)
    assert c.get("/readyz").status_code == 200
    assert c.post("/v1/answer", json={"question": "hello"}).status_code == 200


def test_a_failed_load_is_reported(tiny_pipe):
    from fastapi.testclient import TestClient

    from cellnet_core.errors import CheckpointError
    from cellnet_serve import Service, create_app

    def broken():
        raise CheckpointError("runs/x/weights.safetensors: damaged (sha256 differs from manifest.json)")

    service = Service(broken, name="runs/x")
    with TestClient(create_app(service)) as c:
        service.wait_ready(10)
        r = c.get("/readyz")
        assert r.status_code == 503 and "damaged" in r.json()["error"]
        r = c.post("/v1/answer", json={"question": "hi"})
        assert r.status_code == 503 and r.json()["detail"].startswith("the run failed to load: runs/x/weights")


def test_repeat_penalty_changes_a_repeated_answer(make_client):
    from cellnet_core.conversations import ConversationSettings

    c = make_client(conversations=ConversationSettings(penalty=1.0))
    ask = {"question": "good morning", "k": 3, "session_id": "conv-1"}
    first = c.post("/v1/answer", json=ask).json()["answers"][0]
    second = c.post("/v1/answer", json=ask).json()["answers"][0]
    assert first["answer"] and second["answer"] != first["answer"]
    # the repeated answer fell below the others (out of the top 3 with a penalty of 1)
    assert first["answer"] not in [x["text"] for x in second["candidates"]]
    wide = c.post("/v1/answer", json={**ask, "k": 20}).json()["answers"][0]
    marked = [x for x in wide["candidates"] if x.get("penalised")]
    assert {x["text"] for x in marked} == {first["answer"], second["answer"]}
    assert {x["text"] for x in wide["candidates"][-2:]} == {first["answer"], second["answer"]}
    assert next(x["score"] for x in marked if x["text"] == first["answer"]) == pytest.approx(first["score"])
    # outside the conversation (or in another one) the answer is the same every time
    alone = [c.post("/v1/answer", json={"question": "good morning"}).json()["answers"][0]["answer"] for _ in range(2)]
    assert alone == [first["answer"]] * 2
    other = c.post("/v1/answer", json={**ask, "session_id": "conv-2"}).json()["answers"][0]
    assert other["answer"] == first["answer"]
    assert c.get("/readyz").json()["conversations"] == 2


def test_no_penalty_keeps_the_answer(make_client):
    from cellnet_core.conversations import ConversationSettings

    c = make_client(conversations=ConversationSettings(penalty=0.0))
    ask = {"question": "good morning", "session_id": "conv"}
    answers = [c.post("/v1/answer", json=ask).json()["answers"][0]["answer"] for _ in range(2)]
    assert answers[0] == answers[1]


def test_a_context_run_gets_the_conversation_turns(tmp_path, monkeypatch):
    """A run whose reshaper takes 3 turns (context-planes) answers a question in a conversation as
    Pipeline.answer does with the conversation's turns as context."""
    pytest.importorskip("cellnet_lattice")
    import torch
    from fastapi.testclient import TestClient

    from cellnet_core import api
    from cellnet_core.pipeline import Pipeline
    from cellnet_serve import ServeSettings, Service, create_app

    monkeypatch.setenv("CELLNET_CACHE_DIR", str(tmp_path / "cache"))
    plugins = api.load_plugins()
    config = api.load_config({
        "data": {"name": "greetings"}, "encoder": {"name": "hashing", "dim": 48},
        "reshaper": {"name": "context-planes", "shape": [4, 4, 3], "channels": 3, "slots": 3, "adapter": "exact"},
        "core": {"name": "lattice", "cell": {"name": "mlp", "hidden": 16}, "steps": 2},
        "decoder": {"name": "nearest"}, "training": {"name": "retrieval"}}, plugins=plugins)
    pipe = Pipeline.build(config, plugins.registry)
    texts = [p.answer for p in plugins.registry.build("dataset", config.data, None).pairs("train")]
    pipe.decoder.fit(texts, pipe.encode(texts))
    g = torch.Generator().manual_seed(0)  # an untrained lattice returns the last turn: make earlier ones count
    with torch.no_grad():
        for p in pipe.core.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    from cellnet_core.conversations import ConversationSettings

    service = Service(lambda: pipe, ServeSettings(conversations=ConversationSettings(penalty=0)), name="context")
    with TestClient(create_app(service)) as c:
        assert service.wait_ready(30) and c.get("/readyz").json()["takes_context"] is True
        first = c.post("/v1/answer", json={"question": "hello", "session_id": "t"}).json()["answers"][0]
        second = c.post("/v1/answer", json={"question": "good night", "session_id": "t", "k": 3}).json()["answers"][0]
        think = c.post("/v1/think", json={"texts": ["good night"]})
        assert think.status_code == 200 and think.json()["dim"] == 48
    with_turns = pipe.answer(["good night"], k=3, context=[["hello", first["answer"]]])[0]
    alone = pipe.answer(["good night"], k=3)[0]
    assert second["score"] == pytest.approx(with_turns.score, abs=1e-5)
    assert [x["text"] for x in second["candidates"]] == [x["text"] for x in with_turns.candidates]
    assert with_turns.score != pytest.approx(alone.score, abs=1e-4)  # the turns change the answer's score
