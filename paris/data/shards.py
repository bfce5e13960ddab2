"""Per-cluster safetensors part files and the dataset manifest that indexes them.

A part holds everything an expert needs and nothing it has to compute again: the latent,
the caption's token states and mask, the label and cluster, and (in the header metadata)
the caption and the sample's key. Each part's sha256 is in the manifest, so a corrupted
download fails loudly. Parts are written and read through local files, streamed to and
from the store, so neither side holds more than one batch (writing) or one part (reading).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load
from safetensors.torch import load_file

from paris.errors import DataError
from paris.layout import dataset_prefix
from paris.storage import Store

MANIFEST = "manifest.json"
FORMAT = "paris-dataset-v2"  # v2: parts per work unit (part-<index>-<j>), keys, hash-based held-out split

# The tensors of a part and their stored dtypes, in file order.
FIELDS: dict[str, torch.dtype] = {
    "latents": torch.float32,
    "text_states": torch.float16,
    "text_mask": torch.bool,
    "labels": torch.int64,
    "clusters": torch.int64,
}
_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bool: "BOOL", torch.int64: "I64"}


@dataclass
class ShardSet:
    """Samples of one part (or a few), concatenated in memory."""

    latents: torch.Tensor  # [N, C, H, W] float32
    text_states: torch.Tensor  # [N, L, D] float16
    text_mask: torch.Tensor  # [N, L] bool
    labels: torch.Tensor  # [N] int64, -1 when unknown
    clusters: torch.Tensor  # [N] int64
    captions: list[str]
    keys: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.latents)

    def take(self, rows: torch.Tensor) -> ShardSet:
        """The samples at `rows` (an index tensor), in that order."""
        picked = rows.tolist()
        return ShardSet(
            **{f: getattr(self, f)[rows] for f in FIELDS},
            captions=[self.captions[i] for i in picked],
            keys=[self.keys[i] for i in picked] if self.keys else [],
        )

    @classmethod
    def concat(cls, parts: list[ShardSet]) -> ShardSet:
        if not parts:
            raise DataError("no shards to load")
        cat = {f: torch.cat([getattr(p, f) for p in parts]) for f in FIELDS}
        return cls(**cat, captions=[c for p in parts for c in p.captions], keys=[k for p in parts for k in p.keys])


# --------------------------------------------------------------------------------------
# Writing: one part file per (split, shard_size samples), streamed through local disk
# --------------------------------------------------------------------------------------


class _OpenPart:
    """A part being filled: each tensor's raw bytes are appended to its own scratch file, and
    the safetensors file is assembled from them when the part is full.

    Hand-written because safetensors' writers take every tensor in memory at once; its
    format (8-byte header length, JSON header, raw little-endian data) lets us stream."""

    def __init__(self, scratch: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="part-", dir=scratch))
        self.files: dict[str, IO[bytes]] = {f: (self.dir / f).open("wb") for f in FIELDS}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.n = 0
        self.captions: list[str] = []
        self.keys: list[str] = []
        self.labels: Counter[int] = Counter()

    def append(self, rows: dict[str, torch.Tensor], captions: list[str], keys: list[str]) -> None:
        for f, dtype in FIELDS.items():
            t = rows[f].detach().to("cpu", dtype).contiguous()
            if self.shapes.setdefault(f, tuple(t.shape[1:])) != tuple(t.shape[1:]):
                raise DataError(f"{f}: shape {tuple(t.shape[1:])} differs from {self.shapes[f]} within a part")
            self.files[f].write(t.numpy().tobytes())
        self.n += len(captions)
        self.captions += captions
        self.keys += keys
        self.labels.update(int(x) for x in rows["labels"].tolist() if int(x) >= 0)

    def finish(self, dest: Path) -> str:
        """Write the safetensors file; returns its sha256."""
        header: dict[str, Any] = {}
        offset = 0
        for f, dtype in FIELDS.items():
            self.files[f].close()
            size = (self.dir / f).stat().st_size
            header[f] = {
                "dtype": _ST_DTYPES[dtype],
                "shape": [self.n, *self.shapes[f]],
                "data_offsets": [offset, offset + size],
            }
            offset += size
        header["__metadata__"] = {
            "captions": json.dumps(self.captions),
            "keys": json.dumps(self.keys),
            "format": FORMAT,
        }
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes with spaces
        digest = hashlib.sha256()
        with dest.open("wb") as out:
            for chunk in (struct.pack("<Q", len(raw)), raw):
                out.write(chunk)
                digest.update(chunk)
            for f in FIELDS:
                with (self.dir / f).open("rb") as src:
                    while block := src.read(1 << 20):
                        out.write(block)
                        digest.update(block)
        shutil.rmtree(self.dir, ignore_errors=True)
        return digest.hexdigest()

    def discard(self) -> None:
        for f in self.files.values():
            f.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def split_dir(split: int | str) -> str:
    return "holdout" if split == "holdout" else f"clusters/{int(split)}"


class PartWriter:
    """The part files of one work unit: `<root>/clusters/<k>/part-<index>-<j>.safetensors`
    (and `holdout/...`). Names are a function of (index, split, j), so a retried unit writes
    the same names; only the index manifest that lists them publishes them."""

    def __init__(self, store: Store, root: str, index: int, shard_size: int) -> None:
        self.store, self.root, self.index, self.shard_size = store, root, index, shard_size
        self.scratch = Path(tempfile.mkdtemp(prefix="paris-parts-"))
        self.open: dict[int | str, _OpenPart] = {}
        self.count: Counter[int | str] = Counter()
        self.infos: list[dict[str, Any]] = []

    def add(self, split: int | str, rows: dict[str, torch.Tensor], captions: list[str], keys: list[str]) -> None:
        start = 0
        while start < len(captions):
            part = self.open.get(split) or self.open.setdefault(split, _OpenPart(self.scratch))
            take = min(self.shard_size - part.n, len(captions) - start)
            sl = slice(start, start + take)
            part.append({f: t[sl] for f, t in rows.items()}, captions[sl], keys[sl])
            start += take
            if part.n >= self.shard_size:
                self._flush(split)

    def _flush(self, split: int | str) -> None:
        part = self.open.pop(split)
        rel = f"{split_dir(split)}/part-{self.index:05d}-{self.count[split]:05d}.safetensors"
        self.count[split] += 1
        local = self.scratch / "part.safetensors"
        sha = part.finish(local)
        self.store.put_file(f"{self.root}/{rel}", local)
        local.unlink()
        hist = [part.labels.get(d, 0) for d in range(max(10, max(part.labels, default=0) + 1))] if part.labels else []
        self.infos.append({"split": split, "key": rel, "samples": part.n, "sha256": sha, "label_histogram": hist})

    def close(self) -> list[dict[str, Any]]:
        try:
            for split in sorted(self.open, key=str):
                self._flush(split)
        finally:
            self.abort()
        return self.infos

    def abort(self) -> None:
        for part in self.open.values():
            part.discard()
        self.open.clear()
        shutil.rmtree(self.scratch, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def metadata_of(data: bytes) -> dict[str, str]:
    """Header metadata of safetensors bytes in memory (the Python API reads it from files
    only; the format is an 8-byte little-endian length followed by a JSON header)."""
    (n,) = struct.unpack("<Q", data[:8])
    return dict(json.loads(data[8 : 8 + n]).get("__metadata__", {}))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def fetch_shard(store: Store, root: str, info: dict[str, Any], local: Path) -> Path:
    """Download one part to `local` (streamed) and check its sha256."""
    key = f"{root}/{info['key']}" if root else info["key"]
    store.get_file(key, local)
    if _sha256_file(local) != info["sha256"]:
        local.unlink(missing_ok=True)
        raise DataError(f"corrupted shard {store.uri(key)}: checksum mismatch (re-run `paris data prepare`)")
    return local


def read_shard_file(path: Path, where: str) -> ShardSet:
    try:
        t = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        captions = json.loads(meta["captions"])
        keys = json.loads(meta.get("keys", "[]"))
    except (SafetensorError, KeyError, ValueError, OSError) as err:
        raise DataError(f"corrupted shard {where}: {err}") from None
    return ShardSet(t["latents"], t["text_states"], t["text_mask"], t["labels"], t["clusters"], captions, keys)


MAX_HEADER = 100 * 2**20  # safetensors' own limit on a header's size


def _read_exactly(f: IO[bytes], n: int, where: str) -> bytes:
    data = b""
    while len(data) < n:
        chunk = f.read(n - len(data))
        if not chunk:
            raise DataError(f"corrupted shard {where}: it ends inside its header")
        data += chunk
    return data


def read_captions(store: Store, root: str, info: dict[str, Any]) -> list[str]:
    """A part's captions, from its header alone: the 8-byte length and the JSON header that
    follows are streamed from the store and the tensors never are, so this costs one header,
    not the part's latents and token states. No checksum (that needs every byte of the
    file); a damaged header still fails with the part's name."""
    key = f"{root}/{info['key']}" if root else info["key"]
    where = store.uri(key)
    with store.open_read(key) as f:
        (n,) = struct.unpack("<Q", _read_exactly(f, 8, where))
        if n > MAX_HEADER:
            raise DataError(f"corrupted shard {where}: a header of {n} bytes")
        raw = _read_exactly(f, n, where)
    try:
        captions = json.loads(json.loads(raw)["__metadata__"]["captions"])
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"corrupted shard {where}: no captions in its header ({err})") from None
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise DataError(f"corrupted shard {where}: its captions are not a list of strings")
    return captions


