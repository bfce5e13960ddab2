"""One optimizer step of the shared training loop, and the choices that make it fast.

Every choice below was measured one at a time against diffusers' DiT and paris's previous
step (bench/train_step.py; the figures are in bench/README.md):

- precision: bf16 autocast where the device has a bf16 unit (paris.devices);
- attention: a kernel per device and fused q/k/v projections (paris.trainer.attention);
- `torch.compile` of each transformer block ("regional" compilation: identical blocks share
  one compiled graph, so compiling costs one block, not the whole depth), with the
  feed-forward's tanh GELU as a sigmoid there (paris.trainer.gelu);
- fused AdamW and a foreach EMA update (one lerp per tensor);
- no host sync: the loss stays on the device; the loop reads it every `log_every` steps;
- TF32 on CUDA; gradient checkpointing as an option for large presets (memory, not speed).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any, cast

import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.nn.parallel import DistributedDataParallel

from paris.config import TrainConfig
from paris.devices import enable_tf32
from paris.progress import console
from paris.trainer.attention import Kernel, default_kernel, set_attention
from paris.trainer.gelu import set_sigmoid_gelu

LossFn = Callable[[torch.nn.Module, torch.Generator, torch.device], torch.Tensor]


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call (matmuls and attention, forward and backward), by torch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def step_generator(seed: int, step: int, micro: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 1_009 + micro)


@dataclass(frozen=True)
class StepOptions:
    """How a step runs; `for_config` gives the defaults, the benchmark turns them one by one."""

    amp: torch.dtype | None  # autocast dtype; None = fp32
    attention: Kernel | None  # None: leave diffusers' own processor
    fuse_projections: bool
    fused_optimizer: bool
    compile: bool
    gradient_checkpointing: bool = False
    sigmoid_gelu: bool = False  # only pays inside compiled blocks (paris.trainer.gelu)

    @classmethod
    def for_config(cls, cfg: TrainConfig, device: torch.device, amp: torch.dtype | None) -> StepOptions:
        return cls(
            amp=amp,
            attention=default_kernel(device, amp),
            fuse_projections=True,
            fused_optimizer=device.type in ("cpu", "cuda"),
            compile=cfg.compile and device.type in ("cpu", "cuda"),
            gradient_checkpointing=cfg.gradient_checkpointing,
            sigmoid_gelu=device.type == "cpu",
        )

    @classmethod
    def baseline(cls, amp: torch.dtype | None) -> StepOptions:
        """paris's step before this module: diffusers' SDPA processor, foreach AdamW, eager."""
        return cls(amp=amp, attention=None, fuse_projections=False, fused_optimizer=False, compile=False)

    def but(self, **changes: Any) -> StepOptions:
        return replace(self, **changes)


def compiler_found(device: torch.device) -> bool:
    """Whether torch.compile can build kernels here: inductor compiles C++ on a CPU and
    triton's launchers with a C compiler on CUDA. The trainer image ships no compiler (a
    final layer without build tools), so there the step runs eager instead of failing."""
    import shutil

    if device.type == "cuda":
        return any(shutil.which(c) for c in (os.environ.get("CC", "cc"), "gcc", "clang"))
    from torch._inductor import cpp_builder, exc

    # inductor's search caches its first answer for the process: ask it afresh (PATH may differ).
    cpp_builder.cpp_compiler_search.cache_clear()
    try:
        cpp_builder.get_cpp_compiler()
    except (exc.InvalidCxxCompiler, RuntimeError):
        return False
    return True


def compile_blocks(model: torch.nn.Module) -> int:
    """Compile every transformer block in place (state_dict keys unchanged); returns how many.

    Static shapes only: each caption length (a multiple of paris.trainer.model.TEXT_MULTIPLE)
    gets its own graph, compiled the same way whenever it first appears, so a run resumed
    mid-way computes with the very kernels of an uninterrupted one (a dynamic-shape graph
    would depend on which lengths came first)."""
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 32)
    n = 0
    for m in model.modules():
        if isinstance(m, BasicTransformerBlock):
            m.compile(dynamic=False)
            n += 1
    return n


def prepare_model(model: torch.nn.Module, device: torch.device, options: StepOptions) -> torch.nn.Module:
    """Move `model` to `device` and apply the options that change how it computes."""
    enable_tf32(device)
    model.to(device).train()
    if options.attention is not None:
        set_attention(model, options.attention, options.fuse_projections)
    if options.gradient_checkpointing:
        cast(Any, model).enable_gradient_checkpointing()
    if options.compile and not compiler_found(device):
        console.print(f"train.compile: no compiler for {device.type} kernels on this machine; running eager")
    elif options.compile:
        if options.sigmoid_gelu:
            set_sigmoid_gelu(model)
        compile_blocks(model)
    return model


class LerpEMA(EMAModel):
    """diffusers' EMAModel (decay schedule, state_dict, save and load) whose foreach update is
    one in-place lerp per tensor: ema += (1 - decay)·(θ - ema). diffusers' foreach form,
    ema -= (1 - decay)·(ema - θ), first writes the differences to temporaries, a second pass
    over every parameter: 50 against 23 ms a step at DiT-S/2 on one CPU core."""

    @torch.no_grad()
    def step(self, parameters: Any) -> None:
        params = list(parameters)
        if not self.foreach or not all(p.requires_grad for p in params):
            return super().step(params)
        self.optimization_step += 1
        decay = self.get_decay(self.optimization_step)
        self.cur_decay_value = decay
        torch._foreach_lerp_(self.shadow_params, params, 1 - decay)
        return None


class TrainStep:
    """forward + backward (grad_accum micro-batches) + clip + AdamW + LR schedule + EMA.

    Returns the step's loss as a detached device tensor: reading it is the caller's choice
    (and a host sync on a GPU)."""

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: TrainConfig,
        device: torch.device,
        options: StepOptions,
        ddp: DistributedDataParallel | None = None,
    ) -> None:
        self.model = model
        self.cfg = cfg
        self.device = device
        self.options = options
        self.forward_model: torch.nn.Module = ddp if ddp is not None else model
        self.ddp = ddp
        self.params = [p for p in model.parameters() if p.requires_grad]
        fused = options.fused_optimizer
        self.optimizer = torch.optim.AdamW(
            self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None, foreach=False if fused else None
        )
        self.lr_sched = get_scheduler("constant_with_warmup", self.optimizer, num_warmup_steps=cfg.warmup_steps)
        self.ema = LerpEMA(
            model.parameters(),
            decay=cfg.ema_decay,
            foreach=options.fused_optimizer,
            model_cls=type(model),
            model_config=cast(Any, model).config,
        )

    def autocast(self) -> Any:
        amp = self.options.amp
        return torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None)

    def __call__(self, loss_fn: LossFn, step: int) -> torch.Tensor:
        cfg = self.cfg
        total = torch.zeros((), device=self.device)
        for micro in range(cfg.grad_accum):
            g = step_generator(cfg.seed, step, micro)
            last = micro == cfg.grad_accum - 1
            sync = nullcontext() if self.ddp is None or last else self.ddp.no_sync()
            with sync:
                with self.autocast():
                    loss = loss_fn(self.forward_model, g, self.device) / cfg.grad_accum
                loss.backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm, foreach=self.options.fused_optimizer)
        self.optimizer.step()
        self.lr_sched.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(self.model.parameters())
        return total
