"""Small configs for fast tests: a slice of the digits, two clusters, a few steps."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

T = TypeVar("T")


def eventually(
    fn: Callable[[], T | None],
    timeout: float = 60.0,
    what: str = "condition",
    debug: Callable[[], str] | None = None,
    interval: float = 0.2,
) -> T:
    """Poll until fn returns something truthy; fail with `what` (and debug text) otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}" + (f"\n{debug()}" if debug else ""))
        time.sleep(interval)


def deep_update(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def tiny_config(store_uri: str, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": "tiny",
        "storage": {"uri": store_uri},
        "data": {"name": "digits-mini", "source": "digits", "limit": 300, "clusters": 2, "fine_clusters": 8,
                 "text_encoder": {"max_length": 12}},
        "expert": {"preset": "tiny", "hidden_size": 32, "depth": 1, "heads": 2},
        "train": {"steps": 2, "batch_size": 8, "checkpoint_every": 1, "log_every": 1, "threads": 1},
        "router": {"model": {"hidden_size": 32, "depth": 1, "heads": 2},
                   "train": {"steps": 2, "batch_size": 8, "checkpoint_every": 1, "log_every": 1, "threads": 1}},
        "sample": {"steps": 2, "per_prompt": 1, "routing": ["top1", "full"]},
        "parallel": 2,
    }
    return deep_update(base, over)


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def paris_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the real `paris` command in a fresh process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "paris", *args], capture_output=True, text=True, cwd=cwd,
        env={**os.environ, **(env or {})}, timeout=timeout,
    )


@contextlib.contextmanager
def serving(app: Any, timeout: float = 60.0) -> Iterator[str]:
    """Run an ASGI app under a real uvicorn server on a loopback port (in a thread); yields
    its base URL and stops the server on exit."""
    import socket
    import threading

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    try:
        eventually(lambda: server.started, timeout, "uvicorn to start", interval=0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


class Recording:
    """The real pipeline, plus a record of every call and an optional gate that holds calls."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.calls: list[dict[str, Any]] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.fail: Exception | None = None

    def __getattr__(self, name: str) -> Any:  # router, device, components: the real pipeline's
        return getattr(self.pipe, name)

    def __call__(self, prompts: list[str], **kw: Any) -> Any:
        gen = kw.get("generator")
        self.calls.append({"prompts": list(prompts), "seed": gen.initial_seed() if gen is not None else None, **kw})
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(120), "the test never opened the gate"
        if self.fail is not None:
            raise self.fail
        return self.pipe(prompts, **kw)


def served_pipeline(store: Path, model: str) -> Path:
    """The folder of the pipeline a file:// store serves: the version its pointer names."""
    import json

    pointer = json.loads((store / f"models/{model}/pipeline.json").read_text())
    return store / pointer["prefix"]
