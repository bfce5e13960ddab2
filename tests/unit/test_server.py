"""The generation endpoint's HTTP contract on a real tiny ParisPipeline: readiness, PNG or JSON,
seeds that reproduce, bounded inputs with clear 4xx, auth, body limits, metrics.

Concurrency (batching, 429, timeouts, disconnects) is in test_serve_load.py, against a real
uvicorn server."""

from __future__ import annotations

import base64
import io
import sys
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from paris.config import GenerateRequest, ImagesRequest, InferenceSpec, SampleConfig, ServeConfig
from paris.router.assemble import random_pipeline
from paris.router.pipeline import ParisPipeline
from paris.router.server import create_app, read_token
from tests.helpers import Recording

K = 3
DEFAULTS = SampleConfig(steps=3, guidance=2.0, routing=["top1"])
EXACT = ServeConfig(precision="no")  # fp32 everywhere, so that a seed reproduces bit for bit


@pytest.fixture(scope="module")
def tiny() -> ParisPipeline:
    return random_pipeline(K)


@pytest.fixture
def pipe(tiny: ParisPipeline) -> Recording:
    return Recording(tiny)


def start(app: Any) -> Iterator[TestClient]:
    with TestClient(app) as c:
        assert app.state.loaded.wait(30)
        yield c


@pytest.fixture
def client(pipe: Recording) -> Iterator[TestClient]:
    yield from start(create_app(lambda: pipe, DEFAULTS, EXACT, model_name="tiny"))


def png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(data))


# ---- lifecycle ---------------------------------------------------------------------------------


def test_ready_only_after_the_weights_loaded(tiny: ParisPipeline) -> None:
    gate = threading.Event()

    def slow_load() -> ParisPipeline:
        gate.wait(10)
        return tiny

    app = create_app(slow_load, DEFAULTS, EXACT)
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200, "alive at once"
        assert c.get("/readyz").status_code == 503
        r = c.post("/v1/generate", json={"prompt": "a digit"})
        assert r.status_code == 503 and "not ready" in r.json()["error"] and r.headers["retry-after"]
        gate.set()
        assert app.state.loaded.wait(10)
        assert c.get("/readyz").json() == {"ready": True}


def test_failed_load_fails_health() -> None:
    def broken() -> None:
        raise RuntimeError("no pipeline at s3://x")

    app = create_app(broken, DEFAULTS)
    with TestClient(app) as c:
        assert app.state.loaded.wait(10)
        assert c.get("/healthz").status_code == 503
        assert "no pipeline" in c.get("/readyz").json()["reason"]


# ---- /v1/generate --------------------------------------------------------------------------------


def test_one_png_with_the_servers_defaults(client: TestClient, pipe: Recording) -> None:
    r = client.post("/v1/generate", json={"prompt": "a handwritten digit seven", "seed": 3})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert png(r.content).size == (8, 8)
    call = pipe.calls[-1]
    assert (call["num_inference_steps"], call["guidance_scale"], call["routing"]) == (3, 2.0, "top1")
    assert r.headers["x-paris-seed"] == "3" and r.headers["x-paris-routing"] == "top1"


def test_several_images_come_back_as_a_resized_grid(client: TestClient, pipe: Recording) -> None:
    r = client.post(
        "/v1/generate", json={"prompt": "p", "count": 4, "size": 32, "routing": "topk:2", "steps": 2, "guidance": 0}
    )
    assert r.status_code == 200
    w, h = png(r.content).size
    assert w > 4 * 32 and 32 < h < 64, "a 4x1 grid of 32px images"
    call = pipe.calls[-1]
    assert call["prompts"] == ["p"] * 4
    assert (call["routing"], call["num_inference_steps"], call["guidance_scale"]) == ("topk:2", 2, 0.0)


