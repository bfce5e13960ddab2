"""The training loop shared by experts and the router: checkpoints, resume, progress.

One model per process group: one process, or the ranks of one `torchrun` launch that split
one expert's batch (paris.trainer.distributed); never a collective between experts. What a
step computes, and how fast, is paris.trainer.step.

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
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.parallel import DistributedDataParallel

from paris.config import TrainConfig
from paris.devices import autocast_dtype, resolve_device  # re-exported: used from here elsewhere
from paris.errors import TrainingError
from paris.progress import bar, console
from paris.storage import Store
from paris.trainer import distributed
from paris.trainer.checkpoint import fetch_checkpoint, load_ema, save_checkpoint
from paris.trainer.preempt import Preempted, StopRequest
from paris.trainer.step import LossFn, StepOptions, TrainStep, prepare_model, step_generator

__all__ = ["LossFn", "TrainResult", "attention_backend", "autocast_dtype", "resolve_device", "step_generator", "train"]


def attention_backend(device: torch.device) -> AbstractContextManager[None]:
    """For attention left on SDPA on the CPU: the math kernel beat the flash one for the tiny
    models (paris.trainer.attention replaces both where it can)."""
    if device.type == "cpu":
        return sdpa_kernel([SDPBackend.MATH])
    return nullcontext()


@dataclass
class TrainResult:
    step: int
    loss: float
    seconds: float
    resumed_from: int | None
    history: list[tuple[int, float]] = field(default_factory=list)
    main: bool = True  # rank 0 (or the only process): the one that writes to the store


def train(
    model: torch.nn.Module,
    loss_fn: LossFn,
    cfg: TrainConfig,
    store: Store,
    prefix: str,
    label: str,
    meta: dict[str, Any] | None = None,
    on_step: Callable[[int], None] | None = None,
    options: StepOptions | None = None,
) -> TrainResult:
    """Train `model` for cfg.steps optimizer steps, checkpointing to `prefix` in the store.
    `on_step(step)` runs before each step (the data stream moves its window there).

    Under torchrun every rank calls this with the same arguments; rank 0 alone writes."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    owned = distributed.init(device)
    try:
        return _train(model, loss_fn, cfg, store, prefix, label, meta or {}, on_step, options, device)
    finally:
        distributed.finish(owned)


