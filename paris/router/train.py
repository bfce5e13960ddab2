"""`paris train router`: cross-entropy of the cluster of x_0 given the noisy x_t (and t).

It is the only component that sees every cluster, and it sees latents only (plus captions
when text-conditioned); it runs after (or alongside) the experts, never talking to them.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from paris.config import RunConfig, TrainConfig
from paris.data.shards import ShardSet, load_manifest, load_null_text, load_split, split_shards
from paris.data.stream import Batches, ShardStream
from paris.layout import dataset_prefix, router_prefix
from paris.plots import accuracy_plot_png, save_loss_plot
from paris.progress import console
from paris.storage import Store
from paris.trainer.checkpoint import fetch_weights
from paris.trainer.distributed import local_part
from paris.trainer.flow import interpolate, model_timestep, sample_t
from paris.trainer.loop import LossFn, TrainResult, attention_backend, resolve_device, train
from paris.trainer.model import count_params, trim_text

from .model import ParisRouter, build_router

NOISE_BINS = np.linspace(0.0, 1.0, 11)
EVAL_SAMPLES = 8192  # held-out samples the accuracy is measured on (whole parts, in order)


def _inputs(
    model: ParisRouter,
    data: ShardSet,
    idx: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    device: torch.device,
    drop: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Router logits for samples idx at noise t; `drop` = (rows, null states, null mask)
    replaces those rows' captions with the empty caption."""
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


def router_loss(stream: Batches, null_text: tuple[torch.Tensor, torch.Tensor], cfg: TrainConfig) -> LossFn:
    """Cross-entropy against the cluster of x_0. A caption-aware router sees the empty caption
    in `caption_dropout` of the rows, so it also estimates p(k | x_t, t) for the unconditional
    CFG branch (paris.router.pipeline, guidance_routing="separate")."""
    b = cfg.batch_size

    def loss_fn(model: torch.nn.Module, g: torch.Generator, device: torch.device) -> torch.Tensor:
        data, idx = stream.batch(g, b)
        t = sample_t(b, cfg.timestep_sampling, g, cfg.logit_mean, cfg.logit_std, cfg.mode_scale)
        eps = torch.randn(data.latents[idx].shape, generator=g)
        rows = torch.zeros(b, dtype=torch.bool)
        if cfg.caption_dropout > 0:
            rows = torch.rand(b, generator=g) < cfg.caption_dropout
        idx, t, eps, rows = local_part(idx, t, eps, rows)  # this rank's slice of the global batch
        drop = (rows, *null_text) if cfg.caption_dropout > 0 else None
        logits = _inputs(cast(ParisRouter, model), data, idx, t, eps, device, drop)
        return F.cross_entropy(logits.float(), data.clusters[idx].to(device))

    return loss_fn


@torch.no_grad()
def accuracy_by_noise(
    model: ParisRouter, data: ShardSet, device: torch.device, seed: int = 0, repeats: int = 4
) -> list[dict[str, float]]:
    """Held-out top-1 accuracy of the router in each noise bin [t_i, t_i+1)."""
    model.eval().to(device)
    g = torch.Generator().manual_seed(seed)
    rows = []
    with attention_backend(device):
        for lo, hi in itertools.pairwise(NOISE_BINS):
            correct = total = 0
            for start in range(0, len(data), 256):
                idx = torch.arange(start, min(start + 256, len(data)))
                for _ in range(repeats):
                    t = lo + (hi - lo) * torch.rand(len(idx), generator=g)
                    eps = torch.randn(data.latents[idx].shape, generator=g)
                    pred = _inputs(model, data, idx, t, eps, device).argmax(-1).cpu()
                    correct += int((pred == data.clusters[idx]).sum())
                    total += len(idx)
            rows.append({"t_lo": round(float(lo), 2), "t_hi": round(float(hi), 2), "accuracy": correct / total})
    return rows


def train_router(cfg: RunConfig, store: Store) -> tuple[TrainResult, list[dict[str, float]]]:
    manifest = load_manifest(store, cfg.data.name)
    k = manifest["num_clusters"]
    tcfg = cfg.router.train
    # Every cluster's parts in one stream, each window mixing the clusters in proportion (the
    # parts of a cluster are spread through the epoch); nothing loads them all.
    split = [(i, p) for i in range(k) for p in split_shards(manifest, i)]
    stream = ShardStream(
        store,
        dataset_prefix(cfg.data.name),
        [p for _, p in split],
        tcfg.batch_size * tcfg.grad_accum,
        tcfg.window,
        tcfg.seed,
        groups=[i for i, _ in split],
    )
    torch.manual_seed(tcfg.seed)
    model = build_router(cfg.router.model, k, manifest["latent"], manifest["text"]["dim"])
    prefix = router_prefix(cfg.model)
    meta: dict[str, Any] = {"clusters": k, "samples": stream.samples, "params": count_params(model)}
    loss = router_loss(stream, load_null_text(store, manifest), tcfg)
    try:
        result = train(model, loss, tcfg, store, prefix, "router", meta, on_step=stream.at_step)
    finally:
        stream.close()
    acc: list[dict[str, float]] = []
    if not result.main:  # under torchrun, rank 0 alone scores and writes
        return result, acc
    save_loss_plot(store, f"{prefix}/loss.png", {"router": result.history})
    if manifest["holdout"]["size"]:
        holdout = load_split(store, manifest, "holdout", limit=EVAL_SAMPLES)
        with tempfile.TemporaryDirectory() as tmp:
            ema = ParisRouter.from_pretrained(fetch_weights(store, prefix, Path(tmp)))
        acc = accuracy_by_noise(ema, holdout, resolve_device(cfg.router.train.device), cfg.router.train.seed)
        store.put_json(f"{prefix}/accuracy.json", {"held_out": acc, "samples": len(holdout)})
        store.put_bytes(f"{prefix}/accuracy.png", accuracy_plot_png(acc))
        console.print(
            "router held-out accuracy by noise level: "
            + ", ".join(f"t<{r['t_hi']:.1f}: {r['accuracy']:.2f}" for r in acc)
        )
    return result, acc