def test_json_by_accept_or_format_with_per_image_usage(client: TestClient) -> None:
    r = client.post(
        "/v1/generate", json={"prompt": "p", "count": 2, "size": 16}, headers={"Accept": "application/json"}
    )
    body = r.json()
    assert r.status_code == 200 and len(body["images"]) == 2 and body["size"] == 16
    assert png(base64.b64decode(body["images"][0])).size == (16, 16)
    assert len(body["usage"]) == K and abs(sum(body["usage"]) - 1) < 1e-6
    assert len(body["image_usage"]) == 2 and all(abs(sum(u) - 1) < 1e-6 for u in body["image_usage"])
    assert isinstance(body["seed"], int)
    r2 = client.post("/v1/generate", json={"prompt": "p", "format": "json"})
    assert r2.headers["content-type"].startswith("application/json")


def test_a_reported_seed_reproduces_the_images(client: TestClient) -> None:
    first = client.post("/v1/generate", json={"prompt": "a digit two", "count": 2, "format": "json"}).json()
    again = client.post(
        "/v1/generate", json={"prompt": "a digit two", "count": 2, "format": "json", "seed": first["seed"]}
    ).json()
    other = client.post(
        "/v1/generate", json={"prompt": "a digit two", "count": 2, "format": "json", "seed": first["seed"] + 1}
    ).json()
    assert again["images"] == first["images"] and again["image_usage"] == first["image_usage"]
    assert other["images"] != first["images"]


class StandIn:
    """A pipeline that needs no torch itself: what a test may serve instead of the real one."""

    def __init__(self) -> None:
        self.generators: list[Any] = []

    def __call__(self, prompts: list[str], **kw: Any) -> Any:
        self.generators.append(kw["generator"])
        return SimpleNamespace(images=[Image.new("L", (8, 8)) for _ in prompts], usage=[1.0, 0.0, 0.0])


def test_the_seed_header_names_the_generator_the_pipeline_got_even_where_torch_does_not_import(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stand_in = StandIn()
    for c in start(create_app(lambda: stand_in, DEFAULTS, EXACT)):
        monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
        r = c.post("/v1/generate", json={"prompt": "p"})
        monkeypatch.undo()
        assert r.status_code == 200
        gen = stand_in.generators[-1]
        assert isinstance(gen, torch.Generator), "a real generator, never None"
        assert r.headers["x-paris-seed"] == str(gen.initial_seed())


def pixels(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(io.BytesIO(data)), dtype=np.int16))


def test_a_request_gets_the_same_images_alone_or_in_a_shared_call(tiny: ParisPipeline) -> None:
    from paris.router.runner import Runner, Work

    runner = Runner(tiny)
    try:
        mine = Work("a digit one", 2, 4, 2.0, "top2", seed=9, trace=True)
        alone = runner([mine])[0]
        done = runner([Work("a digit nine", 3, 4, 2.0, "top2"), mine, Work("a digit two", 1, 4, 2.0, "top2")])
        assert done[1].seed == 9 and all(isinstance(d.seed, int) for d in done), "every request reports its seed"
        assert done[1].batch_requests == 3 and done[1].batch_images == 6
        assert runner.last is not None and abs(sum(runner.last.usage) - 6) < 1e-6, "one unit of weight per image"
        assert sum(runner.last.calls) == 6 * 4 * 2, "images x steps x experts kept"
        for a, b in zip(alone.images, done[1].images, strict=True):
            assert (pixels(a) - pixels(b)).abs().max() <= 1, "its own noise, whatever it was batched with"
        torch.testing.assert_close(torch.tensor(alone.usage), torch.tensor(done[1].usage))
        again = runner([Work("a digit nine", 3, 4, 2.0, "top2", seed=done[0].seed)])[0]
        assert all((pixels(a) - pixels(b)).abs().max() <= 1 for a, b in zip(again.images, done[0].images, strict=True))
        assert done[1].trace is not None and done[0].trace is None, "traces only where asked"
        assert len(done[1].trace) == 2 and len(done[1].trace[0]) == 4 and len(done[1].trace[0][0]) == K
        assert all(sum(1 for w in step if w > 0) == 2 for step in done[1].trace[0]), "top2 keeps two per step"
    finally:
        runner.close()


