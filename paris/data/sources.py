"""Image-caption sources, read part by part: the built-in digits, a folder with captions.jsonl,
WebDataset tars. A local path or a store URI (`s3://bucket/prefix`, `file://...`).

A source is a list of *parts* (a range of captions.jsonl records, a range of the digits, one
tar) and a way to stream the samples of one part. Preparation work units take ranges of
parts, so nothing ever holds a whole dataset, and every unit can re-read exactly its parts.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image

from paris.config import DataConfig
from paris.errors import DataError
from paris.storage import LocalStore, S3Store, Store

log = logging.getLogger(__name__)

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
# Members decoded on read. Anything else is ignored, except formats whose decoding runs code
# (pickle, torch.load): those make the tar refused, since it may come from anywhere.
_TEXT_EXTS = ("txt", "caption", "json")
_UNSAFE_EXTS = ("pyd", "pkl", "pickle", "pth", "pt", "ckpt", "npy", "npz", "mp", "msgpack")


@dataclass
class Sample:
    image: Image.Image
    caption: str
    label: int = -1  # a known class (digits), -1 when the source has none
    key: str = ""  # stable name of the sample: decides its held-out membership


@dataclass(frozen=True)
class Part:
    """One unit of input: records [start, stop) of the source's list, or one tar (stop = the
    number of its samples to read when data.limit cuts it, else None). For captions.jsonl,
    `offset` is the byte where record `start` begins and `line` its line number, so a unit
    seeks to its records instead of reading every line before them."""

    name: str
    start: int = 0
    stop: int | None = None
    offset: int = 0
    line: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "start": self.start, "stop": self.stop, "offset": self.offset, "line": self.line}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Part:
        stop = None if d["stop"] is None else int(d["stop"])
        return cls(str(d["name"]), int(d["start"]), stop, int(d["offset"]), int(d["line"]))


def digit_caption(label: int) -> str:
    return f"a handwritten digit {DIGIT_NAMES[label]}"


# --------------------------------------------------------------------------------------
# Where input files live: a local folder or a prefix in a store
# --------------------------------------------------------------------------------------


class Inputs:
    """Read-only access to the files of a folder or WebDataset source."""

    def __init__(self, path: str, store: Store | None) -> None:
        self.path = path
        self.store: Store | None = None
        self.root: Path | None = None
        scheme, _, rest = path.partition("://")
        if scheme == "file" and rest:
            self.root = Path(rest)
        elif scheme == "s3" and rest:
            if not isinstance(store, S3Store):
                raise DataError(f"data.path {path!r}: an s3:// source needs s3:// storage (same server)")
            bucket, _, prefix = rest.partition("/")
            self.store = store.with_prefix(bucket, prefix)
        elif "://" in path:
            raise DataError(f"data.path {path!r}: use a local path, file://... or s3://bucket/prefix")
        else:
            self.root = Path(path).expanduser()
        self.only: str | None = None  # the path names one file (a single .tar)
        if self.root is not None:
            if not self.root.exists():
                raise DataError(f"dataset not found: {self.root}")
            if self.root.is_file():
                self.only, self.root = self.root.name, self.root.parent
            self.store = LocalStore(self.root)

    def is_file(self) -> bool:
        return self.only is not None

    def names(self, suffix: str) -> list[str]:
        assert self.store is not None
        if self.only is not None:
            return [self.only] if self.only.endswith(suffix) else []
        return [k for k in self.store.keys("") if k.endswith(suffix) and "/" not in k]

    def exists(self, name: str) -> bool:
        return self.store is not None and self.store.exists(name)

    def where(self, name: str) -> str:
        if self.root is not None:
            return str(self.root / name)
        assert self.store is not None
        return self.store.uri(name)

    def open(self, name: str, offset: int = 0) -> AbstractContextManager[BinaryIO]:
        assert self.store is not None
        return self.store.open_read(name, offset)

    def read(self, name: str) -> bytes:
        with self.open(name) as f:
            return f.read()

    @contextmanager
    def local(self, name: str) -> Iterator[Path]:
        """A local path of the file: itself, or a streamed temporary copy (tars from S3)."""
        if self.root is not None:
            yield self.root / name
            return
        assert self.store is not None
        tmp = Path(tempfile.mkdtemp(prefix="paris-input-"))
        try:
            yield self.store.get_file(name, tmp / Path(name).name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _open_image(data: bytes | Path, name: str, on_error: str) -> Image.Image | None:
    """Decode one image; a corrupt one fails the unit or is skipped (reported by name)."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        if on_error == "fail":
            raise DataError(f"{name}: not a readable image ({err}); set data.on_error: skip to skip it") from None
        log.warning("skipping %s: not a readable image (%s)", name, err)
        return None


