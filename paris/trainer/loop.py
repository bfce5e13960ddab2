"""The training loop shared by experts and the router: one process, one device, no collectives.

Resumable by construction: every random draw of step s comes from a generator seeded with
(seed, s), so a run resumed from the checkpoint at step s replays exactly the batches,
timesteps and noise that an uninterrupted run would have drawn.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.nn.attention import SDPBackend, sdpa_kernel

from paris.config import TrainConfig
from paris.devices import autocast_dtype, resolve_device  # re-exported: used from here elsewhere
from paris.errors import TrainingError
from paris.progress import bar, console
from paris.storage import Store
from paris.trainer.checkpoint import fetch_checkpoint, load_ema, save_checkpoint

LossFn = Callable[[torch.nn.Module, torch.Generator, torch.device], torch.Tensor]


def attention_backend(device: torch.device) -> AbstractContextManager[None]:
    """On the CPU the math SDPA kernel is faster than the flash one for these small models,
    most of all in the backward pass and under bf16 (measured by bench/train_step.py)."""
    if device.type == "cpu":
        return sdpa_kernel([SDPBackend.MATH])
    return nullcontext()


def step_generator(seed: int, step: int, micro: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 1_009 + micro)


def _no_collectives() -> None:
    # Paris experts share nothing: refuse to run inside a torch.distributed launch.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        raise RuntimeError("paris trainers must not run under torch.distributed")


@dataclass
class TrainResult:
    step: int
    loss: float
    seconds: float
    resumed_from: int | None
    history: list[tuple[int, float]] = field(default_factory=list)


def train(
    model: torch.nn.Module,
    loss_fn: LossFn,
    cfg: TrainConfig,
    store: Store,
    prefix: str,
    label: str,
    meta: dict[str, Any] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train `model` for cfg.steps optimizer steps, checkpointing to `prefix` in the store.
    `on_step(step)` runs before each step (the data stream moves its window there)."""
    _no_collectives()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    amp = autocast_dtype(cfg.mixed_precision, device)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_sched = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=cfg.warmup_steps)
    ema = EMAModel(model.parameters(), decay=cfg.ema_decay, model_cls=type(model), model_config=model.config)
    history: list[tuple[int, float]] = []
    start, resumed_from = 0, None

    with tempfile.TemporaryDirectory() as tmp:
        got = fetch_checkpoint(store, prefix, Path(tmp))
        if got is not None:
            start, d = got
            resumed_from = start
            loaded = cast(Any, type(model)).from_pretrained(d / "model")  # a diffusers ModelMixin
            model.load_state_dict(loaded.state_dict())
            ema_loaded = load_ema(d / "ema", type(model))
            ema.load_state_dict(ema_loaded.state_dict())
            optimizer.load_state_dict(torch.load(d / "optimizer.pt", weights_only=True))
            state = json.loads((d / "state.json").read_text())
            lr_sched.load_state_dict(state["lr_scheduler"])
            history = [(int(a), float(b)) for a, b in state["history"]]
            console.print(f"{label}: resuming from the checkpoint at step {start}")
    ema.to(device)

    if start >= cfg.steps:
        console.print(f"{label}: already trained ({start}/{cfg.steps} steps)")
        return TrainResult(start, history[-1][1] if history else math.nan, 0.0, resumed_from, history)

    def write_progress(step: int, loss: float, rate: float, state: str) -> None:
        remaining = (cfg.steps - step) / rate if rate > 0 else None
        store.put_json(
            f"{prefix}/progress.json",
            {
                "step": step,
                "total": cfg.steps,
                "loss": loss,
                "samples_per_s": round(rate * cfg.batch_size * cfg.grad_accum, 1),
                "device": str(device),
                "precision": str(amp).removeprefix("torch.") if amp else "fp32",
                "eta_s": round(remaining, 1) if remaining is not None else None,
                "state": state,
                "resumed_from": resumed_from,
                "updated": time.time(),
                "pid": os.getpid(),
                **(meta or {}),
            },
        )

    def checkpoint(step: int) -> None:
        save_checkpoint(
            store,
            prefix,
            step,
            model,
            ema,
            optimizer,
            {"lr_scheduler": lr_sched.state_dict(), "history": history, **(meta or {})},
            keep=cfg.keep_checkpoints,
        )

    t0 = time.time()
    smooth = history[-1][1] if history else math.nan
    log_every = max(1, min(cfg.log_every, cfg.steps))
    with bar(label) as progress, attention_backend(device):
        task = progress.add_task(label, total=cfg.steps, completed=start, info="")
        for step in range(start, cfg.steps):
            if on_step is not None:
                on_step(step)
            total = torch.zeros((), device=device)
            for micro in range(cfg.grad_accum):
                g = step_generator(cfg.seed, step, micro)
                with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    loss = loss_fn(model, g, device) / cfg.grad_accum
                loss.backward()
                total += loss.detach()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            lr_sched.step()
            optimizer.zero_grad(set_to_none=True)
            ema.step(model.parameters())

            value = float(total)
            if not math.isfinite(value):
                raise TrainingError(
                    f"{label}: loss became {value} at step {step + 1} (lr {cfg.lr:g}); lower train.lr "
                    "or raise train.warmup_steps"
                )
            smooth = value if math.isnan(smooth) else 0.95 * smooth + 0.05 * value
            done = step + 1
            if done % log_every == 0 or done == cfg.steps:
                history.append((done, round(smooth, 5)))
                rate = (done - start) / max(time.time() - t0, 1e-9)
                write_progress(done, smooth, rate, "training")
                progress.update(task, completed=done, info=f"loss {smooth:.4f}")
                if not progress.live.is_started and done % (log_every * 10) == 0:
                    console.print(f"{label}: step {done}/{cfg.steps} loss {smooth:.4f} ({rate:.1f} steps/s)")
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                checkpoint(done)

    seconds = time.time() - t0
    write_progress(cfg.steps, smooth, (cfg.steps - start) / max(seconds, 1e-9), "done")
    return TrainResult(cfg.steps, smooth, seconds, resumed_from, history)