@pytest.mark.parametrize("guidance_routing", ["shared", "separate"])
def test_per_image_usage_matches_the_pipeline_on_the_same_noise(tiny: ParisPipeline, guidance_routing: str) -> None:
    from paris.router.runner import Runner, Work

    runner = Runner(tiny, guidance_routing=guidance_routing)
    try:
        done = runner([Work("a digit four", 3, 5, 1.5, "top2", seed=11, trace=True)])[0]
        out = tiny(["a digit four"] * 3, num_inference_steps=5, routing="top2", guidance_scale=1.5,
                   generator=torch.Generator().manual_seed(11), output_type="pt", guidance_routing=guidance_routing)
        assert done.trace is not None and len(done.trace[0]) == 5
        mean = [sum(u[k] for u in done.usage) / 3 for k in range(K)]
        torch.testing.assert_close(torch.tensor(mean), torch.tensor(out.usage).float())
        assert done.seed == 11
    finally:
        runner.close()


# ---- the OpenAI images API (the client round trip is in test_serve_load.py) ---------------------


def test_openai_shape_with_extension_fields(client: TestClient, pipe: Recording) -> None:
    r = client.post("/v1/images/generations", json={
        "model": "tiny", "prompt": "a digit", "n": 2, "size": "64x64", "response_format": "b64_json",
        "seed": 5, "num_inference_steps": 4, "guidance_scale": 1.5, "routing": "full", "routing_trace": True,
        "quality": "standard", "style": "natural", "user": "someone",
    })
    body = r.json()
    assert r.status_code == 200, body
    assert isinstance(body["created"], int) and len(body["data"]) == 2
    assert png(base64.b64decode(body["data"][0]["b64_json"])).size == (64, 64)
    assert all(abs(sum(d["expert_usage"]) - 1) < 1e-6 for d in body["data"])
    assert len(body["data"][0]["routing_trace"]) == 4
    assert (body["seed"], body["routing"], body["size"]) == (5, "full", "64x64")
    call = pipe.calls[-1]
    assert (call["num_inference_steps"], call["guidance_scale"], call["routing"], call["seed"]) == (4, 1.5, "full", 5)


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_other_output_formats(client: TestClient, fmt: str) -> None:
    r = client.post("/v1/images/generations", json={"prompt": "p", "output_format": fmt, "output_compression": 80})
    assert r.status_code == 200 and r.json()["output_format"] == fmt
    im = Image.open(io.BytesIO(base64.b64decode(r.json()["data"][0]["b64_json"])))
    assert im.format == fmt.upper()


# ---- malformed requests: a 4xx with a message, never a 5xx, and the pipeline never runs ----------

