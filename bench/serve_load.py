"""Load on `paris serve`: batching on vs off with 8 clients, and load shedding with 64.

Two real servers (uvicorn subprocesses, the same untrained digits-sized pipeline) run side by
side: one batches compatible requests (max_batch 16), the other has batching off (max_batch 1).
Throughput is measured in interleaved rounds, so machine noise hits both alike, and reported
as a ratio. Then 64 clients load the batching server, whose queue holds 32: the excess must
get 429 (the clients back off for Retry-After, as the OpenAI SDK does), not time out, while
a prober's /healthz latency stays low.

Bounded: loopback only (127.0.0.1), every phase has a fixed duration, every request a client
timeout, and the servers are stopped on exit.

    python bench/serve_load.py                  # the README's figures (about 3 minutes)
    python bench/serve_load.py --quick          # a few seconds; the test runs this
    python bench/serve_load.py --out runs/bench/serve_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from paris.config import ServeConfig

HOST = "127.0.0.1"


# ---- the server side (a subprocess) -------------------------------------------------------------


def run_server(args: argparse.Namespace) -> None:
    """Build the pipeline, bind a loopback port, print it, serve until killed."""
    import socket

    import torch
    import uvicorn

    from paris.config import ExpertModelConfig, RouterModelConfig, SampleConfig
    from paris.router.assemble import random_pipeline
    from paris.router.server import create_app

    torch.set_num_threads(args.threads)
    if args.quick:
        expert, router = ExpertModelConfig(hidden_size=32, depth=1, heads=2), None
    else:  # the digits demo's models: tiny preset experts, text-conditioned tiny router
        expert = ExpertModelConfig(preset="tiny")
        router = RouterModelConfig(preset="tiny", condition_on_text=True)
    pipe = random_pipeline(args.experts, expert, router)
    settings = ServeConfig(max_batch=args.max_batch, max_queue=args.max_queue, timeout_s=args.server_timeout,
                           max_wait_ms=args.max_wait_ms)
    app = create_app(lambda: pipe, SampleConfig(steps=args.steps, routing=["top2"]), settings, model_name="bench")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))
    print(sock.getsockname()[1], flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])


class Server:
    def __init__(self, name: str, max_batch: int, args: argparse.Namespace) -> None:
        self.name = name
        cmd = [sys.executable, __file__, "--serve", "--max-batch", str(max_batch), "--max-queue", str(args.max_queue),
               "--steps", str(args.steps), "--experts", str(args.experts), "--threads", str(args.threads),
               "--server-timeout", str(args.server_timeout), "--max-wait-ms", str(args.max_wait_ms),
               *(["--quick"] if args.quick else [])]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "DIFFUSERS_VERBOSITY": "error", "TRANSFORMERS_VERBOSITY": "error",
               "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            self.stop()
            raise SystemExit(f"the {name} server did not start")
        self.url = f"http://{HOST}:{line}"

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"the {self.name} server did not become ready in {timeout:.0f}s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---- the client side ------------------------------------------------------------------------------


def _body(i: int) -> dict[str, Any]:
    digits = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    return {"prompt": f"a handwritten digit {digits[i % 10]}", "n": 1}


async def _client(http: httpx.AsyncClient, url: str, until: float, outcomes: Counter[str],
                  latencies: list[float], backoff: bool, timeout: float, i: int) -> None:
    while time.monotonic() < until:
        t0 = time.monotonic()
        try:
            r = await http.post(url + "/v1/images/generations", json=_body(i), timeout=timeout)
        except httpx.TimeoutException:
            outcomes["client timeout"] += 1
            continue
        except httpx.TransportError:
            outcomes["connection error"] += 1
            await asyncio.sleep(0.1)
            continue
        outcomes[str(r.status_code)] += 1
        if r.status_code == 200:
            latencies.append(time.monotonic() - t0)
        elif r.status_code == 429 and backoff:
            await asyncio.sleep(min(float(r.headers.get("retry-after", "1")), max(0.0, until - time.monotonic())))


async def _load(url: str, clients: int, seconds: float, timeout: float) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(limits=limits) as http:
        t0 = time.monotonic()
        until = t0 + seconds
        await asyncio.gather(*(_client(http, url, until, outcomes, latencies, True, timeout, i)
                               for i in range(clients)))
        elapsed = time.monotonic() - t0
    ok = outcomes.get("200", 0)
    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "images_per_s": round(ok / elapsed, 3),
        "outcomes": dict(outcomes),
        "latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
    }


def _probe(url: str, stop: threading.Event, out: list[float], period: float = 0.05) -> None:
    """GET /healthz every `period` seconds from its own thread and connection."""
    with httpx.Client(timeout=10) as http:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                ok = http.get(url + "/healthz").status_code == 200
            except httpx.TransportError:
                ok = False
            out.append(time.perf_counter() - t0 if ok else float("inf"))
            stop.wait(period)


def _batch_sizes(url: str) -> tuple[float, float]:
    """(images, pipeline calls) so far, from the server's batch-size histogram."""
    text = httpx.get(url + "/metrics", timeout=10).text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("paris_batch_size_images_")}
    return values.get("paris_batch_size_images_sum", 0.0), values.get("paris_batch_size_images_count", 0.0)


