"""What the router learns: cross-entropy of the cluster of x_0 given the noisy x_t (and t,
and the caption when text-conditioned), on batches drawn from the routed clusters' stream."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F

from paris.config import TrainConfig
from paris.data.shards import ShardSet
from paris.data.stream import Batches
from paris.trainer.distributed import local_part
from paris.trainer.flow import interpolate, model_timestep, sample_t
from paris.trainer.loop import LossFn
from paris.trainer.model import trim_text

from .model import ParisRouter


def router_logits(
    model: ParisRouter,
    data: ShardSet,
    idx: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    device: torch.device,
    drop: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Router logits for samples idx at noise t; `drop` = (rows, null states, null mask)
    replaces the captions of those rows (a bool mask, perhaps all False) with the empty caption."""
    x_t = interpolate(data.latents[idx], eps, t)
    text = mask = None
    router = cast(ParisRouter, getattr(model, "module", model))  # DDP wraps the router in .module
    if router.config.caption_channels:
        text, mask = data.text_states[idx].float(), data.text_mask[idx].clone()
        if drop is not None:
            rows, null_states, null_mask = drop
            text[rows], mask[rows] = null_states.float(), null_mask
        text, mask = trim_text(text, mask)  # on the CPU: no device sync
        text, mask = text.to(device), mask.to(device)
    return model(x_t.to(device), model_timestep(t).to(device), text, mask)


def class_of(clusters: list[int]) -> torch.Tensor:
    """Data cluster id -> router class (its position among the experts routed over)."""
    lookup = torch.full((max(clusters) + 1,), -1, dtype=torch.long)
    lookup[torch.tensor(clusters)] = torch.arange(len(clusters))
    return lookup


def targets(data: ShardSet, idx: torch.Tensor, label_of: torch.Tensor | None) -> torch.Tensor:
    """The router classes of samples `idx`: their clusters, through `label_of` when given."""
    return data.clusters[idx] if label_of is None else label_of[data.clusters[idx]]


# A batch: its window, row indices, noise levels, noise, and the rows given the empty caption.
Draw = tuple[ShardSet, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def draw(stream: Batches, g: torch.Generator, cfg: TrainConfig) -> Draw:
    """A training batch as the router sees it: rows of the stream, their noise level and noise,
    and which rows get the empty caption (`caption_dropout`)."""
    b = cfg.batch_size
    data, idx = stream.batch(g, b)
    t = sample_t(b, cfg.timestep_sampling, g, cfg.logit_mean, cfg.logit_std, cfg.mode_scale)
    eps = torch.randn(data.latents[idx].shape, generator=g)
    rows = torch.zeros(b, dtype=torch.bool)
    if cfg.caption_dropout > 0:
        rows = torch.rand(b, generator=g) < cfg.caption_dropout
    return data, idx, t, eps, rows


def router_loss(
    stream: Batches,
    null_text: tuple[torch.Tensor, torch.Tensor],
    cfg: TrainConfig,
    label_of: torch.Tensor | None = None,
) -> LossFn:
    """Cross-entropy against the cluster of x_0 (as a class: `label_of`). A caption-aware
    router sees the empty caption in `caption_dropout` of the rows, so it also estimates
    p(k | x_t, t) for the unconditional CFG branch (paris.router.pipeline, guidance_routing="separate")."""

    def loss_fn(model: torch.nn.Module, g: torch.Generator, device: torch.device) -> torch.Tensor:
        data, idx, t, eps, rows = draw(stream, g, cfg)
        idx, t, eps, rows = local_part(idx, t, eps, rows)  # this rank's slice of the global batch
        logits = router_logits(cast(ParisRouter, model), data, idx, t, eps, device, (rows, *null_text))
        return F.cross_entropy(logits.float(), targets(data, idx, label_of).to(device))

    return loss_fn
