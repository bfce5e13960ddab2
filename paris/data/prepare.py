"""`paris data prepare`: samples -> encoders -> two-stage k-means -> per-cluster shards.

The manifest is written last: until it exists the dataset is invisible, so a crash or a bad
input never leaves a half-prepared dataset that training would pick up.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save as np_save
from safetensors.torch import save as st_save

from paris.config import DataConfig
from paris.data.clustering import two_stage_kmeans
from paris.data.encoders import LatentCodec, build_text_encoder, image_features
from paris.data.shards import FORMAT, MANIFEST, ShardSet, write_shards
from paris.data.sources import DIGIT_NAMES, load_samples
from paris.errors import DataError
from paris.layout import dataset_prefix
from paris.progress import console, status
from paris.storage import Store


def _encode_captions(
    captions: list[str], cfg: DataConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Encode each distinct caption once (datasets repeat captions a lot)."""
    enc = build_text_encoder(cfg.text_encoder)
    uniq = sorted(set(captions))
    states, masks = [], []
    for i in range(0, len(uniq), 256):
        s, m = enc.encode(uniq[i : i + 256])
        states.append(s)
        masks.append(m)
    null_s, null_m = enc.encode([""])
    where = {c: i for i, c in enumerate(uniq)}
    idx = torch.tensor([where[c] for c in captions])
    return torch.cat(states)[idx], torch.cat(masks)[idx], null_s[0], null_m[0], enc.dim


def prepare_dataset(cfg: DataConfig, store: Store) -> dict[str, Any]:
    t0 = time.time()
    with status(f"loading {cfg.source} samples"):
        samples = load_samples(cfg)
    n = len(samples)
    n_hold = round(n * cfg.holdout_fraction)
    if cfg.clusters > n - n_hold:
        raise DataError(f"K={cfg.clusters} clusters is larger than the dataset ({n - n_hold} training samples)")
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(n)
    hold_idx, train_idx = np.sort(perm[:n_hold]), np.sort(perm[n_hold:])

    images = [s.image for s in samples]
    captions = [s.caption for s in samples]
    with status("encoding clustering features"):
        feats = image_features(cfg.features, images)
    with status(f"two-stage k-means: {cfg.fine_clusters} fine centroids -> K={cfg.clusters}"):
        clustering, train_clusters = two_stage_kmeans(
            feats[train_idx],
            cfg.clusters,
            cfg.fine_clusters,
            cfg.features.pca_dim,
            cfg.seed,
            cfg.balance,
            cfg.max_cluster_fraction,
        )
        clusters = np.zeros(n, dtype=np.int64)
        clusters[train_idx] = train_clusters
        if n_hold:
            clusters[hold_idx] = clustering.assign(feats[hold_idx])
    with status("encoding latents"):
        codec = LatentCodec(cfg)
        latents = codec.encode(images)
    with status(f"encoding captions ({cfg.text_encoder.kind})"):
        text_states, text_mask, null_s, null_m, text_dim = _encode_captions(captions, cfg)

    full = ShardSet(
        latents,
        text_states,
        text_mask,
        torch.tensor([s.label for s in samples]),
        torch.from_numpy(clusters),
        captions,
    )

    def subset(idx: np.ndarray) -> ShardSet:
        t = torch.from_numpy(idx)
        return ShardSet(
            full.latents[t],
            full.text_states[t],
            full.text_mask[t],
            full.labels[t],
            full.clusters[t],
            [captions[i] for i in idx],
        )

    root = dataset_prefix(cfg.name)
    cluster_entries = []
    with status("writing shards"):
        for k in range(cfg.clusters):
            idx = train_idx[train_clusters == k]
            shards = write_shards(store, f"{root}/clusters/{k}", subset(idx), cfg.shard_size)
            labels = full.labels[torch.from_numpy(idx)]
            hist = torch.bincount(labels[labels >= 0], minlength=10).tolist() if (labels >= 0).any() else []
            cluster_entries.append({"id": k, "size": len(idx), "shards": _rel(shards, root), "label_histogram": hist})
        holdout = _rel(write_shards(store, f"{root}/holdout", subset(hold_idx), cfg.shard_size), root) if n_hold else []
        store.put_bytes(
            f"{root}/null_text.safetensors", st_save({"text_states": null_s.half(), "text_mask": null_m.bool()})
        )
        store.put_bytes(
            f"{root}/clustering.safetensors",
            np_save({k: np.ascontiguousarray(v) for k, v in clustering.arrays().items()}),
        )

    manifest = {
        "format": FORMAT,
        "name": cfg.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "num_samples": n,
        "num_clusters": cfg.clusters,
        "latent": codec.describe() | {"vae": cfg.vae},
        "text": {
            "kind": cfg.text_encoder.kind,
            "model": cfg.text_encoder.model,
            "dim": text_dim,
            "max_length": int(text_states.shape[1]),
        },
        "features": cfg.features.model_dump(),
        "label_names": DIGIT_NAMES if cfg.source == "digits" else [],
        "clusters": cluster_entries,
        "holdout": {"size": n_hold, "shards": holdout},
        "config": cfg.model_dump(),
        "seconds": round(time.time() - t0, 1),
    }
    store.put_json(f"{root}/{MANIFEST}", manifest)  # last: publishes the dataset
    console.print(f"prepared {n} samples into {cfg.clusters} clusters at {store.uri(root)}")
    return manifest


def _rel(shards: list[dict[str, Any]], root: str) -> list[dict[str, Any]]:
    return [{**s, "key": s["key"][len(root) + 1 :]} for s in shards]
