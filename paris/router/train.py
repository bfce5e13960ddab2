"""`paris train router`: trains the router (paris.router.objective) over the routed clusters,
from scratch or grown from a trained one (paris.router.grow), and scores it on held-out data.

It is the only component that sees every cluster, and it sees latents only (plus captions
when text-conditioned); it runs after (or alongside) the experts, never talking to them.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from paris.config import RunConfig
from paris.data.shards import ShardSet, load_manifest, load_null_text, load_split, split_shards
from paris.data.stream import ShardStream
from paris.errors import ConfigError
from paris.fingerprint import Fingerprint, check_resume, dataset_checksum, grown_fingerprint, router_fingerprint
from paris.layout import dataset_prefix, router_prefix
from paris.plots import accuracy_plot_png, save_loss_plot
from paris.progress import console
from paris.storage import Store
from paris.trainer.checkpoint import checkpoint_fingerprint, fetch_weights
from paris.trainer.loop import TrainResult, attention_backend, resolve_device, train
from paris.trainer.model import count_params

from .grow import PROBE_BATCHES, PROBE_SEED, fit_head, grown_router, parent_digest
from .model import ParisRouter, build_router
from .objective import class_of, draw, router_logits, router_loss, targets

NOISE_BINS = np.linspace(0.0, 1.0, 11)
EVAL_SAMPLES = 8192  # held-out samples the accuracy is measured on (whole parts, in order)


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
                    pred = router_logits(model, data, idx, t, eps, device).argmax(-1).cpu()
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
        # Fine-tuning a trained router: a warm-up as long as a training from scratch would leave
        # the few steps at a fraction of the rate, too low to teach the new class.
        steps = cfg.router.grow_steps or max(1, tcfg.steps // 10)
        tcfg = tcfg.model_copy(update={"steps": steps, "warmup_steps": min(tcfg.warmup_steps, steps // 5)})
    # The routed clusters' parts in one stream: every window holds each of them, and a step's
    # rows follow their shares of the split (paris.data.stream); nothing loads them all.
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
    null_text = load_null_text(store, manifest)
    if grow_from is not None and not store.exists(f"{prefix}/latest.json"):  # (a resume loads its checkpoint)
        model = grown_router(store, grow_from, model)
        stream.at_step(0)
        drawn = [draw(stream, torch.Generator().manual_seed(PROBE_SEED + i), tcfg) for i in range(PROBE_BATCHES)]
        fitted = fit_head(model, drawn, null_text, label_of, resolve_device(tcfg.device))
        console.print(
            f"router: grown from {store.uri(grow_from)} to clusters {clusters}; head fitted (loss {fitted:.3f})"
        )
    meta: dict[str, Any] = {
        "clusters": clusters,
        "samples": stream.samples,
        "params": count_params(model),
        "fingerprint": fp.record(),
        **({"grown_from": grow_from} if grow_from else {}),
    }
    loss = router_loss(stream, null_text, tcfg, label_of)
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
