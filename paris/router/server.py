"""`paris serve`: the generation endpoint of a published ParisPipeline (FastAPI).

The weights load in a background thread at startup, so /healthz answers at once (the pod is
alive) while /readyz stays 503 until the pipeline is in memory (the pod gets no traffic yet).
Generation runs in one worker thread fed by a batcher (paris.router.batcher): concurrent
requests with the same steps, guidance and routing share one pipeline call. Every other route
is answered by the event loop, so probes and metrics never wait behind generation.

    GET  /                         the playground page (static HTML, no external resources)
    POST /v1/images/generations    the OpenAI images API (ImagesRequest in paris.config)
    POST /v1/generate              GenerateRequest -> image/png, or JSON with base64 PNGs
    GET  /v1/models, /v1/info      the served model; its experts and defaults (for the page)
    GET  /healthz, /readyz         alive; weights loaded
    GET  /metrics                  Prometheus text (paris.router.metrics)

With a token configured ($PARIS_SERVE_TOKEN, or a file named by $PARIS_SERVE_TOKEN_FILE),
every /v1 route needs `Authorization: Bearer <token>`; the page, probes and metrics do not.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.resources
import logging
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from paris.config import (
    DEFAULT_ROUTING,
    SERVE_TOKEN_ENV,
    SERVE_TOKEN_FILE_ENV,
    GenerateRequest,
    ImagesRequest,
    RunConfig,
    SampleConfig,
    ServeConfig,
    describe_errors,
)
from paris.errors import ConfigError
from paris.router.batcher import Batcher, ClientGone, QueueFull, TimedOut
from paris.router.metrics import CONTENT_TYPE, ServeMetrics
from paris.router.runner import Done, Runner, Work, parameter_bytes, serving_dtype

log = logging.getLogger("paris.serve")

OPENAI_PREFIX = "/v1/images/"
ROUTES = ("/", "/v1/images/generations", "/v1/generate", "/v1/models", "/v1/info", "/healthz", "/readyz", "/metrics")
CLIENT_CLOSED = 499  # nginx's code for "the client closed the request"; nobody receives it

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error"}


class ApiError(Exception):
    """Answered as JSON with a message: `{"error": msg}`, or the OpenAI shape on its routes."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.headers = status, message, code, param, headers