# --------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------


class Source:
    """parts() lists the units of input; samples(part) streams one of them in a fixed order."""

    def __init__(self, cfg: DataConfig, store: Store | None = None) -> None:
        self.cfg = cfg
        self.skipped: list[str] = []  # names of unreadable images skipped (on_error: skip)

    def parts(self) -> list[Part]:
        raise NotImplementedError

    def samples(self, part: Part) -> Iterator[Sample]:
        raise NotImplementedError


class DigitsSource(Source):
    @cache  # noqa: B019 (one source per process; the data is 1,797 8x8 images)
    def _data(self) -> Any:
        from sklearn.datasets import load_digits  # ships its data inside the package: offline

        return load_digits()

    def parts(self) -> list[Part]:
        n = len(self._data().target)
        n = min(n, self.cfg.limit) if self.cfg.limit else n
        size = self.cfg.part_size
        return [Part("digits", s, min(s + size, n)) for s in range(0, n, size)]

    def samples(self, part: Part) -> Iterator[Sample]:
        ds = self._data()
        keep = set(self.cfg.labels) if self.cfg.labels is not None else None
        for i in range(part.start, part.stop if part.stop is not None else len(ds.target)):
            label = int(ds.target[i])
            if keep is not None and label not in keep:
                continue
            pixels = (ds.images[i] * (255.0 / 16.0)).clip(0, 255).astype("uint8")
            yield Sample(Image.fromarray(pixels, mode="L"), digit_caption(label), label, f"digits/{i}")


