"""`paris data add`: new data joins a prepared dataset as one new cluster.

The new images are encoded with the dataset's own encoders (text encoder, latent codec) and
split into training and held-out samples by the dataset's rule, then written as the parts of
cluster K (K = the number of clusters so far) and appended to the held-out split. Nothing of
clusters 0..K-1 is touched: their parts, their checksums, and so the fingerprints of the
experts trained on them (paris.fingerprint.dataset_checksum) stay as they are. The manifest is
rewritten last, so a crash midway leaves the dataset as it was.

The new cluster's expert then trains in isolation (`paris train expert --cluster K`), and the
router grows by one class (`paris train router --grow-from ...`).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from paris.config import DataConfig
from paris.data.encoders import Encoders
from paris.data.shards import MANIFEST, PartWriter, load_manifest
from paris.data.sources import open_source
from paris.data.work import _batched, encode_batch, is_holdout, write_by_split
from paris.errors import DataError
from paris.layout import dataset_prefix
from paris.progress import console
from paris.storage import Store

# Work-unit indexes of added clusters: far above any preparation's (part names stay unique).
ADDED_INDEX = 100_000


def check_new_data(dataset: DataConfig, new: DataConfig) -> None:
    """Refuse, in one line, new data that cannot be what the user meant: the built-in digits
    added with a path, or without naming digits (all of them again), or digits the dataset
    already holds (they would train in two clusters); labels on a source that has none."""
    if new.source != "digits":
        if new.labels is not None:
            raise DataError("--label: only the digits source has labels")
        return
    if new.path is not None:
        raise DataError("--path: the digits source is built in; --path is for folder and webdataset")
    if not new.labels:
        raise DataError("--label: name the digits to add (e.g. --label 9), not every digit again")
    held = set(range(10) if dataset.labels is None else dataset.labels) if dataset.source == "digits" else set()
    again = sorted(held & set(new.labels))
    if again:
        raise DataError(
            f"--label {', '.join(map(str, again))}: already in dataset {dataset.name!r} (data.labels): "
            "they would train in two clusters"
        )


def add_cluster(dataset: DataConfig, new: DataConfig, store: Store) -> dict[str, Any]:
    """Encode `new`'s samples with `dataset`'s encoders into a new cluster of `dataset`.
    Returns the new manifest. Adding the same input twice is refused."""
    check_new_data(dataset, new)
    manifest = load_manifest(store, dataset.name)
    source_cfg = new.model_dump(mode="json", include={"source", "path", "labels", "limit", "part_size"})
    for done in manifest.get("added") or []:
        if done.get("input") == source_cfg:
            raise DataError(f"dataset {dataset.name!r}: this input was added already, as cluster {done['cluster']}")
    k = int(manifest["num_clusters"])
    enc = Encoders(dataset, store)
    source = open_source(new, store)
    root = dataset_prefix(dataset.name)
    writer = PartWriter(store, root, ADDED_INDEX + k, dataset.shard_size)
    samples = held_out = 0
    try:
        for part in source.parts():
            for batch in _batched(source.samples(part), dataset.batch_size):
                rows = encode_batch(enc, batch, torch.full((len(batch),), k, dtype=torch.int64))
                splits: list[int | str] = ["holdout" if is_holdout(dataset, s.key) else k for s in batch]
                write_by_split(writer, rows, batch, splits)
                samples += len(batch)
                held_out += splits.count("holdout")
        parts = writer.close()
    except BaseException:
        writer.abort()
        raise
    trained = [p for p in parts if p["split"] == k]
    if not trained:
        raise DataError(f"{new.path or new.source}: no samples to train a new cluster on")
    histogram: list[int] = []
    for p in trained:
        h = p.get("label_histogram") or []
        histogram = [
            (histogram[i] if i < len(histogram) else 0) + (h[i] if i < len(h) else 0)
            for i in range(max(len(histogram), len(h)))
        ]
    manifest["clusters"].append(
        {
            "id": k,
            "size": sum(p["samples"] for p in trained),
            "shards": [{"key": p["key"], "samples": p["samples"], "sha256": p["sha256"]} for p in trained],
            "label_histogram": histogram,
        }
    )
    for p in parts:
        if p["split"] == "holdout":
            manifest["holdout"]["size"] += p["samples"]
            manifest["holdout"]["shards"].append({"key": p["key"], "samples": p["samples"], "sha256": p["sha256"]})
    manifest["num_clusters"] = k + 1
    manifest["num_samples"] += samples
    manifest["added"] = [
        *(manifest.get("added") or []),
        {
            "cluster": k,
            "input": source_cfg,
            "samples": samples,
            "held_out": held_out,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    ]
    store.put_json(f"{root}/{MANIFEST}", manifest)  # last: publishes the new cluster
    console.print(
        f"added cluster {k} to dataset {dataset.name!r}: {samples - held_out} training samples, {held_out} held out"
    )
    return manifest
