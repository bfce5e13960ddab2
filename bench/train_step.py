"""Side-by-side cost of one expert training step on this CPU: precision x attention kernel.

Ratios, not absolute times, are the result: the variants run interleaved in one process, so
machine noise hits them alike. This is what chose bf16 autocast + the math SDPA kernel as
the CPU defaults (paris.trainer.loop.autocast_dtype / attention_backend).

    python bench/train_step.py [--preset tiny] [--batch 64] [--size 8] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from paris.config import ExpertModelConfig
from paris.trainer.model import build_expert, expert_velocity


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = build_expert(ExpertModelConfig(preset=args.preset), {"size": args.size, "channels": 1}, 384)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 1, args.size, args.size, generator=g)
    text = torch.randn(args.batch, 16, 384, generator=g)
    mask = torch.ones(args.batch, 16, dtype=torch.bool)
    ts = torch.rand(args.batch, generator=g) * 1000

    variants = {
        "fp32 + flash": (None, SDPBackend.FLASH_ATTENTION),
        "fp32 + math": (None, SDPBackend.MATH),
        "bf16 + flash": (torch.bfloat16, SDPBackend.FLASH_ATTENTION),
        "bf16 + math": (torch.bfloat16, SDPBackend.MATH),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}

    def step(dtype: torch.dtype | None) -> None:
        ctx = torch.autocast("cpu", dtype=dtype) if dtype else nullcontext()
        with ctx:
            v = expert_velocity(model, x, ts, text, mask)
        v.float().pow(2).mean().backward()

    for _ in range(args.rounds):  # interleaved rounds: noise spreads evenly over variants
        for name, (dtype, backend) in variants.items():
            with sdpa_kernel([backend]):
                step(dtype)  # warm-up
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step(dtype)
                times[name].append((time.perf_counter() - t0) / args.steps)

    base = statistics.median(times["fp32 + flash"])
    print(f"{args.preset} expert, batch {args.batch}, {args.size}x{args.size}, {args.threads} thread(s)")
    print(f"{'variant':<14} {'median s/step':>14} {'speed-up vs fp32+flash':>24}")
    for name, ts_ in times.items():
        med = statistics.median(ts_)
        print(f"{name:<14} {med:>14.4f} {base / med:>23.2f}x")


if __name__ == "__main__":
    main()