class FolderSource(Source):
    """A folder with captions.jsonl: lines {"file": ..., "caption": ..., "label"?: int}."""

    def __init__(self, cfg: DataConfig, store: Store | None = None) -> None:
        super().__init__(cfg)
        assert cfg.path is not None
        self.inputs = Inputs(cfg.path, store)
        if self.inputs.is_file():
            raise DataError(f"data.path must be a folder with captions.jsonl, got the file {cfg.path}")
        if not self.inputs.exists("captions.jsonl"):
            raise DataError(f'{self.inputs.where("")} has no captions.jsonl (lines of {{"file": ..., "caption": ...}})')

    def _records(self, part: Part) -> Iterator[tuple[int, int, bytes]]:
        """(line number, byte offset, line) of each non-empty line from the part's offset on."""
        pos, n = part.offset, part.line
        with self.inputs.open("captions.jsonl", part.offset) as f:
            for raw in f:
                if raw.strip():
                    yield n, pos, raw
                pos += len(raw)
                n += 1

    def parts(self) -> list[Part]:
        limit, size, out = self.cfg.limit, self.cfg.part_size, []
        count = 0
        for n, pos, _ in self._records(Part("captions.jsonl")):
            if limit and count >= limit:
                break
            if count % size == 0:
                out.append(Part("captions.jsonl", count, None, pos, n))
            count += 1
        if not count:
            raise DataError(f"{self.inputs.where('captions.jsonl')} is empty: no samples to prepare")
        return [Part(p.name, p.start, min(p.start + size, count), p.offset, p.line) for p in out]

    def samples(self, part: Part) -> Iterator[Sample]:
        where = self.inputs.where("captions.jsonl")
        for i, (n, _, line) in enumerate(self._records(part), part.start):
            if part.stop is not None and i >= part.stop:
                break
            try:
                rec = json.loads(line)
                file, caption = rec["file"], rec["caption"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                raise DataError(f'{where}:{n}: expected {{"file": ..., "caption": ...}}') from None
            if not isinstance(file, str) or Path(file).is_absolute() or ".." in Path(file).parts:
                raise DataError(f"{where}:{n}: file {file!r} must be a path inside the folder (no absolute, no '..')")
            if not self.inputs.exists(file):
                raise DataError(f"{where}:{n}: image not found: {self.inputs.where(file)}")
            image = _open_image(self.inputs.read(file), self.inputs.where(file), self.cfg.on_error)
            if image is None:
                self.skipped.append(self.inputs.where(file))
                continue
            yield Sample(image, str(caption), int(rec.get("label", -1)), file)


class WebDatasetSource(Source):
    """`.tar` shards (one part each) with an image (png/jpg/jpeg/webp) and txt/caption/json per key."""

    def __init__(self, cfg: DataConfig, store: Store | None = None) -> None:
        super().__init__(cfg)
        assert cfg.path is not None
        self.inputs = Inputs(cfg.path, store)

    def parts(self) -> list[Part]:
        tars = sorted(self.inputs.names(".tar"))
        if not tars:
            raise DataError(f"no WebDataset .tar shards at {self.inputs.where('')}")
        if not self.cfg.limit:
            return [Part(t) for t in tars]
        out, left = [], self.cfg.limit
        for t in tars:  # data.limit: count samples (tar headers only) until the limit is reached
            with self.inputs.local(t) as path:
                n = sum(1 for _ in self._records(path, t))
            out.append(Part(t, 0, min(n, left)))
            left -= min(n, left)
            if not left:
                break
        return out

    def _records(self, path: Path, name: str) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        # No .decode(): webdataset's default decoders unpickle .pyd/.pkl and torch.load .pth members.
        ds = wds.WebDataset(str(path), shardshuffle=False, empty_check=False)
        try:
            yield from ds
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read WebDataset shard {self.inputs.where(name)}: {err}") from None

    def samples(self, part: Part) -> Iterator[Sample]:
        with self.inputs.local(part.name) as path:
            for i, rec in enumerate(self._records(path, part.name)):
                if part.stop is not None and i >= part.stop:
                    break
                where = f"{self.inputs.where(part.name)}:{rec.get('__key__')}"
                unsafe = sorted(k for k in rec if k.rsplit(".", 1)[-1].lower() in _UNSAFE_EXTS)
                if unsafe:
                    raise DataError(
                        f"{where}.{unsafe[0]}: refusing a serialized-object member (only images and text are read)"
                    )
                img_key = next((k for k in _IMAGE_EXTS if k in rec), None)
                cap_key = next((k for k in _TEXT_EXTS if k in rec), None)
                if img_key is None or cap_key is None:
                    raise DataError(f"{where}: sample lacks an image or a caption")
                caption = rec[cap_key].decode()
                if cap_key == "json":
                    meta = json.loads(caption)
                    caption = meta.get("caption", "") if isinstance(meta, dict) else ""
                image = _open_image(rec[img_key], f"{where}.{img_key}", self.cfg.on_error)
                if image is None:
                    self.skipped.append(f"{where}.{img_key}")
                    continue
                yield Sample(image, str(caption).strip(), -1, f"{part.name}/{rec['__key__']}")


def open_source(cfg: DataConfig, store: Store | None = None) -> Source:
    """The source a config names. `store` is the output store: an s3:// source is read with
    its server and credentials."""
    if cfg.source == "digits":
        return DigitsSource(cfg)
    if not cfg.path:
        raise DataError(f"data.path is required for source {cfg.source!r}")
    return FolderSource(cfg, store) if cfg.source == "folder" else WebDatasetSource(cfg, store)


def load_samples(cfg: DataConfig, store: Store | None = None) -> list[Sample]:
    """Every sample in memory: for small sources and tests only (preparation streams parts)."""
    source = open_source(cfg, store)
    out = [s for part in source.parts() for s in source.samples(part)]
    if not out:
        raise DataError(f"{cfg.path or cfg.source}: no readable samples")
    return out