OPENAI, GENERATE = "/v1/images/generations", "/v1/generate"
MALFORMED: list[tuple[str, str, Any]] = [
    ("prompt is a number", OPENAI, {"prompt": 7}),
    ("prompt missing", OPENAI, {"n": 1}),
    ("prompt blank", OPENAI, {"prompt": "  \n "}),
    ("prompt too long", OPENAI, {"prompt": "x" * 1001}),
    ("prompt with a lone surrogate", OPENAI, b'{"prompt": "\\ud800 seven"}'),
    ("prompt with a NUL", OPENAI, {"prompt": "a\u0000b"}),
    ("n is a word", OPENAI, {"prompt": "p", "n": "two"}),
    ("n is zero", OPENAI, {"prompt": "p", "n": 0}),
    ("n over the bound", OPENAI, {"prompt": "p", "n": 17}),
    ("n is fractional", OPENAI, {"prompt": "p", "n": 1.5}),
    ("n is astronomically large", OPENAI, b'{"prompt": "p", "n": 1' + b"0" * 400 + b"}"),
    ("size without x", OPENAI, {"prompt": "p", "size": "1024"}),
    ("size zero", OPENAI, {"prompt": "p", "size": "0x0"}),
    ("size too large", OPENAI, {"prompt": "p", "size": "2048x2048"}),
    ("size not square", OPENAI, {"prompt": "p", "size": "256x128"}),
    ("size is a number", OPENAI, {"prompt": "p", "size": 256}),
    ("response_format url", OPENAI, {"prompt": "p", "response_format": "url"}),
    ("response_format unknown", OPENAI, {"prompt": "p", "response_format": "jpeg"}),
    ("output_format gif", OPENAI, {"prompt": "p", "output_format": "gif"}),
    ("stream", OPENAI, {"prompt": "p", "stream": True}),
    ("steps over the bound", OPENAI, {"prompt": "p", "num_inference_steps": 1001}),
    ("steps negative", OPENAI, {"prompt": "p", "num_inference_steps": -3}),
    ("guidance is a word", OPENAI, {"prompt": "p", "guidance_scale": "high"}),
    ("guidance infinite", OPENAI, b'{"prompt": "p", "guidance_scale": 1e999}'),
    ("guidance NaN", OPENAI, b'{"prompt": "p", "guidance_scale": NaN}'),
    ("seed negative", OPENAI, {"prompt": "p", "seed": -1}),
    ("seed over 32 bits", OPENAI, {"prompt": "p", "seed": 2**40}),
    ("routing unknown", OPENAI, {"prompt": "p", "routing": "top3x"}),
    ("routing topk:0", OPENAI, {"prompt": "p", "routing": "topk:0"}),
    ("routing upper case", OPENAI, {"prompt": "p", "routing": "TOP1"}),
    ("routing empty", OPENAI, {"prompt": "p", "routing": ""}),
    ("routing a number", OPENAI, {"prompt": "p", "routing": 2}),
    ("routing_trace not a bool", OPENAI, {"prompt": "p", "routing_trace": "maybe"}),
    ("unknown field", OPENAI, {"prompt": "p", "negative_prompt": "blurry"}),
    ("unknown model", OPENAI, {"prompt": "p", "model": "dall-e-3"}),
    ("not JSON", OPENAI, b'{"prompt": '),
    ("not UTF-8", OPENAI, b'{"prompt": "\xff\xfe seven"}'),
    ("a JSON array", OPENAI, b"[]"),
    ("JSON null", OPENAI, b"null"),
    ("deeply nested JSON", OPENAI, b"[" * 20000 + b"]" * 20000),
    ("empty body", OPENAI, b""),
    ("over the body limit", OPENAI, {"prompt": "p" * 70000}),
    ("count over the bound", GENERATE, {"prompt": "p", "count": 17}),
    ("steps over the bound", GENERATE, {"prompt": "p", "steps": 1001}),
    ("routing with a trailing space", GENERATE, {"prompt": "p", "routing": "full "}),
    ("format unknown", GENERATE, {"prompt": "p", "format": "gif"}),
    ("size a string", GENERATE, {"prompt": "p", "size": "big"}),
    ("not JSON", GENERATE, b"prompt=p"),
    ("over the body limit", GENERATE, {"prompt": "p" * 70000}),
]


@pytest.mark.parametrize(("what", "path", "payload"), MALFORMED, ids=[f"{p}:{w}" for w, p, _ in MALFORMED])
def test_malformed_requests_get_a_4xx_with_a_message(
    client: TestClient, pipe: Recording, what: str, path: str, payload: Any
) -> None:
    before = len(pipe.calls)
    if isinstance(payload, bytes):
        r = client.post(path, content=payload, headers={"Content-Type": "application/json"})
    else:
        r = client.post(path, json=payload)
    assert 400 <= r.status_code < 500, (what, r.status_code, r.text)
    body = r.json()
    message = body["error"]["message"] if path == OPENAI else body["error"]
    assert isinstance(message, str) and len(message) > 5, body
    assert len(pipe.calls) == before, "the pipeline never ran"


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "p", "steps": 0}, "steps"),
        ({"prompt": "p", "steps": 100000}, "steps"),
        ({"prompt": "p", "routing": "top3x"}, "routing"),
        ({"prompt": "p", "count": 17}, "count"),
        ({"prompt": "p", "size": 4}, "size"),
        ({"prompt": "p", "guidance": -1}, "guidance"),
        ({"prompt": "p", "seed": -1}, "seed"),
        ({"prompt": "p", "colour": "red"}, "colour"),
        ({}, "prompt"),
    ],
)
def test_a_bad_field_is_named_in_the_error(client: TestClient, payload: dict[str, Any], where: str) -> None:
    r = client.post("/v1/generate", json=payload)
    assert r.status_code == 422 and r.json()["error"].startswith(where), r.json()
    r = client.post("/v1/images/generations", json={"num_inference_steps" if k == "steps" else k: v
                                                    for k, v in payload.items()})
    assert r.status_code == 400 and r.json()["error"]["message"], r.json()


