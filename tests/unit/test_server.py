"""The generation endpoint's HTTP contract, with a stand-in pipeline (the e2e tier serves the
real one): readiness after loading, PNG or JSON, bounded inputs with clear 4xx, metrics."""

from __future__ import annotations

import base64
import io
import threading
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from paris.config import SampleConfig
from paris.router.server import create_app


@dataclass
class Output:
    images: list[Image.Image]
    usage: list[float]


class FakePipeline:
    """Returns native 8x8 images and records every call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, prompts: list[str], **kw: Any) -> Output:
        self.calls.append({"prompts": prompts, **kw})
        n = kw["num_images_per_prompt"]
        return Output([Image.new("L", (8, 8), 40 * i) for i in range(n)], [0.5, 0.5, 0.0])


DEFAULTS = SampleConfig(steps=7, guidance=2.0, routing=["top1"])


@pytest.fixture
def pipe() -> FakePipeline:
    return FakePipeline()


@pytest.fixture
def client(pipe: FakePipeline) -> Any:
    with TestClient(create_app(lambda: pipe, DEFAULTS)) as c:
        assert c.app.state.loaded.wait(10)  # type: ignore[attr-defined]
        yield c


def png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(data))


def test_ready_only_after_the_weights_loaded() -> None:
    gate = threading.Event()

    def slow_load() -> FakePipeline:
        gate.wait(10)
        return FakePipeline()

    with TestClient(create_app(slow_load, DEFAULTS)) as c:
        assert c.get("/healthz").status_code == 200, "alive at once"
        assert c.get("/readyz").status_code == 503
        r = c.post("/v1/generate", json={"prompt": "a digit"})
        assert r.status_code == 503 and "not ready" in r.json()["error"]
        gate.set()
        assert c.app.state.loaded.wait(10)  # type: ignore[attr-defined]
        assert c.get("/readyz").json() == {"ready": True}


def test_failed_load_fails_health() -> None:
    def broken() -> None:
        raise RuntimeError("no pipeline at s3://x")

    with TestClient(create_app(broken, DEFAULTS)) as c:
        assert c.app.state.loaded.wait(10)  # type: ignore[attr-defined]
        assert c.get("/healthz").status_code == 503
        assert "no pipeline" in c.get("/readyz").json()["reason"]


def test_one_png_with_defaults(client: Any, pipe: FakePipeline) -> None:
    r = client.post("/v1/generate", json={"prompt": "a handwritten digit seven", "seed": 3})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert png(r.content).size == (8, 8)
    call = pipe.calls[-1]
    assert (call["num_inference_steps"], call["guidance_scale"], call["routing"]) == (7, 2.0, "top1")
    assert r.headers["x-paris-seed"] == "3" and r.headers["x-paris-routing"] == "top1"


def test_grid_and_resize(client: Any, pipe: FakePipeline) -> None:
    r = client.post(
        "/v1/generate", json={"prompt": "p", "count": 4, "size": 32, "routing": "topk:2", "steps": 3, "guidance": 0}
    )
    assert r.status_code == 200
    w, h = png(r.content).size
    assert w > 4 * 32 and 32 < h < 64, "a 4x1 grid of 32px images"
    call = pipe.calls[-1]
    assert (call["routing"], call["num_inference_steps"], call["guidance_scale"]) == ("topk:2", 3, 0.0)


def test_json_by_accept_or_format(client: Any) -> None:
    r = client.post(
        "/v1/generate", json={"prompt": "p", "count": 2, "size": 16}, headers={"Accept": "application/json"}
    )
    body = r.json()
    assert r.status_code == 200 and len(body["images"]) == 2 and body["size"] == 16
    assert png(base64.b64decode(body["images"][0])).size == (16, 16)
    assert body["usage"] == [0.5, 0.5, 0.0] and isinstance(body["seed"], int)
    r2 = client.post("/v1/generate", json={"prompt": "p", "format": "json"})
    assert r2.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "p", "steps": 0}, "steps"),
        ({"prompt": "p", "steps": 100000}, "steps"),
        ({"prompt": "p", "routing": "top3x"}, "routing"),
        ({"prompt": "p", "routing": "topk:0"}, "routing"),
        ({"prompt": "p", "count": 17}, "count"),
        ({"prompt": "p", "size": 4}, "size"),
        ({"prompt": "p", "size": 100000}, "size"),
        ({"prompt": "p", "guidance": -1}, "guidance"),
        ({"prompt": "p", "seed": -1}, "seed"),
        ({"prompt": "p", "format": "gif"}, "format"),
        ({"prompt": "p", "colour": "red"}, "colour"),
        ({}, "prompt"),
    ],
)
def test_bad_inputs_get_a_clear_422(client: Any, pipe: FakePipeline, payload: dict[str, Any], where: str) -> None:
    before = len(pipe.calls)
    r = client.post("/v1/generate", json=payload)
    assert r.status_code == 422
    assert r.json()["error"].startswith(where), r.json()
    assert len(pipe.calls) == before, "the pipeline never ran"


def test_metrics(client: Any) -> None:
    client.post("/v1/generate", json={"prompt": "p", "count": 3})
    client.post("/v1/generate", json={"prompt": "p", "steps": 0})
    text = client.get("/metrics").text
    assert 'paris_http_requests_total{method="POST",path="/v1/generate",code="200"} 1' in text
    assert 'paris_http_requests_total{method="POST",path="/v1/generate",code="422"} 1' in text
    assert "paris_images_generated_total 3" in text
    assert "paris_model_ready 1" in text
    assert "# TYPE paris_http_request_duration_seconds summary" in text
