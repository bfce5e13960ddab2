"""`paris train router`: cross-entropy of the cluster of x_0 given the noisy x_t (and t).

It is the only component that sees every cluster, and it sees latents only (plus captions
when text-conditioned); it runs after (or alongside) the experts, never talking to them.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from paris.config import RunConfig, TrainConfig
from paris.data.shards import ShardSet, load_manifest, load_null_text, load_split, split_shards
from paris.data.stream import Batches, ShardStream
from paris.errors import ConfigError
from paris.fingerprint import Fingerprint, check_resume, dataset_checksum, grown_fingerprint, router_fingerprint
from paris.layout import dataset_prefix, router_prefix
from paris.plots import accuracy_plot_png, save_loss_plot
from paris.progress import console
from paris.storage import Store
from paris.trainer.checkpoint import checkpoint_fingerprint, fetch_weights
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


def class_of(clusters: list[int]) -> torch.Tensor:
    """Data cluster id -> router class (its position among the experts routed over)."""
    lookup = torch.full((max(clusters) + 1,), -1, dtype=torch.long)
    lookup[torch.tensor(clusters)] = torch.arange(len(clusters))
    return lookup


def targets(data: ShardSet, idx: torch.Tensor, label_of: torch.Tensor | None) -> torch.Tensor:
    """The router classes of samples `idx`: their clusters, through `label_of` when given."""
    return data.clusters[idx] if label_of is None else label_of[data.clusters[idx]]


def router_loss(
    stream: Batches,
    null_text: tuple[torch.Tensor, torch.Tensor],
    cfg: TrainConfig,
    label_of: torch.Tensor | None = None,
) -> LossFn:
    """Cross-entropy against the cluster of x_0 (as a class: `label_of`). A caption-aware
    router sees the empty caption in `caption_dropout` of the rows, so it also estimates
    p(k | x_t, t) for the unconditional CFG branch (paris.router.pipeline, guidance_routing="separate")."""
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
        return F.cross_entropy(logits.float(), targets(data, idx, label_of).to(device))

    return loss_fn


@torch.no_grad()
def accuracy_by_noise(
    model: ParisRouter,
    data: ShardSet,
    device: torch.device,
    seed: int = 0,
    repeats: int = 4,
    label_of: torch.Tensor | None = None,
) -> list[dict[str, float]]:
    """Held-out top-1 accuracy of the router in each noise bin [t_i, t_i+1); `label_of` maps
    cluster ids to classes (default: class k is cluster k)."""
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
                    correct += int((pred == targets(data, idx, label_of)).sum())
                    total += len(idx)
            rows.append({"t_lo": round(float(lo), 2), "t_hi": round(float(hi), 2), "accuracy": correct / total})
    return rows


def routed_clusters(manifest: dict[str, Any], experts: Mapping[int, str] | None) -> list[int]:
    """The clusters a router routes over: its experts' (default: every cluster of the dataset)."""
    k = manifest["num_clusters"]
    if experts is None:
        return list(range(k))
    unknown = sorted(c for c in experts if not 0 <= c < k)
    if unknown or not experts:
        raise ConfigError(f"--expert: the dataset has clusters 0..{k - 1}, not {unknown or 'none'}")
    return sorted(experts)


def router_fingerprint_of(
    cfg: RunConfig, manifest: dict[str, Any], experts: Mapping[int, str] | None, grown_from: str | None = None
) -> Fingerprint:
    clusters = routed_clusters(manifest, experts)
    checksum = dataset_checksum(manifest, clusters)
    fp = router_fingerprint(cfg.router, cfg.data.name, checksum, dict.fromkeys(clusters, ""))
    return fp if grown_from is None else grown_fingerprint(fp, grown_from)


def parent_digest(store: Store, grow_from: str, fp: Fingerprint) -> str:
    """What a router grown from `grow_from` records as its parent (its fingerprint's digest),
    once it is sure that `grow_from` holds a trained router of this architecture: anything
    else is a user's mistake, said in one line before any training starts."""
    where = store.uri(grow_from)
    if not store.exists(f"{grow_from}/latest.json"):
        raise ConfigError(f"--grow-from {where}: no trained router there (no latest.json)")
    found = checkpoint_fingerprint(store, grow_from)
    if found is None:  # a router trained before fingerprints: its weights will tell
        return grow_from
    fields = found.get("fields") or {}
    if "router.clusters" not in fields:
        raise ConfigError(f"--grow-from {where}: holds the checkpoints of an expert, not of a router")
    arch = {k: v for k, v in fp.fields.items() if k.startswith("router.model.")}
    old = {k: v for k, v in fields.items() if k.startswith("router.model.")}
    if old != arch:
        changed = "; ".join(Fingerprint(arch).changes(old))
        raise ConfigError(f"--grow-from {where}: a router of another architecture ({changed}): it cannot grow")
    return str(found.get("digest") or grow_from)


