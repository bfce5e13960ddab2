"""`paris serve` under concurrent load, on a real uvicorn server (loopback) with a real tiny
ParisPipeline: the OpenAI client round trip, batching of compatible requests, 429 when the
queue is full, timeouts, clients that leave, and probes that never wait behind generation.

A gate in front of the real pipeline holds a call while the test lines up the queue, so the
outcomes are deterministic; no test asserts a timing."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from paris.config import SampleConfig, ServeConfig
from paris.router.assemble import random_pipeline
from paris.router.pipeline import ParisPipeline
from paris.router.server import create_app
from tests.helpers import Recording, eventually, serving

K = 3
DEFAULTS = SampleConfig(steps=2, guidance=2.0, routing=["top2"])
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny() -> ParisPipeline:
    return random_pipeline(K)


@contextmanager
def server(pipe: Any, token: str | None = None, **settings: Any) -> Iterator[tuple[str, Any]]:
    cfg = ServeConfig(precision="no", **settings)
    app = create_app(lambda: pipe, DEFAULTS, cfg, model_name="tiny", token=token)
    app.state.test_settings = cfg  # the live settings: a test may relax a limit mid-run
    with serving(app) as url:
        eventually(lambda: httpx.get(url + "/readyz").status_code == 200, 60, "the pipeline to load")
        yield url, app


def post(url: str, body: dict[str, Any], path: str = "/v1/images/generations", timeout: float = 120) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=timeout)


def metric(url: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    raise AssertionError(f"no sample {name}{labels}")


def size_of(b64: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(b64))).size


# ---- the OpenAI client ---------------------------------------------------------------------------


def test_the_official_openai_client_round_trip(tiny: ParisPipeline) -> None:
    with server(tiny) as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        extra = {"seed": 7, "num_inference_steps": 3, "guidance_scale": 1.5, "routing": "top2"}
        resp = client.images.generate(model="tiny", prompt="a handwritten digit three", n=2, size="32x32",
                                      response_format="b64_json", extra_body=extra)
        assert resp.data is not None and len(resp.data) == 2 and resp.created > 0
        assert all(d.b64_json and size_of(d.b64_json) == (32, 32) for d in resp.data)
        usage = (resp.data[0].model_extra or {})["expert_usage"]
        assert len(usage) == K and abs(sum(usage) - 1) < 1e-6
        again = client.images.generate(model="tiny", prompt="a handwritten digit three", n=2, size="32x32",
                                       response_format="b64_json", extra_body=extra)
        assert again.data is not None and [d.b64_json for d in again.data] == [d.b64_json for d in resp.data]
        plain = client.images.generate(prompt="a handwritten digit five")  # only what a stock client sends
        assert plain.data is not None and len(plain.data) == 1 and plain.data[0].b64_json
        with pytest.raises(openai.BadRequestError, match="not square"):
            client.images.generate(prompt="p", size="1536x1024")
        with pytest.raises(openai.NotFoundError, match="not served here"):
            client.images.generate(prompt="p", model="dall-e-3")
        assert [m.id for m in client.models.list()] == ["tiny"]


def test_the_openai_client_with_auth_on(tiny: ParisPipeline) -> None:
    with server(tiny, token="s3cret") as (url, _):
        wrong = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError, match="bearer token"):
            wrong.images.generate(prompt="p")
        right = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        data = right.images.generate(prompt="p").data
        assert data is not None and len(data) == 1
        assert httpx.get(url + "/healthz").status_code == 200, "probes need no token"


# ---- batching ------------------------------------------------------------------------------------


def test_compatible_requests_share_one_pipeline_call_and_keep_their_own_seeds(tiny: ParisPipeline) -> None:
    rec = Recording(tiny)
    rec.gate = threading.Event()
    with server(rec, max_batch=16, max_wait_ms=5) as (url, app), ThreadPoolExecutor(12) as pool:
        first = pool.submit(post, url, {"prompt": "first"})
        assert rec.entered.wait(60)
        same = [pool.submit(post, url, {"prompt": f"same {i}", "n": 1 + i % 2}) for i in range(6)]
        same.append(pool.submit(post, url, {"prompt": "seeded", "seed": 5}))
        other = [pool.submit(post, url, {"prompt": f"other {i}", "num_inference_steps": 3}) for i in range(2)]
        eventually(lambda: len(app.state.batcher.pending) == 9, 60, "nine requests queued")
        assert metric(url, "paris_queue_depth") == 9 and metric(url, "paris_generation_in_flight") == 1
        rec.gate.set()
        assert first.result().status_code == 200
        shared = [f.result() for f in same]
        assert all(f.result().status_code == 200 for f in other)
        seeded_alone = post(url, {"prompt": "seeded", "seed": 5})
        pair = shared[1].json()
        pair_alone = post(url, {"prompt": "same 1", "n": 2, "seed": pair["seed"]})
    assert all(r.status_code == 200 for r in shared)
    sizes = sorted(len(c["prompts"]) for c in rec.calls)
    assert sizes == [1, 1, 2, 2, 10], "first; seven requests (ten images) in one call; two of 3 steps; 1 + 2 alone"
    assert {r.headers["x-paris-batch"] for r in shared} == {"7"}
    assert [len(r.json()["data"]) for r in shared] == [1, 2, 1, 2, 1, 2, 1], "each gets its own images"
    assert all(isinstance(r.json()["seed"], int) and r.headers["x-paris-seed"] == str(r.json()["seed"])
               for r in shared), "every request reports the seed of its own noise"
    assert shared[-1].json()["seed"] == 5
    images = [[d["b64_json"] for d in r.json()["data"]] for r in (shared[-1], seeded_alone, shared[1], pair_alone)]
    assert images[0] == images[1], "a seeded request gets the same images in a batch as alone"
    assert images[2] == images[3], "the seed a batched request reports reproduces its images"


def test_batching_off_runs_every_request_alone(tiny: ParisPipeline) -> None:
    rec = Recording(tiny)
    rec.gate = threading.Event()
    with server(rec, max_batch=1) as (url, app), ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(post, url, {"prompt": f"p{i}"}) for i in range(4)]
        eventually(lambda: len(app.state.batcher.pending) == 3, 60, "three requests queued")
        rec.gate.set()
        assert all(f.result().status_code == 200 for f in futures)
    assert [len(c["prompts"]) for c in rec.calls] == [1, 1, 1, 1]


# ---- backpressure --------------------------------------------------------------------------------


def test_a_full_queue_answers_429_with_retry_after_while_probes_still_answer(tiny: ParisPipeline) -> None:
    rec = Recording(tiny)
    rec.gate = threading.Event()
    with server(rec, max_queue=2) as (url, app), ThreadPoolExecutor(4) as pool:
        held: list[Future[httpx.Response]] = [pool.submit(post, url, {"prompt": "first"})]
        assert rec.entered.wait(60)
        held += [pool.submit(post, url, {"prompt": f"queued {i}"}) for i in range(2)]
        eventually(lambda: len(app.state.batcher.pending) == 2, 60, "two requests queued")
        r = post(url, {"prompt": "one too many"})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "too many requests" in r.json()["error"]["message"]
        r = post(url, {"prompt": "one too many"}, path="/v1/generate")
        assert r.status_code == 429 and r.headers["retry-after"] and r.json()["error"]
        for path in ("/healthz", "/readyz", "/metrics", "/", "/v1/info"):
            assert httpx.get(url + path, timeout=10).status_code == 200, f"{path} waits behind generation"
        assert metric(url, "paris_requests_rejected_total", reason="queue_full") == 2
        rec.gate.set()
        assert [f.result().status_code for f in held] == [200, 200, 200]


def test_probes_answer_while_more_requests_wait_than_a_threadpool_has_threads(tiny: ParisPipeline) -> None:
    """The reported failure: past ~40 waiting requests, /healthz queued behind them (sync
    handlers share anyio's 40 worker threads) and the liveness probe restarted the pod."""
    rec = Recording(tiny)
    rec.gate = threading.Event()
    with server(rec, max_queue=64) as (url, app), ThreadPoolExecutor(50) as pool:
        waiting = [pool.submit(post, url, {"prompt": f"p{i}"}) for i in range(50)]
        batcher = app.state.batcher  # the held call may have taken a few that arrived together
        eventually(
            lambda: len(batcher.pending) + len(batcher.running) == 50 and len(batcher.pending) > 40,
            180,
            "over 40 requests queued behind a held call",
            lambda: f"queued: {len(batcher.pending)}, running: {len(batcher.running)}",
        )
        for path in ("/healthz", "/readyz", "/metrics"):
            assert httpx.get(url + path, timeout=10).status_code == 200, path
        rec.gate.set()
        assert all(f.result().status_code == 200 for f in waiting)


def test_a_request_past_its_timeout_gets_504_and_leaves_the_queue(tiny: ParisPipeline) -> None:
    rec = Recording(tiny)
    rec.gate = threading.Event()
    with server(rec, timeout_s=0.5) as (url, app), ThreadPoolExecutor(2) as pool:
        running = pool.submit(post, url, {"prompt": "running"})
        assert rec.entered.wait(60)
        queued = post(url, {"prompt": "queued"}, path="/v1/generate")
        assert queued.status_code == 504 and "within 0.5s" in queued.json()["error"]
        r = running.result()
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        assert not app.state.batcher.pending
        rec.gate.set()
        eventually(lambda: not app.state.batcher.running, 60, "the held call to finish")
        assert metric(url, "paris_requests_rejected_total", reason="timeout") == 2
        app.state.test_settings.timeout_s = 120  # a loaded machine may take over 0.5 s to generate
        assert post(url, {"prompt": "after"}).status_code == 200, "the server carries on"
    assert [c["prompts"] for c in rec.calls] == [["running"], ["after"]], "the timed-out queued request never ran"


def test_a_client_that_disconnects_is_dropped_from_the_queue(tiny: ParisPipeline) -> None:
    rec = Recording(tiny)
    rec.gate = threading.Event()
    with server(rec) as (url, app), ThreadPoolExecutor(2) as pool:
        running = pool.submit(post, url, {"prompt": "running"})
        assert rec.entered.wait(60)
        with pytest.raises(httpx.ReadTimeout):
            post(url, {"prompt": "impatient"}, timeout=1.0)  # gives up and closes the connection
        eventually(lambda: not app.state.batcher.pending, 30, "the server to drop the request")
        assert metric(url, "paris_requests_rejected_total", reason="client_gone") == 1
        rec.gate.set()
        assert running.result().status_code == 200
    assert [c["prompts"] for c in rec.calls] == [["running"]], "the abandoned request never ran"


def test_the_load_benchmark_quick_run_reports_both_modes_and_shedding(tmp_path: Path) -> None:
    out = tmp_path / "serve_load.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "serve_load.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    t, s = result["throughput"], result["shedding"]
    assert t["clients"] == 8 and t["batching_images_per_s"] > 0 and t["no_batching_images_per_s"] > 0
    assert t["speedup"] == pytest.approx(t["batching_images_per_s"] / t["no_batching_images_per_s"], rel=0.01)
    assert s["clients"] == 64 and s["healthz_probes"] > 0 and s["healthz_failures"] == 0
    assert s["outcomes"].get("200", 0) > 0 and set(s["outcomes"]) <= {"200", "429"}, s["outcomes"]
    assert s["timeouts"] == 0
    assert "speedup" in proc.stdout and "/healthz p50" in proc.stdout
