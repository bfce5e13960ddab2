"""Side-by-side measurement for bench/: interleaved rounds, ratios, the machine, MFU.

Each figure in bench/README.md is a ratio of two variants measured in the same process,
interleaved round by round (the order rotates each round), so that the load of a shared
machine falls on every variant alike. Each round is one torch.utils.benchmark measurement;
a variant's statistic is the min / median / max of its rounds.

On a CPU the default clock is the process's CPU time: for a single-threaded run it counts
the work done and not the time spent waiting for a core that another program holds (on
these shared machines the wall time of one step varies 2x from minute to minute). On CUDA
it is the wall clock, synchronized by torch.utils.benchmark.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
import timeit
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.utils.benchmark as benchmark

from paris.devices import cpu_info
from paris.trainer.step import count_flops as count_flops  # re-exported: `paris study` counts with it too


@dataclass
class Stats:
    rounds: list[float]  # seconds per call, one value per round

    @property
    def min(self) -> float:
        return min(self.rounds)

    @property
    def median(self) -> float:
        return statistics.median(self.rounds)

    @property
    def max(self) -> float:
        return max(self.rounds)


def clock_for(device: torch.device, name: str = "auto") -> tuple[str, Callable[[], float]]:
    if name == "auto":
        name = "cpu" if device.type == "cpu" else "wall"
    return name, time.process_time if name == "cpu" else timeit.default_timer


def interleaved(
    variants: dict[str, Callable[[], Any]],
    rounds: int,
    calls: int,
    clock: Callable[[], float],
    warmup: int = 1,
    log: Callable[[str], None] | None = None,
) -> dict[str, Stats]:
    """Time each variant `calls` times per round, rounds interleaved and rotated."""
    for name, fn in variants.items():
        for _ in range(warmup):
            fn()
        if log:
            log(f"warmed up {name}")
    out: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            timer = benchmark.Timer(stmt="fn()", globals={"fn": variants[name]}, timer=clock, label=name)
            out[name].append(timer.timeit(calls).mean)
        if log:
            log(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {out[n][-1]:.4f}s" for n in names))
    return {name: Stats(values) for name, values in out.items()}


def ratio(num: Stats, den: Stats) -> Stats:
    """Per-round ratio num/den: both were measured in the same round, side by side."""
    return Stats([a / b for a, b in zip(num.rounds, den.rounds, strict=True)])


def matmul_peak(device: torch.device, dtype: torch.dtype, clock: Callable[[], float], n: int = 0) -> float:
    """The best FLOP/s of a large square matmul: the denominator of MFU, measured, not a spec."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    timer = benchmark.Timer(stmt="a @ b", globals={"a": a, "b": b}, timer=clock)
    timer.timeit(2)
    best = min(timer.timeit(3).mean for _ in range(3))
    return 2 * n**3 / best


@dataclass
class Machine:
    cpu: str
    bf16_unit: str
    cores: int
    threads: int
    load_avg: list[float]
    torch: str
    device: str
    clock: str
    gpu: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        gpu = f", GPU {self.gpu}" if self.gpu else ""
        return (
            f"{self.cpu} ({self.bf16_unit} bf16 unit), {self.cores} cores, {self.threads} torch thread(s){gpu}; "
            f"load average {' '.join(f'{x:.1f}' for x in self.load_avg)}; torch {self.torch}; clock: {self.clock}"
        )


def machine(device: torch.device, clock: str) -> Machine:
    info = cpu_info()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return Machine(
        cpu=info.model if info.model != "unknown" else platform.processor(),
        bf16_unit=info.bf16_kind,
        cores=os.cpu_count() or 1,
        threads=torch.get_num_threads(),
        load_avg=[round(x, 2) for x in os.getloadavg()],
        torch=torch.__version__,
        device=str(device),
        clock=clock,
        gpu=gpu,
    )


def markdown(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_ratio(s: Stats) -> str:
    return f"**{s.median:.2f}×** ({s.min:.2f}–{s.max:.2f})"


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)

    def default(o: Any) -> Any:
        if isinstance(o, Stats):
            return {"min": o.min, "median": o.median, "max": o.max, "rounds": o.rounds}
        if isinstance(o, Machine):
            return asdict(o)
        if isinstance(o, Path):
            return str(o)
        raise TypeError(type(o))

    path.write_text(json.dumps(payload, indent=2, default=default))
