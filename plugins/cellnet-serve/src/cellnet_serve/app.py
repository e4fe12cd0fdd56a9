"""The HTTP application: endpoints, limits, API key, metrics and the chat page.

:func:`create_app` returns a FastAPI app for a :class:`~cellnet_serve.service.Service`. Its
lifespan starts loading the run in the background and the batch worker; at shutdown (SIGTERM
under uvicorn, after the server stopped taking connections and finished the open ones) the worker
drains what is still queued.

Status codes: 200; 401 missing or wrong API key; 413 a body, a list or a text over the limits;
422 a body that is not valid JSON or not the schema (one readable ``detail`` line, the field
errors under ``errors``); 503 the run is still loading or the queue is full (``Retry-After``);
504 the answer took longer than the request timeout; 500 a part of the run failed (logged with its
traceback; the answer says which exception).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from importlib import resources
from typing import Any, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from cellnet_core.errors import CellnetError

from cellnet_serve.batcher import Job, MicroBatcher, QueueFull, Stopping
from cellnet_serve.metrics import Metrics
from cellnet_serve.service import Service

log = logging.getLogger("cellnet.serve")

#: paths served without the API key: the chat page, its files and the API documentation (no data,
#: no model access; everything they do goes through the keyed endpoints)
OPEN_PATHS = ("/", "/favicon.ico", "/docs", "/openapi.json")
OPEN_PREFIXES = ("/static/", "/docs-assets/")
SESSION_ID = r"^[A-Za-z0-9_.:-]{1,128}$"


# -- request and response bodies ------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AnswerRequest(_Body):
    """Answer one question or a list of them."""

    question: Union[str, list[str]] = Field(description="a question, or a list of questions")
    k: int = Field(5, ge=1, description="candidates to return per question")
    session_id: str | None = Field(None, pattern=SESSION_ID,
                                   description="a conversation's id (any string of letters, digits, _.:-); its "
                                               "recent turns are kept, answers it just got are penalised and, for "
                                               "a run that takes context, its turns are passed as context")
    baseline: bool = Field(False, description="also return the answer of the question's own embedding (no lattice)")

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"question": "how are you?", "k": 3, "session_id": "demo", "baseline": True}]})


class Candidate(BaseModel):
    """One candidate answer with the decoder's score."""

    text: str
    score: float
    penalised: bool | None = Field(None, description="true when the conversation answered this just before")


class Baseline(BaseModel):
    """The answer of the question's own teacher embedding (no lattice), and its score."""

    text: str
    score: float


class AnswerRow(BaseModel):
    """The answer to one question."""

    question: str
    answer: str = Field(description="the answer (\"\" when the decoder has no confident one)")
    score: float = Field(description="the decoder's score of the answer (cosine to the lattice output for "
                                     "retrieval decoders)")
    candidates: list[Candidate]
    steps: int | None = Field(None, description="lattice steps run")
    baseline: Baseline | None = None


class AnswerResponse(BaseModel):
    """One row per question, in the order asked; the conversation's id when one was given."""

    answers: list[AnswerRow]
    session_id: str | None = None


class TextsRequest(_Body):
    """Texts to embed."""

    texts: list[str] = Field(description="the texts", min_length=1)


class EmbedResponse(BaseModel):
    """Teacher embeddings, one per text."""

    embeddings: list[list[float]] = Field(description="one teacher embedding [D] per text")
    dim: int


class ThinkRequest(_Body):
    """Texts, or teacher embeddings, through reshaper → lattice → reshaper."""

    texts: list[str] | None = Field(None, min_length=1, description="texts (encoded by the run's teacher first)")
    embeddings: list[list[float]] | None = Field(None, min_length=1,
                                                 description="teacher embeddings [D] (for a context run [k·D])")


class ThinkResponse(BaseModel):
    """The lattice's output embeddings, one per input."""

    embeddings: list[list[float]] = Field(description="one output embedding [D'] per input")
    dim: int