def test_a_body_over_the_limit_streamed_without_a_length_gets_413(client: TestClient, pipe: Recording) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(100):
            yield b"p" * 1000
        yield b'"}'

    r = client.post("/v1/images/generations", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "too large" in r.json()["error"]["message"]
    assert not pipe.calls


def test_a_failing_pipeline_answers_json_500_and_is_counted(client: TestClient, pipe: Recording) -> None:
    pipe.fail = RuntimeError("CUDA out of memory (simulated)")
    r = client.post("/v1/images/generations", json={"prompt": "p"})
    assert r.status_code == 500 and "out of memory" in r.json()["error"]["message"]
    r = client.post("/v1/generate", json={"prompt": "p"})
    assert r.status_code == 500 and "out of memory" in r.json()["error"]
    pipe.fail = None
    assert client.post("/v1/generate", json={"prompt": "p"}).status_code == 200, "the server carries on"
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(client.get("/metrics").text) for s in f.samples}
    assert samples[("paris_generation_errors_total", ())] == 2
    assert samples[("paris_http_requests_total",
                    (("code", "500"), ("method", "POST"), ("route", "/v1/images/generations")))] == 1


# ---- shared bounds (issue 12: GenerateRequest allowed 200 steps, the configs 1000) -------------


@pytest.mark.parametrize(
    ("model", "field", "base"),
    [
        (SampleConfig, "steps", {}),
        (InferenceSpec, "steps", {}),
        (GenerateRequest, "steps", {"prompt": "p"}),
        (ImagesRequest, "num_inference_steps", {"prompt": "p"}),
    ],
)
def test_every_surface_takes_the_same_step_and_guidance_bounds(model: Any, field: str, base: dict[str, Any]) -> None:
    guidance = {SampleConfig: "guidance", InferenceSpec: "guidance"}.get(model, "guidance_scale")
    if model is GenerateRequest:
        guidance = "guidance"
    model.model_validate({**base, field: 1000, guidance: 50})
    model.model_validate({**base, field: 1, guidance: 0})
    for bad in ({field: 1001}, {field: 0}, {guidance: 50.5}, {guidance: -0.1}):
        with pytest.raises(ValidationError):
            model.model_validate({**base, **bad})


# ---- auth, metrics, page, precision -------------------------------------------------------------