def grow(old: ParisRouter, new: ParisRouter) -> ParisRouter:
    """`new` (more classes) with every weight of `old`: the trunk as it is, and the head's rows
    of the old classes moved to their new positions. A new class starts at the mean of the
    old ones (no preference), so fine-tuning only has to teach it."""
    before = old.config.clusters or list(range(old.config.num_clusters))
    after = new.config.clusters or list(range(new.config.num_clusters))
    if not set(before) <= set(after):
        raise ConfigError(f"--grow-from: that router routes over clusters {before}, not a subset of {after}")
    state = old.state_dict()
    head = f"head.{len(old.head) - 1}"  # the Linear to one logit per class
    w_old, b_old = state[f"{head}.weight"], state[f"{head}.bias"]
    w = w_old.mean(0, keepdim=True).repeat(len(after), 1)
    b = b_old.mean().repeat(len(after))
    for i, k in enumerate(before):
        w[after.index(k)], b[after.index(k)] = w_old[i], b_old[i]
    state[f"{head}.weight"], state[f"{head}.bias"] = w, b
    try:
        new.load_state_dict(state)
    except RuntimeError as err:  # a parent of another architecture (one trained before fingerprints)
        why = str(err).splitlines()[-1].strip()
        raise ConfigError(f"--grow-from: a router of another architecture: {why}") from None
    return new


def train_router(
    cfg: RunConfig,
    store: Store,
    experts: Mapping[int, str] | None = None,
    prefix: str | None = None,
    grow_from: str | None = None,
) -> tuple[TrainResult, list[dict[str, float]]]:
    """Train the router over `experts` (cluster -> store prefix of its expert; default: every
    cluster's expert at its usual prefix) into `prefix` (default: models/<model>/router; the
    operator passes a versioned one): it learns which of those clusters x_0 came from, on
    those clusters' data only, so its weights renormalize over the experts it routes to.
    Checkpoints of other settings or another expert set there are refused (paris.fingerprint).

    `grow_from` (a trained router's prefix, over a subset of these clusters): start from its
    weights with the head grown by the new classes, and fine-tune for router.grow_steps steps
    on every routed cluster's data, instead of training from scratch."""
    manifest = load_manifest(store, cfg.data.name)
    clusters = routed_clusters(manifest, experts)
    prefix = prefix or router_prefix(cfg.model)
    parent = None
    if grow_from is not None:
        parent = parent_digest(store, grow_from, router_fingerprint_of(cfg, manifest, experts))
    fp = router_fingerprint_of(cfg, manifest, experts, parent)
    check_resume(checkpoint_fingerprint(store, prefix), fp, store.uri(prefix))
    label_of = class_of(clusters)
    tcfg = cfg.router.train
    if grow_from is not None:
        tcfg = tcfg.model_copy(update={"steps": cfg.router.grow_steps or max(1, tcfg.steps // 10)})
    # The routed clusters' parts in one stream, each window mixing them in proportion (the
    # parts of a cluster are spread through the epoch); nothing loads them all.
    split = [(i, p) for i in clusters for p in split_shards(manifest, i)]
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
    model = build_router(cfg.router.model, len(clusters), manifest["latent"], manifest["text"]["dim"], clusters)
    if grow_from is not None:
        with tempfile.TemporaryDirectory() as tmp:
            weights = fetch_weights(store, grow_from, Path(tmp), which="ema")
            try:
                old = ParisRouter.from_pretrained(weights)
            except (TypeError, ValueError, OSError) as err:  # only a parent from before fingerprints gets here
                raise ConfigError(f"--grow-from {store.uri(grow_from)}: not a router's weights ({err})") from None
            model = grow(old, model)
        console.print(f"router: grown from {store.uri(grow_from)} to clusters {clusters}")
    meta: dict[str, Any] = {
        "clusters": clusters,
        "samples": stream.samples,
        "params": count_params(model),
        "fingerprint": fp.record(),
        **({"grown_from": grow_from} if grow_from else {}),
    }
    loss = router_loss(stream, load_null_text(store, manifest), tcfg, label_of)
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
        holdout = holdout.take(torch.isin(holdout.clusters, torch.tensor(clusters)).nonzero().flatten())
        with tempfile.TemporaryDirectory() as tmp:
            ema = ParisRouter.from_pretrained(fetch_weights(store, prefix, Path(tmp)))
        device = resolve_device(cfg.router.train.device)
        acc = accuracy_by_noise(ema, holdout, device, cfg.router.train.seed, label_of=label_of)
        store.put_json(f"{prefix}/accuracy.json", {"held_out": acc, "samples": len(holdout)})
        store.put_bytes(f"{prefix}/accuracy.png", accuracy_plot_png(acc))
        console.print(
            "router held-out accuracy by noise level: "
            + ", ".join(f"t<{r['t_hi']:.1f}: {r['accuracy']:.2f}" for r in acc)
        )
    return result, acc