class DecodeRequest(_Body):
    """Output embeddings to text through the run's decoder."""

    embeddings: list[list[float]] = Field(min_length=1, description="embeddings [D'] (what /v1/think returns)")
    k: int = Field(5, ge=1, description="candidates per embedding (decoders that have them)")


class DecodeRow(BaseModel):
    """The decoded text of one embedding, its score and the candidates."""

    text: str
    score: float
    candidates: list[Candidate]


class DecodeResponse(BaseModel):
    """One row per embedding, in order."""

    decoded: list[DecodeRow]


class Problem(BaseModel):
    """An error: one readable line."""

    detail: str


# -- errors ---------------------------------------------------------------------------------------
class HTTPProblem(Exception):
    """An error answer: ``status``, one ``detail`` line, extra headers."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


def _problem(status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)


def _readable(errors: list[dict[str, Any]]) -> str:
    """Pydantic errors as one line: ``body.k: Input should be greater than or equal to 1; ...``."""
    parts = []
    for e in errors:
        if e.get("type") == "json_invalid":
            ctx = (e.get("ctx") or {}).get("error", "")
            parts.append(f"body: not valid JSON ({ctx})" if ctx else "body: not valid JSON")
            continue
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("str", "list[str]"))
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return "; ".join(dict.fromkeys(parts)) or "invalid request body"


# -- the gate: API key, body size, metrics ---------------------------------------------------------
class Gate:
    """ASGI middleware in front of every route: counts and times each request (by route), checks the
    API key (401) and the body size (413) before the body reaches a route."""

    def __init__(self, app: Any, *, api_key: str | None, max_body_bytes: int, metrics: Metrics,
                 routes: set[str]):
        self.app, self.api_key, self.max_body = app, api_key, max_body_bytes
        self.metrics, self.routes = metrics, routes

    def _label(self, path: str) -> str:
        if path in self.routes:
            return path
        return "/static" if path.startswith(OPEN_PREFIXES) else "other"

    def _authorised(self, headers: dict[bytes, bytes]) -> bool:
        assert self.api_key is not None
        given = headers.get(b"x-api-key", b"").decode("latin-1")
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return bool(given) and hmac.compare_digest(given.encode(), self.api_key.encode())

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        label = self._label(path)
        t0 = time.perf_counter()
        status = {"code": 500}

        async def send_counted(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, send_counted, path)
        finally:
            self.metrics.observe(label, scope.get("method", "GET"), status["code"], time.perf_counter() - t0)

    async def _guarded(self, scope: dict, receive: Any, send: Any, path: str) -> None:
        headers = dict(scope.get("headers") or [])
        if self.api_key and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES):
            if not self._authorised(headers):
                why = "wrong API key" if (headers.get(b"x-api-key") or headers.get(b"authorization")) else \
                    "missing API key"
                await _problem(401, f"{why}: send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                               {"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            declared = headers.get(b"content-length")
            too_big = _problem(413, f"request body over {self.max_body} bytes")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body:
                await too_big(scope, receive, send)
                return
            chunks, total = [], 0
            while True:  # read the body here (bounded), then replay it to the route
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                total += len(chunk)
                if total > self.max_body:
                    await too_big(scope, receive, send)
                    return
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
            sent = False

            async def replay() -> dict:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
            return
        await self.app(scope, receive, send)


# -- the app --------------------------------------------------------------------------------------
def create_app(service: Service) -> FastAPI:
    """The FastAPI app serving ``service`` (its settings give the limits and the API key)."""
    settings = service.settings
    metrics = Metrics()
    batcher = MicroBatcher(service.run_batch, max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
                           max_queue=settings.max_queue, on_batch=metrics.batch)

    async def lifespan(app: FastAPI):
        service.start_loading()
        batcher.start()
        yield
        await batcher.stop()  # the open requests finished first (uvicorn); whatever is queued drains

    app = FastAPI(
        title="cellnet serve", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
        description="A trained cellnet run behind HTTP: answers with candidates and scores, conversations, the "
                    "chain's stages (embed, think, decode) on their own, health and Prometheus metrics. "
                    "With an API key set, send it as `Authorization: Bearer KEY` or `X-API-Key: KEY`.")
    app.state.service, app.state.batcher, app.state.metrics = service, batcher, metrics
    static = resources.files("cellnet_serve") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    try:  # Swagger UI's files ship with fastapi-offline: the API page works without internet
        docs_files = resources.files("fastapi_offline") / "static"
        app.mount("/docs-assets", StaticFiles(directory=str(docs_files)), name="docs-assets")
        swagger = {"swagger_js_url": "/docs-assets/swagger-ui-bundle.js",
                   "swagger_css_url": "/docs-assets/swagger-ui.css",
                   "swagger_favicon_url": "/docs-assets/favicon.png"}
    except (ImportError, ModuleNotFoundError):  # pragma: no cover - a dependency; else Swagger UI's CDN
        swagger = {}

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        return _problem(422, _readable(errors), errors=[
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in errors])

    @app.exception_handler(HTTPProblem)
    async def _http_problem(request: Request, exc: HTTPProblem) -> JSONResponse:
        return _problem(exc.status, exc.detail, exc.headers)

    def _check_texts(texts: list[str], what: str) -> None:
        if len(texts) > settings.max_texts:
            raise HTTPProblem(413, f"{what}: {len(texts)} items; at most {settings.max_texts} per request")
        for i, t in enumerate(texts):
            if len(t) > settings.max_chars:
                raise HTTPProblem(413, f"{what}[{i}]: {len(t)} characters; at most {settings.max_chars} per text")
            if not t.strip():
                raise HTTPProblem(422, f"{what}[{i}]: empty text")

    async def _run(kind: str, items: list[Any], **params: Any) -> list[Any]:
        if not service.ready:
            if service.error:
                raise HTTPProblem(503, f"the run failed to load: {service.error}")
            raise HTTPProblem(503, "the run is still loading; retry shortly", {"Retry-After": "2"})
        job = Job(kind, items, params)
        metrics.queue_depth.set(batcher.depth + 1)
        try:
            return await batcher.submit(job, settings.timeout)
        except QueueFull:
            metrics.rejected.labels("queue_full").inc()
            raise HTTPProblem(503, f"busy: {settings.max_queue} requests are waiting; retry shortly",
                              {"Retry-After": "1"}) from None
        except Stopping:
            raise HTTPProblem(503, "shutting down", {"Retry-After": "5", "Connection": "close"}) from None
        except asyncio.TimeoutError:
            metrics.rejected.labels("timeout").inc()
            raise HTTPProblem(504, f"no answer within {settings.timeout:g} s") from None
        except CellnetError as exc:
            raise HTTPProblem(422, str(exc).strip().splitlines()[0]) from None
        except Exception as exc:  # noqa: BLE001 - a bug in a part: logged with its traceback, one line here
            log.exception("%s failed", kind)
            first = (str(exc).strip().splitlines() or [""])[0]
            raise HTTPProblem(500, f"internal error: {type(exc).__name__}: {first}".rstrip(": ")) from None
        finally:
            metrics.queue_depth.set(batcher.depth)

    errors_doc = {401: {"model": Problem}, 413: {"model": Problem}, 422: {"model": Problem},
                  503: {"model": Problem}, 504: {"model": Problem}}

    @app.post("/v1/answer", response_model=AnswerResponse, response_model_exclude_none=True,
              responses=errors_doc, tags=["answers"])
    async def answer(req: AnswerRequest) -> Any:
        """Answer a question (or a list of them): the answer, its score, the top `k` candidates and,
        with `baseline: true`, the answer of the question's own embedding. With `session_id` the
        question is answered in that conversation."""
        questions = [req.question] if isinstance(req.question, str) else list(req.question)
        if not questions:
            raise HTTPProblem(422, "question: give a question or a non-empty list of questions")
        _check_texts(questions, "question")
        if req.k > settings.max_k:
            raise HTTPProblem(413, f"k: {req.k}; at most {settings.max_k} candidates")
        rows = await _run("answer", questions, k=req.k, session_id=req.session_id, baseline=req.baseline)
        metrics.conversations.set(len(service.conversations))
        return {"answers": rows, "session_id": req.session_id}

    @app.post("/v1/embed", response_model=EmbedResponse, responses=errors_doc, tags=["stages"])
    async def embed(req: TextsRequest) -> Any:
        """The teacher embedding of each text (what the lattice takes)."""
        _check_texts(req.texts, "texts")
        rows = await _run("embed", req.texts)
        return {"embeddings": rows, "dim": len(rows[0]) if rows else 0}

    @app.post("/v1/think", response_model=ThinkResponse, responses=errors_doc, tags=["stages"])
    async def think(req: ThinkRequest) -> Any:
        """Texts or teacher embeddings through reshaper → lattice → reshaper: the output embeddings
        (what /v1/decode takes)."""
        if (req.texts is None) == (req.embeddings is None):
            raise HTTPProblem(422, "give either texts or embeddings")
        if req.texts is not None:
            _check_texts(req.texts, "texts")
            rows = await _run("think", req.texts, input="texts")
        else:
            _check_size(req.embeddings or [])
            rows = await _run("think", req.embeddings, input="embeddings")
        return {"embeddings": rows, "dim": len(rows[0]) if rows else 0}

    def _check_size(rows: list[list[float]]) -> None:
        if len(rows) > settings.max_texts:
            raise HTTPProblem(413, f"embeddings: {len(rows)} rows; at most {settings.max_texts} per request")

    @app.post("/v1/decode", response_model=DecodeResponse, response_model_exclude_none=True,
              responses=errors_doc, tags=["stages"])
    async def decode(req: DecodeRequest) -> Any:
        """Output embeddings to text through the run's decoder, with candidates and scores."""
        _check_size(req.embeddings)
        if req.k > settings.max_k:
            raise HTTPProblem(413, f"k: {req.k}; at most {settings.max_k} candidates")
        rows = await _run("decode", req.embeddings, k=req.k)
        return {"decoded": rows}

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, Any]:
        """The process is up (whether or not the run is loaded yet)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "still loading, or loading failed"}})
    async def readyz() -> Response:
        """Ready once the run is loaded: 200, else 503 (still loading, or the reason loading failed)."""
        info = service.describe()
        info.update({"queue": batcher.depth, "batches": batcher.batches, "conversations": len(service.conversations)})
        if service.ready:
            return JSONResponse(info)
        return JSONResponse(info, status_code=503, headers={} if service.error else {"Retry-After": "2"})

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def prometheus() -> Response:
        """Prometheus text format: requests by route and status, latencies, batch sizes, queue depth."""
        metrics.queue_depth.set(batcher.depth)
        metrics.conversations.set(len(service.conversations))
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"))

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="cellnet serve — API", **swagger)

    if settings.api_key:  # the API page's "Authorize" button then sends the key with "Try it out"
        plain_openapi = app.openapi

        def keyed_openapi() -> dict[str, Any]:
            if app.openapi_schema is None:
                schema = plain_openapi()
                schema.setdefault("components", {})["securitySchemes"] = {
                    "bearer": {"type": "http", "scheme": "bearer", "description": "the server's API key"}}
                schema["security"] = [{"bearer": []}]
                app.openapi_schema = schema
            return app.openapi_schema

        app.openapi = keyed_openapi  # type: ignore[method-assign]

    routes = {r.path for r in app.routes if getattr(r, "path", None)}
    app.add_middleware(Gate, api_key=settings.api_key, max_body_bytes=settings.max_body_bytes, metrics=metrics,
                       routes=routes)
    return app


def _version() -> str:
    try:
        from importlib import metadata

        return metadata.version("cellnet-serve")
    except Exception:  # noqa: BLE001
        return "0"