def test_auth_on_needs_the_bearer_token_only_on_the_api(pipe: Recording) -> None:
    for c in start(create_app(lambda: pipe, DEFAULTS, EXACT, token="s3cret")):
        for path in ("/v1/images/generations", "/v1/generate"):
            r = c.post(path, json={"prompt": "p"})
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert c.post(path, json={"prompt": "p"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert c.post(path, json={"prompt": "p"}, headers={"Authorization": "Basic s3cret"}).status_code == 401
            assert c.post(path, json={"prompt": "p"}, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.post("/v1/generate", json={"steps": -1}).status_code == 401, "auth comes before validation"
        assert c.get("/v1/info").status_code == 401
        for open_path in ("/healthz", "/readyz", "/metrics", "/"):
            assert c.get(open_path).status_code == 200, open_path
        assert 'paris_requests_rejected_total{reason="unauthorized"} 8.0' in c.get("/metrics").text


def test_auth_off_needs_no_header(client: TestClient) -> None:
    assert client.post("/v1/images/generations", json={"prompt": "p"}).status_code == 200
    assert client.get("/v1/info").json()["experts"] == K


def test_the_token_comes_from_the_env_or_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from paris.errors import ConfigError

    monkeypatch.delenv("PARIS_SERVE_TOKEN", raising=False)
    monkeypatch.delenv("PARIS_SERVE_TOKEN_FILE", raising=False)
    assert read_token() is None
    (tmp_path / "token").write_text("from-file\n")
    monkeypatch.setenv("PARIS_SERVE_TOKEN_FILE", str(tmp_path / "token"))
    assert read_token() == "from-file"
    monkeypatch.setenv("PARIS_SERVE_TOKEN", "from-env")
    assert read_token() == "from-env"
    monkeypatch.delenv("PARIS_SERVE_TOKEN")
    monkeypatch.setenv("PARIS_SERVE_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="cannot read"):
        read_token()


def test_metric_names_and_bounded_labels(client: TestClient) -> None:
    client.post("/v1/generate", json={"prompt": "p", "count": 3})
    client.post("/v1/images/generations", json={"prompt": "p", "n": 2})
    client.post("/v1/generate", json={"prompt": "p", "steps": 0})
    client.get("/no/such/path/" + "x" * 50)
    client.request("BREW", "/healthz")
    text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {
        "paris_http_requests", "paris_http_request_duration_seconds", "paris_http_requests_in_flight",
        "paris_queue_depth", "paris_generation_in_flight", "paris_batch_size_images", "paris_batch_size_requests",
        "paris_generate_seconds", "paris_images_generated", "paris_requests_rejected", "paris_generation_errors",
        "paris_expert_routing_weight", "paris_expert_calls", "paris_model_ready",
    } <= set(families)
    assert families["paris_http_request_duration_seconds"].type == "histogram"
    assert families["paris_batch_size_images"].type == "histogram"
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert values[("paris_images_generated_total", ())] == 5
    assert values[("paris_http_requests_total", (("code", "422"), ("method", "POST"), ("route", "/v1/generate")))] == 1
    assert values[("paris_http_requests_total", (("code", "404"), ("method", "GET"), ("route", "other")))] == 1
    assert any(k[0] == "paris_http_requests_total" and ("method", "other") in k[1] for k in values)
    routes = {dict(k[1]).get("route") for k in values if "route" in dict(k[1])}
    assert routes <= {"/v1/generate", "/v1/images/generations", "/healthz", "/metrics", "other"}
    weight = sum(v for (n, _), v in values.items() if n == "paris_expert_routing_weight_total")
    assert abs(weight - 5) < 1e-6, "each image's routing weights add up to one"
    assert sum(1 for (n, _), _v in values.items() if n == "paris_expert_calls_total") == K
    assert values[("paris_model_ready", ())] == 1


def test_the_playground_page_is_self_contained(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert 'id="prompt"' in page and 'id="generate"' in page and "/v1/images/generations" in page
    for external in ("src=\"http", "href=\"http", "src='http", "@import", "cdn"):
        assert external not in page.lower(), f"the page must work offline: found {external}"


def test_bf16_serving_halves_the_weights_and_still_generates() -> None:
    pipe = random_pipeline(K)
    app = create_app(lambda: pipe, DEFAULTS, ServeConfig(precision="bf16"))
    fp32_bytes = sum(p.numel() * 4 for p in pipe.router.parameters())
    for c in start(app):
        info = c.get("/v1/info").json()
        assert info["precision"] == "bfloat16"
        assert all(p.dtype == torch.bfloat16 for p in pipe.router.parameters())
        assert sum(p.numel() * p.element_size() for p in pipe.router.parameters()) == fp32_bytes // 2
        r = c.post("/v1/images/generations", json={"prompt": "p", "n": 2})
        assert r.status_code == 200 and all(abs(sum(d["expert_usage"]) - 1) < 1e-3 for d in r.json()["data"])