def _percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="seconds instead of minutes (structure, not figures)")
    ap.add_argument("--seconds", type=float, default=None, help="per throughput round")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved throughput rounds per mode")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps per image")
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2, help="torch threads per server (the 2 cores)")
    ap.add_argument("--max-queue", type=int, default=32)
    ap.add_argument("--server-timeout", type=float, default=60.0)
    ap.add_argument("--max-wait-ms", type=float, default=ServeConfig().max_wait_ms, help="serve.max_wait_ms")
    ap.add_argument("--out", type=Path, default=None, help="also write the results here as JSON")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--max-batch", type=int, default=16, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.steps = args.steps or (2 if args.quick else 20)
    if args.serve:
        return run_server(args)
    seconds = args.seconds or (1.5 if args.quick else 20.0)
    rounds = args.rounds or (1 if args.quick else 2)
    client_timeout = 2 * args.server_timeout

    servers: dict[str, Server] = {}
    try:
        servers = {"batching": Server("batching", 16, args), "no batching": Server("no batching", 1, args)}
        for srv in servers.values():
            srv.wait_ready()
        for srv in servers.values():  # warm-up: first calls pay one-off costs
            asyncio.run(_load(srv.url, 2, 0.5 if args.quick else 3, client_timeout))

        rates: dict[str, list[float]] = {name: [] for name in servers}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
        for _ in range(rounds):
            for name, srv in servers.items():
                images0, calls0 = _batch_sizes(srv.url)
                res = asyncio.run(_load(srv.url, 8, seconds, client_timeout))
                images1, calls1 = _batch_sizes(srv.url)
                res["mean_batch_images"] = round((images1 - images0) / max(1.0, calls1 - calls0), 2)
                rates[name].append(res["images_per_s"])
                runs[name].append(res)
        on, off = statistics.median(rates["batching"]), statistics.median(rates["no batching"])

        probes: list[float] = []
        stop = threading.Event()
        prober = threading.Thread(target=_probe, args=(servers["batching"].url, stop, probes), daemon=True)
        prober.start()
        shed = asyncio.run(_load(servers["batching"].url, 64, seconds, client_timeout))
        stop.set()
        prober.join(15)
        failures = sum(1 for p in probes if p == float("inf"))
        finite = [p for p in probes if p != float("inf")]
    finally:
        for srv in servers.values():
            srv.stop()

    result = {
        "settings": {"steps": args.steps, "experts": args.experts, "threads_per_server": args.threads,
                     "max_batch": 16, "max_queue": args.max_queue, "max_wait_ms": args.max_wait_ms,
                     "seconds_per_round": seconds,
                     "rounds": rounds, "quick": args.quick, "cpus": os.cpu_count()},
        "throughput": {
            "clients": 8,
            "batching_images_per_s": on,
            "no_batching_images_per_s": off,
            "speedup": round(on / off, 2) if off else None,
            "runs": runs,
        },
        "shedding": {
            **shed,
            "healthz_probes": len(probes),
            "healthz_failures": failures,
            "healthz_p50_ms": round(1000 * _percentile(finite, 0.5), 1),
            "healthz_p99_ms": round(1000 * _percentile(finite, 0.99), 1),
            "healthz_max_ms": round(1000 * max(finite), 1) if finite else None,
            "timeouts": shed["outcomes"].get("client timeout", 0) + shed["outcomes"].get("504", 0),
        },
    }
    t, s = result["throughput"], result["shedding"]
    print(f"8 clients, {args.steps} steps, {rounds} interleaved rounds of {seconds:g}s:")
    print(f"  batching on   {t['batching_images_per_s']:.2f} images/s")
    print(f"  batching off  {t['no_batching_images_per_s']:.2f} images/s")
    print(f"  speedup       {t['speedup']}x (mean images per pipeline call: "
          f"{statistics.mean(r['mean_batch_images'] for r in t['runs']['batching']):.1f} with batching)")
    print(f"64 clients for {seconds:g}s against a queue of {args.max_queue}: outcomes {s['outcomes']}")
    print(f"  /healthz p50 {s['healthz_p50_ms']} ms, p99 {s['healthz_p99_ms']} ms, max {s['healthz_max_ms']} ms "
          f"over {s['healthz_probes']} probes ({s['healthz_failures']} failed); timeouts {s['timeouts']}")
    print(json.dumps(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
