"""Per-cluster safetensors shards and the dataset manifest that indexes them.

A shard holds everything an expert needs and nothing it has to compute again: the latent,
the caption's token states and mask, and the caption itself (in the header metadata).
Each shard's sha256 is in the manifest, so a corrupted download fails loudly.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from paris.errors import DataError
from paris.layout import dataset_prefix
from paris.storage import Store

MANIFEST = "manifest.json"
FORMAT = "paris-dataset-v1"


@dataclass
class ShardSet:
    """Samples of one cluster (or of the held-out split), concatenated in memory."""

    latents: torch.Tensor  # [N, C, H, W] float32
    text_states: torch.Tensor  # [N, L, D] float16
    text_mask: torch.Tensor  # [N, L] bool
    labels: torch.Tensor  # [N] int64, -1 when unknown
    clusters: torch.Tensor  # [N] int64
    captions: list[str]

    def __len__(self) -> int:
        return len(self.latents)

    @classmethod
    def concat(cls, parts: list[ShardSet]) -> ShardSet:
        if not parts:
            raise DataError("no shards to load")
        cat = {
            f: torch.cat([getattr(p, f) for p in parts])
            for f in ("latents", "text_states", "text_mask", "labels", "clusters")
        }
        return cls(
            **cat,
            captions=[c for p in parts for c in p.captions],
        )


def _metadata_of(data: bytes) -> dict[str, str]:
    # safetensors' Python API reads header metadata only from files; the format is an 8-byte
    # little-endian length followed by a JSON header, so read it from the bytes we already have.
    (n,) = struct.unpack("<Q", data[:8])
    return dict(json.loads(data[8 : 8 + n]).get("__metadata__", {}))


def write_shards(store: Store, prefix: str, s: ShardSet, shard_size: int) -> list[dict[str, Any]]:
    infos = []
    for i, start in enumerate(range(0, len(s), shard_size)):
        sl = slice(start, start + shard_size)
        tensors = {
            "latents": s.latents[sl].contiguous().float(),
            "text_states": s.text_states[sl].contiguous().half(),
            "text_mask": s.text_mask[sl].contiguous().bool(),
            "labels": s.labels[sl].contiguous().long(),
            "clusters": s.clusters[sl].contiguous().long(),
        }
        data = st_save(tensors, metadata={"captions": json.dumps(s.captions[sl]), "format": FORMAT})
        key = f"{prefix}/shard-{i:05d}.safetensors"
        store.put_bytes(key, data)
        infos.append({"key": key, "samples": len(tensors["latents"]), "sha256": hashlib.sha256(data).hexdigest()})
    return infos


def read_shard(store: Store, root: str, info: dict[str, Any]) -> ShardSet:
    key = f"{root}/{info['key']}"
    data = store.get_bytes(key)
    if hashlib.sha256(data).hexdigest() != info["sha256"]:
        raise DataError(f"corrupted shard {store.uri(key)}: checksum mismatch (re-run `paris data prepare`)")
    try:
        t = st_load(data)
        captions = json.loads(_metadata_of(data)["captions"])
    except (SafetensorError, KeyError, ValueError, struct.error) as err:
        raise DataError(f"corrupted shard {store.uri(key)}: {err}") from None
    return ShardSet(t["latents"], t["text_states"], t["text_mask"], t["labels"], t["clusters"], captions)


def load_manifest(store: Store, name: str) -> dict[str, Any]:
    key = f"{dataset_prefix(name)}/{MANIFEST}"
    if not store.exists(key):
        raise DataError(f"dataset {name!r} not found at {store.uri(key)}: run `paris data prepare` first")
    manifest: dict[str, Any] = store.get_json(key)
    if manifest.get("format") != FORMAT:
        raise DataError(f"{store.uri(key)}: unknown dataset format {manifest.get('format')!r}")
    return manifest


def load_split(store: Store, manifest: dict[str, Any], split: int | str) -> ShardSet:
    """A cluster's shards (split = cluster id) or the held-out split (split = 'holdout')."""
    root = dataset_prefix(manifest["name"])
    if split == "holdout":
        infos = manifest["holdout"]["shards"]
    else:
        k = int(split)
        if not 0 <= k < manifest["num_clusters"]:
            raise DataError(
                f"cluster {k} does not exist: dataset {manifest['name']!r} has "
                f"clusters 0..{manifest['num_clusters'] - 1}"
            )
        infos = manifest["clusters"][k]["shards"]
    return ShardSet.concat([read_shard(store, root, i) for i in infos])


def load_null_text(store: Store, manifest: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The empty caption's token states and mask: the unconditional input for CFG."""
    t = st_load(store.get_bytes(f"{dataset_prefix(manifest['name'])}/null_text.safetensors"))
    return t["text_states"], t["text_mask"]