def _train(
    model: torch.nn.Module,
    loss_fn: LossFn,
    cfg: TrainConfig,
    store: Store,
    prefix: str,
    label: str,
    meta: dict[str, Any],
    on_step: Callable[[int], None] | None,
    options: StepOptions | None,
    device: torch.device,
) -> TrainResult:
    ranks = distributed.check_one_expert(store.uri(prefix), cfg.batch_size)
    device = distributed.rank_device(device, ranks)
    amp = autocast_dtype(cfg.mixed_precision, device)
    options = options or StepOptions.for_config(cfg, device, amp)
    history: list[tuple[int, float]] = []
    start, resumed_from = 0, None

    with tempfile.TemporaryDirectory() as tmp:
        got = fetch_checkpoint(store, prefix, Path(tmp))
        state: dict[str, Any] = {}
        if got is not None:
            start, d = got
            resumed_from = start
            loaded = cast(Any, type(model)).from_pretrained(d / "model")  # a diffusers ModelMixin
            model.load_state_dict(loaded.state_dict())
            ema_loaded = load_ema(d / "ema", type(model))
            optimizer_state = torch.load(d / "optimizer.pt", weights_only=True)
            state = json.loads((d / "state.json").read_text())
            history = [(int(a), float(b)) for a, b in state["history"]]
            if ranks.main:
                console.print(f"{label}: resuming from the checkpoint at step {start}")

        prepare_model(model, device, options)
        ddp = None
        if ranks.world > 1:
            ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        step_fn = TrainStep(model, cfg, device, options, ddp)
        if got is not None:
            step_fn.ema.load_state_dict(ema_loaded.state_dict())
            step_fn.optimizer.load_state_dict(optimizer_state)
            step_fn.lr_sched.load_state_dict(state["lr_scheduler"])
    step_fn.ema.to(device)

    if start >= cfg.steps:
        if ranks.main:
            console.print(f"{label}: already trained ({start}/{cfg.steps} steps)")
        last = history[-1][1] if history else math.nan
        return TrainResult(start, last, 0.0, resumed_from, history, ranks.main)

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
                "ranks": ranks.world,
                "precision": str(amp).removeprefix("torch.") if amp else "fp32",
                "eta_s": round(remaining, 1) if remaining is not None else None,
                "state": state,
                "resumed_from": resumed_from,
                "updated": time.time(),
                "pid": os.getpid(),
                **meta,
            },
        )

    def checkpoint(step: int) -> None:
        save_checkpoint(
            store,
            prefix,
            step,
            model,
            step_fn.ema,
            step_fn.optimizer,
            {"lr_scheduler": step_fn.lr_sched.state_dict(), "history": history, **meta},
            keep=cfg.keep_checkpoints,
        )

    def read_losses(pending: list[torch.Tensor], stop: bool) -> tuple[list[float], bool]:
        """The one host sync: the losses of the steps since the last read (averaged over ranks),
        and whether any rank was asked to stop (the ranks agree on the step they stop at)."""
        losses = torch.stack(pending)
        if ranks.world > 1:
            both = torch.cat([losses, torch.tensor([float(stop)], device=losses.device, dtype=losses.dtype)])
            torch.distributed.all_reduce(both)
            losses, stop = both[:-1] / ranks.world, bool(both[-1].item() > 0)
        return cast(list[float], losses.tolist()), stop

    t0 = time.time()
    smooth = history[-1][1] if history else math.nan
    log_every = max(1, min(cfg.log_every, cfg.steps))
    pending: list[torch.Tensor] = []
    with bar(label) as progress, attention_backend(device), StopRequest() as sigterm:
        task = progress.add_task(label, total=cfg.steps, completed=start, info="")
        for step in range(start, cfg.steps):
            if on_step is not None:
                on_step(step)
            pending.append(step_fn(loss_fn, step))
            done = step + 1
            log_now = done % log_every == 0 or done == cfg.steps
            save_now = done % cfg.checkpoint_every == 0 or done == cfg.steps
            # One process stops at the next step; ranks agree at the next log line (no extra sync).
            stopping = sigterm.requested and ranks.world == 1
            if not (log_now or save_now or stopping):
                continue
            first = done - len(pending) + 1
            values, stopping = read_losses(pending, sigterm.requested)
            for i, value in enumerate(values):
                if not math.isfinite(value):
                    raise TrainingError(
                        f"{label}: loss became {value} at step {first + i} (lr {cfg.lr:g}); lower train.lr "
                        "or raise train.warmup_steps"
                    )
                smooth = value if math.isnan(smooth) else 0.95 * smooth + 0.05 * value
            pending.clear()
            if log_now or stopping:
                history.append((done, round(smooth, 5)))
                rate = (done - start) / max(time.time() - t0, 1e-9)
                if ranks.main:
                    write_progress(done, smooth, rate, "stopping" if stopping else "training")
                progress.update(task, completed=done, info=f"loss {smooth:.4f}")
                if ranks.main and not progress.live.is_started and done % (log_every * 10) == 0:
                    console.print(f"{label}: step {done}/{cfg.steps} loss {smooth:.4f} ({rate:.1f} steps/s)")
            if (save_now or stopping) and ranks.main:
                checkpoint(done)
            if stopping and done < cfg.steps:
                raise Preempted(label, done)

    seconds = time.time() - t0
    if ranks.main:
        write_progress(cfg.steps, smooth, (cfg.steps - start) / max(seconds, 1e-9), "done")
    return TrainResult(cfg.steps, smooth, seconds, resumed_from, history, ranks.main)