def error_response(path: str, status: int, message: str, code: str | None = None, param: str | None = None,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    if path.startswith(OPENAI_PREFIX):
        kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        body: dict[str, Any] = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    else:
        body = {"error": message}
    return JSONResponse(body, status_code=status, headers=headers)


# ---- ASGI middleware (pure ASGI: BaseHTTPMiddleware would hide client disconnects) -----------


class BodyLimit:
    """413 for a body over `limit` bytes, declared or streamed, before the app reads any of it."""

    def __init__(self, app: ASGIApp, limit: int, metrics: ServeMetrics) -> None:
        self.app, self.limit, self.metrics = app, limit, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        path = scope["path"]
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self._refuse(path, scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await self._refuse(path, scope, receive, send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: only the disconnect is left to hear

        await self.app(scope, replay, send)

    async def _refuse(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        self.metrics.rejected.labels("body_too_large").inc()
        msg = f"request body too large: the limit is {self.limit} bytes"
        await error_response(path, 413, msg, code="request_too_large")(scope, receive, send)


class Observe:
    """Request count and latency per route, and requests in flight."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500  # what the client sees if the app raises before answering

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.observe_request(scope["path"], scope["method"], status, time.perf_counter() - t0)


# ---- the app ----------------------------------------------------------------------------------


def _wants_json(req: GenerateRequest, accept: str) -> bool:
    if req.format is not None:
        return req.format == "json"
    return "application/json" in accept and "image/png" not in accept


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone (the body is already read: only a disconnect is left)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _playground() -> str:
    return (importlib.resources.files("paris.router") / "static" / "index.html").read_text(encoding="utf-8")


def create_app(
    load: Callable[[], Any],
    defaults: SampleConfig,
    settings: ServeConfig | None = None,
    model_name: str = "paris",
    token: str | None = None,
) -> FastAPI:
    """The app around a pipeline loader (called once, in a background thread). Tests pass a
    loader that returns a small pipeline; `paris serve` passes one that reads the store."""
    settings = settings or ServeConfig()
    metrics = ServeMetrics(ROUTES)
    state: dict[str, Any] = {"runner": None, "error": None, "info": {}}
    loaded = threading.Event()
    default_routing = defaults.routing[0] if defaults.routing else DEFAULT_ROUTING

    def load_weights() -> None:
        try:
            t0 = time.perf_counter()
            pipe = load()
            dtype = serving_dtype(pipe, settings.precision)
            seconds = time.perf_counter() - t0
            nbytes = parameter_bytes(pipe)
            state["info"] = {
                "experts": int(pipe.router.config.num_clusters) if hasattr(pipe, "router") else None,
                "native_size": int(pipe.router.config.sample_size) if hasattr(pipe, "router") else None,
                "precision": str(dtype).removeprefix("torch.") if dtype else "fp32",
                "device": str(getattr(pipe, "device", "cpu")),
                "load_seconds": round(seconds, 3),
                "parameter_bytes": nbytes,
            }
            state["runner"] = Runner(pipe, defaults.shift, dtype, defaults.guidance_routing)
            metrics.ready.set(1)
            log.info("pipeline loaded in %.2fs: %.1f MiB of weights, %s", seconds, nbytes / 2**20, state["info"])
        except Exception as err:  # reported by /readyz and /healthz; the pod restarts
            log.exception("loading the pipeline failed")
            state["error"] = f"{type(err).__name__}: {err}"
        finally:
            loaded.set()

    def run_batch(works: Sequence[Work]) -> Sequence[Done]:
        runner: Runner = state["runner"]
        return runner(works)

    def batch_done(works: Sequence[Work], results: Sequence[Done] | None, seconds: float) -> None:
        if results is None:
            metrics.errors.inc()
            return
        stats = state["runner"].last
        metrics.observe_batch(len(works), sum(w.count for w in works), seconds, stats.usage, stats.calls)

    def queue_changed(queued: int, running: int) -> None:
        metrics.queue_depth.set(queued)
        metrics.generating.set(running)

    batcher: Batcher[Work, Done] = Batcher(
        run_batch,
        max_batch=settings.max_batch,
        max_wait=settings.max_wait_ms / 1000,
        max_queue=settings.max_queue,
        on_change=queue_changed,
        on_batch=batch_done,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        threading.Thread(target=load_weights, name="load-pipeline", daemon=True).start()
        batcher.start()
        yield
        await batcher.stop()
        if state["runner"] is not None:
            state["runner"].close()

    app = FastAPI(title="paris", version="v1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.loaded = loaded
    app.state.metrics = metrics
    app.state.batcher = batcher
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes, metrics=metrics)
    app.add_middleware(Observe, metrics=metrics)  # outermost: sees the 413s too
    page = _playground()

    # ---- errors: always JSON with a message --------------------------------------------------

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request.url.path, exc.status, exc.message, exc.code, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        message = describe_errors(errors, whole="body")
        if request.url.path.startswith(OPENAI_PREFIX):
            param = next((str(p) for p in errors[0].get("loc", ()) if p != "body"), None) if errors else None
            return error_response(request.url.path, 400, message, code="invalid_value", param=param)
        detail = [{k: e.get(k) for k in ("loc", "msg", "type")} for e in errors]
        return JSONResponse(status_code=422, content={"error": message, "detail": detail})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(request.url.path, exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(request.url.path, 500, f"internal error: {type(exc).__name__}")

    # ---- access ------------------------------------------------------------------------------

    bearer = HTTPBearer(auto_error=False)

    async def authorized(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if token is None:
            return
        if creds is None or not secrets.compare_digest(creds.credentials.encode(), token.encode()):
            metrics.rejected.labels("unauthorized").inc()
            raise ApiError(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    # ---- probes, metrics, page: served by the event loop, never behind generation -------------

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        if state["error"]:
            return JSONResponse({"status": "error", "error": state["error"]}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if state["runner"] is None:
            why = state["error"] or "loading the pipeline"
            return JSONResponse({"ready": False, "reason": why}, status_code=503)
        return JSONResponse({"ready": True})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models() -> JSONResponse:
        entry = {"id": model_name, "object": "model", "created": 0, "owned_by": "paris"}
        return JSONResponse({"object": "list", "data": [entry]})

    @app.get("/v1/info", dependencies=[Depends(authorized)])
    async def info() -> JSONResponse:
        return JSONResponse({
            "model": model_name,
            "ready": state["runner"] is not None,
            **state["info"],
            "defaults": {"steps": defaults.steps, "guidance": defaults.guidance, "routing": default_routing},
            "limits": {"max_batch": settings.max_batch, "max_queue": settings.max_queue,
                       "timeout_s": settings.timeout_s},
        })

    # ---- generation --------------------------------------------------------------------------

    async def generate_for(work: Work, request: Request) -> Done:
        if state["runner"] is None:
            why = state["error"] or "the pipeline is still loading"
            raise ApiError(503, f"not ready: {why}", code="not_ready", headers={"Retry-After": "5"})
        try:
            job = batcher.submit(work.key, work.count, work)
        except QueueFull as full:
            metrics.rejected.labels("queue_full").inc()
            raise ApiError(429, f"too many requests waiting ({settings.max_queue}); retry later",
                           code="queue_full", headers={"Retry-After": str(int(full.retry_after))}) from None
        gone: Awaitable[None] = _disconnected(request)
        try:
            return await batcher.result(job, settings.timeout_s, gone)
        except TimedOut:
            metrics.rejected.labels("timeout").inc()
            raise ApiError(504, f"generation did not finish within {settings.timeout_s:g}s", code="timeout") from None
        except ClientGone:
            metrics.rejected.labels("client_gone").inc()
            raise ApiError(CLIENT_CLOSED, "the client closed the request") from None
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the pipeline raised: counted by the batcher, reported here
            log.error("generation failed: %s: %s", type(err).__name__, err)
            raise ApiError(500, f"generation failed: {type(err).__name__}: {err}", code="generation_failed") from None

    @app.post("/v1/images/generations", dependencies=[Depends(authorized)])
    async def images_generations(req: ImagesRequest, request: Request) -> JSONResponse:
        if req.model not in (None, "", model_name, "paris"):
            raise ApiError(404, f"model {req.model!r} is not served here: use {model_name!r}",
                           code="model_not_found", param="model")
        side = None if req.size in (None, "auto") else int(req.size.split("x")[0])
        fmt = req.output_format or "png"
        work = Work(
            prompt=req.prompt, count=req.n,
            steps=req.num_inference_steps or defaults.steps,
            guidance=req.guidance_scale if req.guidance_scale is not None else defaults.guidance,
            routing=req.routing or default_routing, seed=req.seed, size=side,
            image_format=fmt, quality=req.output_compression, trace=req.routing_trace,
        )
        done = await generate_for(work, request)
        data = []
        for i, img in enumerate(done.images):
            item: dict[str, Any] = {"b64_json": base64.b64encode(img).decode(), "expert_usage": done.usage[i]}
            if done.trace is not None:
                item["routing_trace"] = [[round(w, 4) for w in step] for step in done.trace[i]]
            data.append(item)
        return JSONResponse({
            "created": int(time.time()),
            "data": data,
            "model": model_name,
            "output_format": fmt,
            "size": f"{done.side}x{done.side}",
            "seed": done.seed,
            "num_inference_steps": work.steps,
            "guidance_scale": work.guidance,
            "routing": work.routing,
            "batch": {"requests": done.batch_requests, "images": done.batch_images},
        }, headers=_headers(work, done))

    @app.post("/v1/generate", response_model=None, dependencies=[Depends(authorized)])
    async def generate(req: GenerateRequest, request: Request) -> Response:
        as_json = _wants_json(req, request.headers.get("accept", ""))
        work = Work(
            prompt=req.prompt, count=req.count,
            steps=req.steps or defaults.steps,
            guidance=req.guidance if req.guidance is not None else defaults.guidance,
            routing=req.routing or default_routing, seed=req.seed, size=req.size,
            grid=not as_json and req.count > 1,
        )
        done = await generate_for(work, request)
        headers = _headers(work, done)
        usage = [sum(u[k] for u in done.usage) / len(done.usage) for k in range(len(done.usage[0]))]
        headers["X-Paris-Usage"] = " ".join(f"{u:.3f}" for u in usage)
        if as_json:
            return JSONResponse(
                {
                    "images": [base64.b64encode(im).decode() for im in done.images],
                    "seed": done.seed,
                    "routing": work.routing,
                    "steps": work.steps,
                    "guidance": work.guidance,
                    "size": done.side,
                    "usage": usage,
                    "image_usage": done.usage,
                },
                headers=headers,
            )
        return Response(done.grid or done.images[0], media_type="image/png", headers=headers)

    return app


def _headers(work: Work, done: Done) -> dict[str, str]:
    headers = {"X-Paris-Routing": work.routing, "X-Paris-Steps": str(work.steps),
               "X-Paris-Batch": str(done.batch_requests)}
    if done.seed is not None:  # only a seed that reproduces the images when sent back
        headers["X-Paris-Seed"] = str(done.seed)
    return headers


def read_token() -> str | None:
    """The bearer token from $PARIS_SERVE_TOKEN, or the file $PARIS_SERVE_TOKEN_FILE names."""
    value = os.environ.get(SERVE_TOKEN_ENV)
    path = os.environ.get(SERVE_TOKEN_FILE_ENV)
    if not value and path:
        try:
            value = Path(path).read_text().strip()
        except OSError as err:
            raise ConfigError(f"${SERVE_TOKEN_FILE_ENV}: cannot read {path}: {err.strerror}") from None
        if not value:
            raise ConfigError(f"${SERVE_TOKEN_FILE_ENV}: {path} is empty")
    return value.strip() if value else None


def pipeline_loader(cfg: RunConfig) -> Callable[[], Any]:
    """Download models/<model>/pipeline/ (the experts' and router's EMA weights, see
    paris.router.assemble) from the store into a temp dir and load it."""

    def load() -> Any:
        from paris.router.assemble import load_pipeline
        from paris.storage import open_store
        from paris.trainer.loop import resolve_device

        local = Path(tempfile.mkdtemp(prefix="paris-pipeline-"))
        # Serving only reads: a read-only credential must be enough (no bucket creation).
        pipe = load_pipeline(open_store(cfg.storage, read_only=True), cfg.model, local)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(resolve_device(cfg.sample.device))

    return load


def serve(cfg: RunConfig, host: str, port: int) -> None:
    import uvicorn

    token = read_token()
    app = create_app(pipeline_loader(cfg), cfg.sample, cfg.serve, model_name=cfg.model, token=token)
    log.info("bearer-token auth is %s", "on" if token else "off")
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
