"""One pipeline call for a batch of HTTP requests, and each request's share of the result.

Requests that share steps, guidance and routing become one ParisPipeline call: their prompts
are concatenated (each repeated once per image) and the images are handed back in order.

Seeds. Each request draws its own starting noise from its own seed (the one it sent, or a
fresh one) and the call gets the concatenation as `latents`, so a request's images do not
depend on what it was batched with: sending its reported seed back reproduces them, alone or
in another batch (up to float rounding, since a batched matmul may round differently). A
stand-in pipeline without a router config cannot be given latents; it gets the first
request's generator, and only a request that ran alone reports a seed.

Per-image routing. The pipeline reports expert usage for the whole call. The router is called
once per denoising step on every row, so a forward hook on it sees each image's logits at each
step; the weights are recomputed with the pipeline's own `routing_weights`. A stand-in pipeline
without a router module gets the call's usage for every image.
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Hashable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from paris.config import parse_routing
from paris.plots import grid as tile_grid
from paris.plots import png_bytes
from paris.router.routing import routing_weights
from paris.trainer.loop import autocast_dtype


@dataclass(frozen=True)
class Work:
    """What one request asks of the pipeline (defaults already filled in)."""

    prompt: str
    count: int
    steps: int
    guidance: float
    routing: str
    seed: int | None = None
    size: int | None = None
    image_format: str = "png"
    quality: int | None = None
    trace: bool = False
    grid: bool = False  # also one PNG of all the images side by side

    @property
    def key(self) -> Hashable:
        """Requests with equal keys may share a pipeline call."""
        return (self.steps, self.guidance, self.routing)


@dataclass
class Done:
    images: list[bytes]  # encoded in Work.image_format
    usage: list[list[float]]  # per image: each expert's share of the routing weight (sums to 1)
    trace: list[list[list[float]]] | None  # per image, per step, per expert (when asked)
    seed: int | None  # reproduces these images; None only from a stand-in pipeline's shared call
    side: int  # pixels per side of the returned images
    grid: bytes | None
    batch_requests: int
    batch_images: int


@dataclass
class BatchStats:
    """The whole call, for metrics."""

    usage: list[float]  # routing weight per expert, in images
    calls: list[int]


def new_generator(seed: int) -> torch.Generator:
    """A CPU generator: the pipeline draws its noise on the CPU, the same on any device."""
    return torch.Generator().manual_seed(seed)


def resize(images: list[Image.Image], size: int | None) -> list[Image.Image]:
    """To size x size pixels: nearest-neighbour when enlarging (crisp digits), Lanczos when shrinking."""
    if size is None:
        return images
    out = []
    for im in images:
        method = Image.Resampling.NEAREST if size >= max(im.size) else Image.Resampling.LANCZOS
        out.append(im.resize((size, size), method))
    return out


def encode(image: Image.Image, fmt: str, quality: int | None) -> bytes:
    if fmt == "png":
        return png_bytes(image)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format=fmt.upper(), quality=quality if quality is not None else 90)
    return buf.getvalue()


class Runner:
    """Owns the pipeline in the worker thread: precision, the routing hook, one call per batch."""

    def __init__(
        self, pipe: Any, shift: float | None = None, dtype: torch.dtype | None = None, guidance_routing: str = "shared"
    ) -> None:
        self.pipe, self.shift, self.dtype, self.guidance_routing = pipe, shift, dtype, guidance_routing
        self._logits: list[torch.Tensor] | None = None
        router = getattr(pipe, "router", None)
        self._hook = router.register_forward_hook(self._capture) if isinstance(router, torch.nn.Module) else None
        self.last: BatchStats | None = None

    def close(self) -> None:
        if self._hook is not None:
            self._hook.remove()

    def _capture(self, _module: torch.nn.Module, _args: Any, output: Any) -> None:
        if self._logits is not None and isinstance(output, torch.Tensor):
            self._logits.append(output.detach().float().cpu())

    def _latent_shape(self) -> tuple[int, int, int] | None:
        cfg = getattr(getattr(self.pipe, "router", None), "config", None)
        if cfg is None or not hasattr(cfg, "sample_size"):
            return None  # a stand-in pipeline
        return (int(cfg.in_channels), int(cfg.sample_size), int(cfg.sample_size))

    def _precision(self) -> AbstractContextManager[Any]:
        device = getattr(self.pipe, "device", None)
        if self.dtype is None or not isinstance(device, torch.device):
            return nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    def __call__(self, works: Sequence[Work]) -> list[Done]:
        first = works[0]
        seeds = [w.seed if w.seed is not None else secrets.randbelow(2**32) for w in works]
        prompts = [w.prompt for w in works for _ in range(w.count)]
        extra: dict[str, Any] = {"guidance_routing": self.guidance_routing}
        shape = self._latent_shape()
        if shape is not None:
            pairs = zip(works, seeds, strict=True)
            noise = [torch.randn((w.count, *shape), generator=new_generator(s)) for w, s in pairs]
            extra["latents"] = torch.cat(noise)
            reported: list[int | None] = list(seeds)
        else:
            reported = list(seeds) if len(works) == 1 else [None] * len(works)
        self._logits = []
        try:
            with self._precision():
                out = self.pipe(
                    prompts,
                    num_inference_steps=first.steps,
                    guidance_scale=first.guidance,
                    routing=first.routing,
                    num_images_per_prompt=1,
                    generator=new_generator(seeds[0]),  # what the pipeline draws from without latents
                    output_type="pil",
                    shift=self.shift,
                    **extra,
                )
            logits = self._logits
        finally:
            self._logits = None
        per_image, trace = self._routing(logits, len(prompts), first, list(out.usage))
        calls = list(getattr(out, "expert_calls", None) or [0] * len(out.usage))
        self.last = BatchStats([sum(u[k] for u in per_image) for k in range(len(out.usage))], calls)
        images = list(out.images)
        done, row = [], 0
        for w, seed in zip(works, reported, strict=True):
            mine = resize(images[row : row + w.count], w.size)
            done.append(
                Done(
                    images=[encode(im, w.image_format, w.quality) for im in mine],
                    usage=per_image[row : row + w.count],
                    trace=trace[row : row + w.count] if (trace is not None and w.trace) else None,
                    seed=seed,
                    side=mine[0].size[0],
                    grid=png_bytes(tile_grid(mine, cols=min(len(mine), 4))) if w.grid else None,
                    batch_requests=len(works),
                    batch_images=len(prompts),
                )
            )
            row += w.count
        return done

    @staticmethod
    def _routing(
        logits: list[torch.Tensor], rows: int, work: Work, call_usage: list[float]
    ) -> tuple[list[list[float]], list[list[list[float]]] | None]:
        """Per image: mean routing weight per expert over the steps, and the weights per step.

        With guidance_routing "separate" a text-conditioned router runs twice a step, the
        caption's branch first: its calls are every other one."""
        if len(logits) == 2 * work.steps:
            logits = logits[0::2]
        if len(logits) != work.steps or any(t.shape[0] != rows for t in logits):
            return [list(call_usage) for _ in range(rows)], None  # no router module seen: the call's usage
        keep = parse_routing(work.routing)
        w = torch.stack([routing_weights(t.softmax(-1), keep) for t in logits], dim=1)  # [rows, steps, K]
        return w.mean(1).double().tolist(), w.tolist()


def parameter_bytes(pipe: Any) -> int:
    """Bytes held by the pipeline's weights (every torch module among its components)."""
    total = 0
    for part in getattr(pipe, "components", {}).values():
        if isinstance(part, torch.nn.Module):
            total += sum(p.numel() * p.element_size() for p in part.parameters())
    return total


def serving_dtype(pipe: Any, precision: str) -> torch.dtype | None:
    """Cast the weights to the serving precision (bf16 where the device runs it fast, as in
    training), which halves their memory; the Runner's autocast handles fp32 inputs."""
    device = getattr(pipe, "device", None)
    if not isinstance(device, torch.device):
        return None  # a stand-in pipeline
    dtype = autocast_dtype(precision, device)
    if dtype is not None:
        pipe.to(dtype=dtype)
    return dtype
