"""Reads an expert's progress.json and latest.json, and a dataset's manifest, from the store, for status.

The operator reads with the credentials of the resource's own Secret (never its own), through
a read-only `paris.storage` store: artifacts belong to the trainers and outlive every resource.

Both files are written by a trainer the operator does not control (an older image, a user's
own script, a torn write on a store without atomic PUTs): a file that does not parse or has the
wrong shape is ignored and reported, never allowed to break the status of its expert.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from paris.config import StorageConfig, describe_errors
from paris.layout import dataset_prefix
from paris.storage import Store, open_store

_stores: dict[tuple[str, str | None, bool, str | None, str, str], Store] = {}
_lock = threading.Lock()


class ProgressFile(BaseModel):
    """The fields of progress.json the status shows (paris.trainer.loop writes more)."""

    model_config = ConfigDict(extra="allow")

    step: int = Field(ge=0)
    total: int = Field(0, ge=0)
    loss: float | None = None
    samples_per_s: float | None = None
    device: str | None = None
    state: str | None = None


class LatestFile(BaseModel):
    model_config = ConfigDict(extra="allow")

    step: int = Field(ge=0)
    prefix: str = Field(min_length=1)


@dataclass
class ExpertProgress:
    progress: dict[str, Any] | None = None  # progress.json, validated
    checkpoint: str | None = None  # URI of the checkpoint latest.json points at
    malformed: list[str] = field(default_factory=list)  # one line per file ignored


def progress_store(cfg: StorageConfig, access_key: str, secret_key: str) -> Store:
    """One cached read-only store per (location, credentials)."""
    from urllib3 import PoolManager, Retry, Timeout

    k = (cfg.uri, cfg.resolved_endpoint(), cfg.secure, cfg.region, access_key, secret_key)
    with _lock:
        if k not in _stores:
            # Short timeouts, one retry: a status poll must never hang a worker thread.
            http = PoolManager(
                timeout=Timeout(connect=3, read=5), retries=Retry(total=1, backoff_factor=0.2), maxsize=8
            )
            _stores[k] = open_store(
                cfg, access_key=access_key, secret_key=secret_key, read_only=True, http_client=http, deadline=0
            )
        return _stores[k]


def _read(store: Store, key: str, model: type[BaseModel], problems: list[str]) -> dict[str, Any] | None:
    """The validated object at `key`, None when absent; a malformed one is reported in
    `problems` and read as absent. Store errors (unreachable) propagate."""
    if not store.exists(key):
        return None
    raw = store.get_bytes(key)
    try:
        return model.model_validate(json.loads(raw)).model_dump(exclude_none=True)
    except json.JSONDecodeError as err:
        problems.append(f"{store.uri(key)} is not JSON ({err.msg} at line {err.lineno}); ignored")
    except ValidationError as err:
        problems.append(f"{store.uri(key)} is malformed ({describe_errors(err, whole='file')}); ignored")
    return None


def expert_progress(cfg: StorageConfig, access_key: str, secret_key: str, prefix: str) -> ExpertProgress:
    """progress.json and latest.json of the expert training into `prefix`."""
    store = progress_store(cfg, access_key, secret_key)
    out = ExpertProgress()
    out.progress = _read(store, f"{prefix}/progress.json", ProgressFile, out.malformed)
    latest = _read(store, f"{prefix}/latest.json", LatestFile, out.malformed)
    out.checkpoint = store.uri(latest["prefix"]) if latest else None
    return out


def dataset_manifest(cfg: StorageConfig, access_key: str, secret_key: str, name: str) -> dict[str, Any] | None:
    """The prepared dataset's manifest.json (written last by the finalize stage), if any."""
    manifest = progress_store(cfg, access_key, secret_key).get_json_or_none(f"{dataset_prefix(name)}/manifest.json")
    return manifest if isinstance(manifest, dict) else None