def read_shard(store: Store, root: str, info: dict[str, Any]) -> ShardSet:
    with tempfile.TemporaryDirectory(prefix="paris-shard-") as tmp:
        local = fetch_shard(store, root, info, Path(tmp) / "part.safetensors")
        return read_shard_file(local, store.uri(f"{root}/{info['key']}" if root else info["key"]))


def load_manifest(store: Store, name: str) -> dict[str, Any]:
    key = f"{dataset_prefix(name)}/{MANIFEST}"
    if not store.exists(key):
        raise DataError(f"dataset {name!r} not found at {store.uri(key)}: run `paris data prepare` first")
    manifest: dict[str, Any] = store.get_json(key)
    if manifest.get("format") != FORMAT:
        raise DataError(
            f"{store.uri(key)}: dataset format {manifest.get('format')!r}, this paris reads {FORMAT!r}: "
            "run `paris data prepare` again"
        )
    return manifest


def split_shards(manifest: dict[str, Any], split: int | str) -> list[dict[str, Any]]:
    """The part infos of a cluster (split = cluster id) or of the held-out split."""
    if split == "holdout":
        return list(manifest["holdout"]["shards"])
    k = int(split)
    if not 0 <= k < manifest["num_clusters"]:
        raise DataError(
            f"cluster {k} does not exist: dataset {manifest['name']!r} has clusters 0..{manifest['num_clusters'] - 1}"
        )
    return list(manifest["clusters"][k]["shards"])


def load_split(store: Store, manifest: dict[str, Any], split: int | str, limit: int | None = None) -> ShardSet:
    """A cluster's or the held-out split's parts in memory, at most `limit` samples (whole
    parts, in manifest order): for evaluation on a bounded slice, not for training."""
    root = dataset_prefix(manifest["name"])
    parts, n = [], 0
    for info in split_shards(manifest, split):
        if limit is not None and n >= limit:
            break
        parts.append(read_shard(store, root, info))
        n += len(parts[-1])
    out = ShardSet.concat(parts)
    if limit is not None and len(out) > limit:
        out = out.take(torch.arange(limit))
    return out


def load_null_text(store: Store, manifest: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The empty caption's token states and mask: the unconditional input for CFG."""
    t = st_load(store.get_bytes(f"{dataset_prefix(manifest['name'])}/null_text.safetensors"))
    return t["text_states"], t["text_mask"]
