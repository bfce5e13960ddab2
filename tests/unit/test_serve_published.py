"""`paris serve` on a pipeline trained and published for real (two 2-step experts and a router on
a slice of the digits): the server holds the EMA weights, and the command serves the OpenAI
route with a bearer token read from the environment."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch
from diffusers import PixArtTransformer2DModel

from paris.config import RunConfig, parse_config
from paris.data.prepare import prepare_dataset
from paris.layout import expert_prefix, router_prefix
from paris.router.assemble import build_pipeline, publish_pipeline
from paris.router.model import ParisRouter
from paris.router.server import pipeline_loader
from paris.router.train import train_router
from paris.storage import LocalStore
from paris.trainer.checkpoint import fetch_weights
from paris.trainer.expert import train_expert
from tests.helpers import eventually, tiny_config, write_config


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunConfig, Path]:
    root = tmp_path_factory.mktemp("published")
    raw = tiny_config(f"file://{root}/store", train={"steps": 3, "ema_decay": 0.9})
    cfg = parse_config(raw)
    store = LocalStore(root / "store")
    prepare_dataset(cfg.data, store)
    for k in range(cfg.data.clusters):
        train_expert(cfg, k, store)
    train_router(cfg, store)
    publish_pipeline(build_pipeline(cfg, store), store, cfg.model)
    return cfg, write_config(root / "config.yaml", raw)


def test_the_server_loads_every_experts_and_the_routers_ema_weights(published: tuple[RunConfig, Path]) -> None:
    cfg, _ = published
    store = LocalStore(Path(cfg.storage.uri.removeprefix("file://")))
    pipe = pipeline_loader(cfg)()
    with tempfile.TemporaryDirectory() as tmp:
        for k, served in enumerate(pipe.experts):
            prefix = expert_prefix(cfg.model, k)
            ema = PixArtTransformer2DModel.from_pretrained(fetch_weights(store, prefix, Path(tmp) / f"e{k}"))
            live = PixArtTransformer2DModel.from_pretrained(fetch_weights(store, prefix, Path(tmp) / f"m{k}", "model"))
            _same_weights(served, ema, live)
        ema_r = ParisRouter.from_pretrained(fetch_weights(store, router_prefix(cfg.model), Path(tmp) / "r"))
        live_r = ParisRouter.from_pretrained(fetch_weights(store, router_prefix(cfg.model), Path(tmp) / "rm", "model"))
        _same_weights(pipe.router, ema_r, live_r)


def _same_weights(served: torch.nn.Module, ema: torch.nn.Module, live: torch.nn.Module) -> None:
    s, e, m = served.state_dict(), ema.state_dict(), live.state_dict()
    assert s.keys() == e.keys()
    for name in s:
        torch.testing.assert_close(s[name], e[name], msg=name)
    assert any(not torch.equal(e[n], m[n]) for n in e), "EMA and live weights differ after training"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def paris_serve(published: tuple[RunConfig, Path], tmp_path: Path) -> Iterator[str]:
    _, config = published
    port = _free_port()
    (tmp_path / "token").write_text("t0ken\n")
    env = {**os.environ, "PARIS_SERVE_TOKEN_FILE": str(tmp_path / "token")}
    env.pop("PARIS_SERVE_TOKEN", None)
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "paris", "serve", str(config), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        try:
            return httpx.get(url + "/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        eventually(ready, 180, "paris serve to load the pipeline", debug=lambda: (tmp_path / "serve.log").read_text())
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_paris_serve_answers_the_openai_client_with_the_token_from_a_file(paris_serve: str) -> None:
    anonymous = openai.OpenAI(base_url=paris_serve + "/v1", api_key="not-the-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.images.generate(prompt="a handwritten digit four")
    client = openai.OpenAI(base_url=paris_serve + "/v1", api_key="t0ken", max_retries=0)
    resp = client.images.generate(model="tiny", prompt="a handwritten digit four", n=2, size="16x16",
                                  extra_body={"seed": 1, "routing": "full"})
    assert resp.data is not None and len(resp.data) == 2 and all(d.b64_json for d in resp.data)
    assert len((resp.data[0].model_extra or {})["expert_usage"]) == 2
    assert httpx.get(paris_serve + "/healthz").status_code == 200
    page = httpx.get(paris_serve + "/")
    assert page.status_code == 200 and "paris playground" in page.text
    assert "paris_images_generated_total 2.0" in httpx.get(paris_serve + "/metrics").text
