"""`paris serve`: the generation endpoint of a published ParisPipeline (FastAPI).

The weights load in a background thread at startup, so /healthz answers at once (the pod is
alive) while /readyz stays 503 until the pipeline is in memory (the pod gets no traffic yet).
One pipeline call runs at a time: the model is small and the CPU/GPU is shared anyway.

    POST /v1/generate   GenerateRequest (paris.config) -> image/png, or JSON with base64 PNGs
    GET  /healthz       200 while the process is healthy (503 if loading the weights failed)
    GET  /readyz        200 once the weights are loaded
    GET  /metrics       Prometheus text format
"""

from __future__ import annotations

import base64
import logging
import secrets
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from PIL import Image

from paris.config import GenerateRequest, RunConfig, SampleConfig, describe_errors
from paris.plots import grid, png_bytes

log = logging.getLogger("paris.serve")


class Metrics:
    """The few Prometheus series we export, written by hand (no client library needed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # path -> [sum, count]
        self.images = 0
        self.generate_seconds = [0.0, 0.0]

    def observe(self, method: str, path: str, code: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, path, code)] += 1
            s = self.latency[path]
            s[0] += seconds
            s[1] += 1

    def generated(self, images: int, seconds: float) -> None:
        with self._lock:
            self.images += images
            self.generate_seconds[0] += seconds
            self.generate_seconds[1] += 1

    def render(self, ready: bool) -> str:
        with self._lock:
            lines = [
                "# HELP paris_http_requests_total HTTP requests by method, path and status code.",
                "# TYPE paris_http_requests_total counter",
                *(
                    f'paris_http_requests_total{{method="{m}",path="{p}",code="{c}"}} {n}'
                    for (m, p, c), n in sorted(self.requests.items())
                ),
                "# HELP paris_http_request_duration_seconds Time to answer a request.",
                "# TYPE paris_http_request_duration_seconds summary",
            ]
            for p, (total, count) in sorted(self.latency.items()):
                lines += [
                    f'paris_http_request_duration_seconds_sum{{path="{p}"}} {total:.6f}',
                    f'paris_http_request_duration_seconds_count{{path="{p}"}} {int(count)}',
                ]
            lines += [
                "# HELP paris_images_generated_total Images generated.",
                "# TYPE paris_images_generated_total counter",
                f"paris_images_generated_total {self.images}",
                "# HELP paris_generate_seconds Time spent in the pipeline per request.",
                "# TYPE paris_generate_seconds summary",
                f"paris_generate_seconds_sum {self.generate_seconds[0]:.6f}",
                f"paris_generate_seconds_count {int(self.generate_seconds[1])}",
                "# HELP paris_model_ready 1 once the pipeline is loaded.",
                "# TYPE paris_model_ready gauge",
                f"paris_model_ready {int(ready)}",
            ]
        return "\n".join(lines) + "\n"


def _resize(images: list[Image.Image], size: int | None) -> list[Image.Image]:
    """To size x size pixels: nearest-neighbour when enlarging (crisp digits), Lanczos when shrinking."""
    if size is None:
        return images
    out = []
    for im in images:
        method = Image.Resampling.NEAREST if size >= max(im.size) else Image.Resampling.LANCZOS
        out.append(im.resize((size, size), method))
    return out


def _wants_json(req: GenerateRequest, accept: str) -> bool:
    if req.format is not None:
        return req.format == "json"
    return "application/json" in accept and "image/png" not in accept


def create_app(load: Callable[[], Any], defaults: SampleConfig) -> FastAPI:
    """The app around a pipeline loader (called once, in a background thread). Tests pass a
    loader that returns a stand-in pipeline; `paris serve` passes one that reads the store."""
    state: dict[str, Any] = {"pipe": None, "error": None}
    loaded = threading.Event()
    gen_lock = threading.Lock()
    metrics = Metrics()

    def load_weights() -> None:
        try:
            state["pipe"] = load()
            log.info("pipeline loaded")
        except Exception as err:  # reported by /readyz and /healthz; the pod restarts
            log.exception("loading the pipeline failed")
            state["error"] = f"{type(err).__name__}: {err}"
        finally:
            loaded.set()

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        threading.Thread(target=load_weights, name="load-pipeline", daemon=True).start()
        yield

    app = FastAPI(title="paris", version="v1", lifespan=lifespan)
    app.state.loaded = loaded
    app.state.metrics = metrics

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Any]) -> Response:
        t0 = time.perf_counter()
        response: Response = await call_next(request)
        path = request.url.path if request.url.path in KNOWN_PATHS else "other"
        metrics.observe(request.method, path, response.status_code, time.perf_counter() - t0)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        return JSONResponse(
            status_code=422,
            content={
                "error": describe_errors(errors, whole="body"),
                "detail": [{k: e.get(k) for k in ("loc", "msg", "type")} for e in errors],
            },
        )

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        if state["error"]:
            return JSONResponse({"status": "error", "error": state["error"]}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        if state["pipe"] is None:
            why = state["error"] or "loading the pipeline"
            return JSONResponse({"ready": False, "reason": why}, status_code=503)
        return JSONResponse({"ready": True})

    @app.get("/metrics")
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(state["pipe"] is not None), media_type="text/plain; version=0.0.4")

    @app.post("/v1/generate", response_model=None)
    def generate(req: GenerateRequest, request: Request) -> Response:
        pipe = state["pipe"]
        if pipe is None:
            why = state["error"] or "the pipeline is still loading"
            return JSONResponse({"error": f"not ready: {why}"}, status_code=503, headers={"Retry-After": "5"})
        seed = req.seed if req.seed is not None else secrets.randbelow(2**32)
        routing = req.routing or (defaults.routing[0] if defaults.routing else "top2")
        steps = req.steps or defaults.steps
        guidance = req.guidance if req.guidance is not None else defaults.guidance
        t0 = time.perf_counter()
        with gen_lock:
            out = pipe(
                [req.prompt],
                num_inference_steps=steps,
                guidance_scale=guidance,
                routing=routing,
                num_images_per_prompt=req.count,
                generator=_generator(seed),
                output_type="pil",
                shift=defaults.shift,
            )
        images = _resize(list(out.images), req.size)
        metrics.generated(len(images), time.perf_counter() - t0)
        headers = {
            "X-Paris-Seed": str(seed),
            "X-Paris-Routing": routing,
            "X-Paris-Steps": str(steps),
            "X-Paris-Usage": " ".join(f"{u:.3f}" for u in out.usage),
        }
        if _wants_json(req, request.headers.get("accept", "")):
            return JSONResponse(
                {
                    "images": [base64.b64encode(png_bytes(im)).decode() for im in images],
                    "seed": seed,
                    "routing": routing,
                    "steps": steps,
                    "guidance": guidance,
                    "size": images[0].size[0],
                    "usage": list(out.usage),
                },
                headers=headers,
            )
        body = png_bytes(images[0] if len(images) == 1 else grid(images, cols=min(len(images), 4)))
        return Response(body, media_type="image/png", headers=headers)

    return app


KNOWN_PATHS = {"/v1/generate", "/healthz", "/readyz", "/metrics"}


def _generator(seed: int) -> Any:
    try:
        import torch
    except ImportError:  # a stand-in pipeline in tests may not need one
        return None
    return torch.Generator().manual_seed(seed)


def pipeline_loader(cfg: RunConfig) -> Callable[[], Any]:
    """Download models/<model>/pipeline/ from the store into a temp dir and load it."""

    def load() -> Any:
        from paris.router.assemble import load_pipeline
        from paris.storage import open_store
        from paris.trainer.loop import resolve_device

        local = Path(tempfile.mkdtemp(prefix="paris-pipeline-"))
        pipe = load_pipeline(open_store(cfg.storage), cfg.model, local)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(resolve_device(cfg.sample.device))

    return load


def serve(cfg: RunConfig, host: str, port: int) -> None:
    import uvicorn

    app = create_app(pipeline_loader(cfg), cfg.sample)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
