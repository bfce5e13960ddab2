"""Preparation as work units: the same units run as local processes (`paris data prepare
--workers N`, `paris run`) or as Kubernetes Indexed Jobs (a ParisDataset).

    features  index i of n: clustering features of parts [i*P/n, (i+1)*P/n)
    cluster   one unit: two-stage k-means fitted on a bounded sample of the features
    encode    index i of n: assign clusters, encode latents and captions, write the unit's
              own part files per cluster
    finalize  one unit: merge the index manifests into the dataset manifest (written last)

Every unit publishes its result with one object written after all its files (an index
manifest, the clustering file, the dataset manifest): a unit whose published output exists
is never redone, and a failed one is retried alone, writing the same names again. Held-out
membership is a hash of (seed, sample key), so no unit needs a global view to decide it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors.numpy import load as np_load
from safetensors.numpy import save as np_save
from safetensors.torch import save as st_save

from paris.config import DataConfig
from paris.data.clustering import Clustering, two_stage_kmeans
from paris.data.encoders import Encoders
from paris.data.shards import FORMAT, MANIFEST, PartWriter, metadata_of
from paris.data.sources import DIGIT_NAMES, Part, Sample, open_source
from paris.errors import DataError
from paris.layout import dataset_prefix
from paris.storage import Store

log = logging.getLogger(__name__)

STAGES = ("features", "cluster", "encode", "finalize")
INDEXED = ("features", "encode")
T = TypeVar("T")

# Settings that change how fast preparation runs, not what it produces.
_EXECUTION_ONLY = {"device", "batch_size", "weights_cache"}


def fingerprint(cfg: DataConfig) -> str:
    blob = json.dumps(cfg.model_dump(mode="json", exclude=_EXECUTION_ONLY), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _uniform(seed: int, salt: str, key: str) -> float:
    """A uniform number in [0, 1) that depends only on (seed, salt, key)."""
    h = hashlib.blake2b(f"{seed}\0{salt}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2.0**64


def is_holdout(cfg: DataConfig, key: str) -> bool:
    return _uniform(cfg.seed, "holdout", key) < cfg.holdout_fraction


def _batched(it: Iterable[T], n: int) -> Iterator[list[T]]:
    it = iter(it)
    while batch := list(islice(it, n)):
        yield batch


# --------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------


def work_prefix(name: str) -> str:
    return f"{dataset_prefix(name)}/work"


def done_key(name: str, stage: str, index: int | None = None) -> str:
    """The object whose presence means the unit finished."""
    if stage == "cluster":
        return f"{dataset_prefix(name)}/clustering.safetensors"
    if stage == "finalize":
        return f"{dataset_prefix(name)}/{MANIFEST}"
    return f"{work_prefix(name)}/{stage}/index-{index:05d}.json"


def _features_key(name: str, part: int) -> str:
    return f"{work_prefix(name)}/features/part-{part:05d}.safetensors"


# --------------------------------------------------------------------------------------
# The plan: which parts each index reads
# --------------------------------------------------------------------------------------


@dataclass
class Plan:
    fingerprint: str
    parts: list[Part]
    indexes: int

    def parts_of(self, index: int) -> list[tuple[int, Part]]:
        if not 0 <= index < self.indexes:
            raise DataError(f"index {index} does not exist: this preparation has indexes 0..{self.indexes - 1}")
        n, p = self.indexes, len(self.parts)
        lo, hi = index * p // n, (index + 1) * p // n
        return [(j, self.parts[j]) for j in range(lo, hi)]

    def as_json(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "indexes": self.indexes, "parts": [p.as_dict() for p in self.parts]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Plan:
        return cls(d["fingerprint"], [Part.from_dict(p) for p in d["parts"]], int(d["indexes"]))


def wipe(cfg: DataConfig, store: Store) -> None:
    """Remove a dataset: its manifest first, so it is invisible before anything else goes."""
    root = dataset_prefix(cfg.name)
    store.delete(f"{root}/{MANIFEST}")
    store.delete_prefix(root)


def make_plan(cfg: DataConfig, store: Store, reset: bool = False) -> Plan:
    """The plan in the store, or a new one (the first unit to start writes it; every unit
    computes the same one). With `reset`, leftovers of another config are removed first;
    without, they are an error (a pod never deletes a dataset)."""
    key = f"{work_prefix(cfg.name)}/plan.json"
    fp = fingerprint(cfg)
    existing = store.get_json_or_none(key)
    if existing is not None and existing.get("fingerprint") == fp:
        return Plan.from_json(existing)
    manifest = store.get_json_or_none(f"{dataset_prefix(cfg.name)}/{MANIFEST}")
    stale = existing is not None or (manifest is not None and manifest.get("fingerprint") != fp)
    if stale and not reset:
        raise DataError(
            f"dataset {cfg.name!r} at {store.uri(dataset_prefix(cfg.name))} was prepared with another data "
            "config: delete it, or run `paris data prepare` (which replaces it)"
        )
    if stale or manifest is not None:
        wipe(cfg, store)
    parts = open_source(cfg, store).parts()
    known = sum(p.stop - p.start for p in parts if p.stop is not None) if cfg.source != "webdataset" else None
    if known is not None and cfg.clusters > known:
        raise DataError(f"K={cfg.clusters} clusters is larger than the dataset ({known} samples)")
    plan = Plan(fp, parts, cfg.indexes or len(parts))
    store.put_json(key, plan.as_json())
    return plan


def _require(store: Store, cfg: DataConfig, stage: str, indexes: Iterable[int | None]) -> list[dict[str, Any]]:
    keys = [done_key(cfg.name, stage, i) for i in indexes]
    missing = [k for k in keys if not store.exists(k)]
    if missing:
        raise DataError(
            f"stage {stage!r} has not finished ({len(missing)} units missing, e.g. {store.uri(missing[0])})"
        )
    return [store.get_json(k) for k in keys]


# --------------------------------------------------------------------------------------
# Units
# --------------------------------------------------------------------------------------


def run_features(cfg: DataConfig, store: Store, index: int, enc: Encoders) -> dict[str, Any]:
    plan = make_plan(cfg, store)  # first: refuses leftovers of another config
    out_key = done_key(cfg.name, "features", index)
    if store.exists(out_key):
        return dict(store.get_json(out_key), reused=True)
    source = open_source(cfg, store)
    entries = []
    for j, part in plan.parts_of(index):
        feats: list[np.ndarray] = []
        keys: list[str] = []
        for batch in _batched(source.samples(part), cfg.batch_size):
            feats.append(enc.features([s.image for s in batch]).astype(np.float16))
            keys += [s.key for s in batch]
        holdout = np.array([is_holdout(cfg, k) for k in keys], dtype=np.uint8)
        arr = np.concatenate(feats) if feats else np.zeros((0, 0), dtype=np.float16)
        store.put_bytes(
            _features_key(cfg.name, j),
            np_save({"features": arr, "holdout": holdout}, metadata={"keys": json.dumps(keys)}),
        )
        entries.append({"part": j, "samples": len(keys), "holdout": int(holdout.sum())})
    result = {
        "index": index,
        "parts": entries,
        "samples": sum(e["samples"] for e in entries),
        "skipped": source.skipped,
    }
    store.put_json(out_key, result)  # last: publishes the unit
    return result


def _load_features(store: Store, cfg: DataConfig, part: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    data = store.get_bytes(_features_key(cfg.name, part))
    arrays = np_load(data)
    return arrays["features"], arrays["holdout"].astype(bool), json.loads(metadata_of(data)["keys"])


def run_cluster(cfg: DataConfig, store: Store) -> dict[str, Any]:
    plan = make_plan(cfg, store)
    out_key = done_key(cfg.name, "cluster")
    if store.exists(out_key):
        return {"reused": True}
    indexes = _require(store, cfg, "features", range(plan.indexes))
    n_train = sum(p["samples"] - p["holdout"] for m in indexes for p in m["parts"])
    if cfg.clusters > n_train:
        raise DataError(f"K={cfg.clusters} clusters is larger than the dataset ({n_train} training samples)")
    # A uniform sample of the training rows, chosen by a hash of each key: bounded memory,
    # and the same sample whichever order or machine reads the parts.
    p_keep = min(1.0, cfg.cluster_sample / n_train)
    rows: list[np.ndarray] = []
    us: list[np.ndarray] = []
    for m in indexes:
        for entry in m["parts"]:
            if not entry["samples"]:
                continue
            feats, holdout, keys = _load_features(store, cfg, entry["part"])
            u = np.array([_uniform(cfg.seed, "cluster-sample", k) for k in keys])
            keep = ~holdout & (u < p_keep)
            rows.append(feats[keep].astype(np.float32))
            us.append(u[keep])
    x, u = np.concatenate(rows), np.concatenate(us)
    if len(x) > cfg.cluster_sample:
        order = np.argsort(u, kind="stable")[: cfg.cluster_sample]
        x = x[np.sort(order)]
    if cfg.clusters > len(x):
        raise DataError(
            f"K={cfg.clusters} clusters is larger than the clustering sample ({len(x)} samples): "
            "raise data.cluster_sample or lower K"
        )
    clustering, labels = two_stage_kmeans(
        x,
        cfg.clusters,
        cfg.fine_clusters,
        cfg.features.pca_dim,
        cfg.seed,
        cfg.balance,
        cfg.max_cluster_fraction,
        cfg.kmeans,
    )
    sizes = np.bincount(labels, minlength=cfg.clusters).tolist()
    meta = {"sample": str(len(x)), "training_samples": str(n_train), "sample_sizes": json.dumps(sizes)}
    arrays = {k: np.ascontiguousarray(v) for k, v in clustering.arrays().items()}
    store.put_bytes(out_key, np_save(arrays, metadata=meta))  # one object: published whole
    return {"sample": len(x), "training_samples": n_train, "sample_sizes": sizes}


def load_clustering(store: Store, cfg: DataConfig) -> Clustering:
    key = done_key(cfg.name, "cluster")
    if not store.exists(key):
        raise DataError(f"no clustering at {store.uri(key)}: run the cluster stage first")
    return Clustering.from_arrays(np_load(store.get_bytes(key)), cfg.clusters)


def encode_batch(enc: Encoders, batch: list[Sample], clusters: torch.Tensor) -> dict[str, torch.Tensor]:
    """A batch of samples as part-file rows: latents, caption token states, labels, clusters."""
    states, mask = enc.text.encode([s.caption for s in batch])
    return {
        "latents": enc.codec.encode([s.image for s in batch]),
        "text_states": states,
        "text_mask": mask,
        "labels": torch.tensor([s.label for s in batch], dtype=torch.int64),
        "clusters": clusters,
    }


def write_by_split(writer: PartWriter, rows: dict[str, torch.Tensor], batch: list[Sample], splits: list[Any]) -> None:
    """Each row into the part of its split: its cluster id, or "holdout"."""
    for split in dict.fromkeys(splits):
        sel = [r for r, x in enumerate(splits) if x == split]
        idx = torch.tensor(sel)
        writer.add(split, {f: t[idx] for f, t in rows.items()}, [batch[r].caption for r in sel],
                   [batch[r].key for r in sel])


def run_encode(cfg: DataConfig, store: Store, index: int, enc: Encoders) -> dict[str, Any]:
    plan = make_plan(cfg, store)  # first: refuses leftovers of another config
    out_key = done_key(cfg.name, "encode", index)
    if store.exists(out_key):
        return dict(store.get_json(out_key), reused=True)
    clustering = load_clustering(store, cfg)
    (features,) = _require(store, cfg, "features", [index])
    source = open_source(cfg, store)
    root = dataset_prefix(cfg.name)
    writer = PartWriter(store, root, index, cfg.shard_size)
    max_length = cfg.text_encoder.max_length
    try:
        for (j, part), entry in zip(plan.parts_of(index), features["parts"], strict=True):
            if not entry["samples"]:
                continue
            feats, holdout, keys = _load_features(store, cfg, j)
            clusters = clustering.assign(feats)
            pos = 0
            for batch in _batched(source.samples(part), cfg.batch_size):
                b = len(batch)
                if [s.key for s in batch] != keys[pos : pos + b]:
                    raise DataError(f"input part {part.name} changed since its features were computed: prepare again")
                rows = encode_batch(enc, batch, torch.from_numpy(clusters[pos : pos + b]))
                max_length = int(rows["text_states"].shape[1])
                splits = [
                    "holdout" if h else int(c)
                    for h, c in zip(holdout[pos : pos + b], clusters[pos : pos + b], strict=True)
                ]
                write_by_split(writer, rows, batch, splits)
                pos += b
            if pos != len(keys):
                raise DataError(f"input part {part.name} changed since its features were computed: prepare again")
        parts = writer.close()
    except BaseException:
        writer.abort()
        raise
    null_states, null_mask = enc.text.encoder.encode([""])
    store.put_bytes(
        f"{root}/null_text.safetensors",
        st_save({"text_states": null_states[0].half().contiguous(), "text_mask": null_mask[0].bool().contiguous()}),
    )
    result = {
        "index": index,
        "parts": parts,
        "samples": sum(p["samples"] for p in parts),
        "latent": enc.codec.describe() | {"vae": cfg.vae},
        "text": {
            "kind": cfg.text_encoder.kind,
            "model": cfg.text_encoder.model,
            "pretrained": cfg.text_encoder.pretrained,
            "dim": enc.text.dim,
            "max_length": max_length,
        },
    }
    store.put_json(out_key, result)  # last: publishes the unit's parts
    return result


def run_finalize(cfg: DataConfig, store: Store, seconds: float | None = None) -> dict[str, Any]:
    """Merge the index manifests into the dataset manifest, which is written last."""
    key = done_key(cfg.name, "finalize")
    existing = store.get_json_or_none(key)
    if existing is not None and existing.get("fingerprint") == fingerprint(cfg):
        return dict(existing)
    plan = make_plan(cfg, store)
    features = _require(store, cfg, "features", range(plan.indexes))
    encoded = _require(store, cfg, "encode", range(plan.indexes))
    described = next((m for m in encoded if m["samples"]), None)
    if described is None:
        raise DataError(f"dataset {cfg.name!r}: no readable samples in the input")
    clusters: list[dict[str, Any]] = [
        {"id": k, "size": 0, "shards": [], "label_histogram": []} for k in range(cfg.clusters)
    ]
    holdout: dict[str, Any] = {"size": 0, "shards": []}
    for m in encoded:
        for p in m["parts"]:
            entry = clusters[p["split"]] if p["split"] != "holdout" else holdout
            entry["size"] += p["samples"]
            entry["shards"].append({"key": p["key"], "samples": p["samples"], "sha256": p["sha256"]})
            if "label_histogram" in entry and p["label_histogram"]:
                old = entry["label_histogram"]
                n = max(len(old), len(p["label_histogram"]))
                entry["label_histogram"] = [
                    (old[i] if i < len(old) else 0) + (p["label_histogram"][i] if i < len(p["label_histogram"]) else 0)
                    for i in range(n)
                ]
    empty = [c["id"] for c in clusters if c["size"] == 0]
    if empty:
        raise DataError(f"clusters {empty} received no samples: lower K")
    skipped = [s for m in features for s in m["skipped"]]
    manifest = {
        "format": FORMAT,
        "fingerprint": fingerprint(cfg),
        "name": cfg.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "num_samples": sum(c["size"] for c in clusters) + holdout["size"],
        "num_clusters": cfg.clusters,
        "indexes": plan.indexes,
        "latent": described["latent"],
        "text": described["text"],
        "features": cfg.features.model_dump(),
        "label_names": DIGIT_NAMES if cfg.source == "digits" else [],
        "clusters": clusters,
        "holdout": holdout,
        "skipped": {"count": len(skipped), "first": skipped[:100]},
        "config": cfg.model_dump(),
        "seconds": round(seconds, 1) if seconds is not None else None,
    }
    store.put_json(key, manifest)  # last: publishes the dataset
    return manifest


def run_unit(
    cfg: DataConfig, store: Store, stage: str, index: int | None, enc: Encoders | None = None
) -> dict[str, Any]:
    """One work unit, as a pod or a local worker runs it."""
    if stage not in STAGES:
        raise DataError(f"unknown stage {stage!r}: use one of {', '.join(STAGES)}")
    if stage in INDEXED:
        if index is None:
            raise DataError(f"stage {stage!r} needs an index (--index or $JOB_COMPLETION_INDEX)")
        enc = enc or Encoders(cfg, store)
        return run_features(cfg, store, index, enc) if stage == "features" else run_encode(cfg, store, index, enc)
    return run_cluster(cfg, store) if stage == "cluster" else run_finalize(cfg, store)
