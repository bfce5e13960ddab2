"""Encoder weights where a cluster's pods can reach them: a local path, or the object store.

The VAE, DINOv2 and open_clip load from local files (no code fetches from a hub). A pod on a
cluster shares no disk with the person who configured it, only the object store, so every
weights setting (`data.vae`, `data.features.path` and `.model`, `data.text_encoder.model` and
`.pretrained`) may also be `s3://bucket/key` on the storage's own server, read with the same
credentials: one object (a checkpoint file, an open_clip model-config `.json`) or a folder of
them (what `save_pretrained` writes). It is downloaded once into `data.weights_cache` and
reused while the stored objects keep their ETags. A download lands in a temporary folder that
is renamed into place when complete, so neither a crash mid-download nor two processes
fetching at once leave a partial copy that gets loaded.

The config and the dataset manifest keep the URI, not the local copy: the router's pod, on
another machine, resolves the same URI again when it assembles the pipeline.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from paris.errors import DataError
from paris.progress import console
from paris.storage import S3Store, Store

MARKER = ".paris-weights.json"  # written into a cached copy last: what it was copied from


def default_cache() -> Path:
    """data.weights_cache's default: $XDG_CACHE_HOME/paris/weights (the operator points
    XDG_CACHE_HOME at the pod's scratch volume)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "paris" / "weights"


class Weights:
    """Turns a weights setting into a local path the libraries can load."""

    def __init__(self, store: Store | None = None, cache: str | Path | None = None) -> None:
        self.store = store
        self.cache = Path(cache).expanduser() if cache else default_cache()

    def local(self, ref: str, setting: str) -> str:
        """A local path for `ref`: itself when it is one (or file://...), else the cached copy
        of the s3:// object or folder it names."""
        scheme, sep, rest = ref.partition("://")
        if not sep:
            return ref
        if scheme == "file" and rest:
            return rest
        if scheme != "s3":
            raise DataError(f"{setting} {ref!r}: use a local path, file://... or s3://bucket/key")
        bucket, _, key = rest.partition("/")
        key = key.strip("/")
        if not bucket or not key:
            raise DataError(f"{setting} {ref!r}: name an object or a folder, s3://bucket/key")
        if not isinstance(self.store, S3Store):
            raise DataError(f"{setting} {ref!r}: weights in s3:// need s3:// storage (the same server)")
        return str(self._fetch(self.store.with_prefix(bucket, ""), key, ref, setting))

    def _fetch(self, src: S3Store, key: str, ref: str, setting: str) -> Path:
        listed = src.etags(key)
        # One object, or a folder: the objects below key/ (not a sibling such as key-old/...).
        one = key in listed
        want = {key: listed[key]} if one else {k: e for k, e in listed.items() if k.startswith(f"{key}/")}
        if not want:
            raise DataError(f"{setting}: nothing stored at {ref}")
        name = key.rsplit("/", 1)[-1]  # kept: open_clip names a model config by its file's stem
        root = self.cache / hashlib.sha256(f"{src.endpoint}\0{ref}".encode()).hexdigest()[:24]
        if _cached(root, want):
            return root / name
        self.cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.cache))
        try:
            console.print(f"fetching {setting} from {ref} ({len(want)} file(s))")
            if one:
                src.get_file(key, tmp / name)
            else:
                src.download_dir(key, tmp / name)
            (tmp / MARKER).write_text(json.dumps({"ref": ref, "etags": want}, sort_keys=True))
            if _cached(root, want):  # another process fetched the same meanwhile: it may be loading it
                return root / name
            if root.exists():  # an outdated copy: out of the way first (a rename onto it would fail)
                stale = Path(tempfile.mkdtemp(prefix=".stale-", dir=self.cache))
                with contextlib.suppress(OSError):  # another process moved it meanwhile
                    os.rename(root, stale / "old")
                shutil.rmtree(stale, ignore_errors=True)
            try:
                os.rename(tmp, root)
            except OSError:  # another process put its complete copy there first
                if not _cached(root, want):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return root / name


def _cached(root: Path, want: dict[str, str]) -> bool:
    try:
        return bool(json.loads((root / MARKER).read_text())["etags"] == want)
    except (OSError, ValueError, KeyError):
        return False
