"""Reads an expert's progress.json and latest.json, and a dataset's manifest, from the store, for status.

The operator reads with the credentials of the resource's own Secret (never its own), through
a read-only `paris.storage` store: artifacts belong to the trainers and outlive every resource.
"""

from __future__ import annotations

import threading
from typing import Any

from paris.config import StorageConfig
from paris.layout import dataset_prefix, expert_prefix
from paris.storage import Store, open_store

_stores: dict[tuple[str, str | None, bool, str | None, str, str], Store] = {}
_lock = threading.Lock()


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
            _stores[k] = open_store(cfg, access_key=access_key, secret_key=secret_key, read_only=True, http_client=http)
        return _stores[k]


def expert_progress(
    cfg: StorageConfig, access_key: str, secret_key: str, model: str, cluster: int
) -> tuple[dict[str, Any] | None, str | None]:
    """(progress.json, URI of the checkpoint latest.json points at)."""
    store = progress_store(cfg, access_key, secret_key)
    prefix = expert_prefix(model, cluster)
    progress = store.get_json_or_none(f"{prefix}/progress.json")
    latest = store.get_json_or_none(f"{prefix}/latest.json")
    checkpoint = store.uri(latest["prefix"]) if isinstance(latest, dict) and "prefix" in latest else None
    return progress, checkpoint


def dataset_manifest(cfg: StorageConfig, access_key: str, secret_key: str, name: str) -> dict[str, Any] | None:
    """The prepared dataset's manifest.json (written last by the finalize stage), if any."""
    manifest = progress_store(cfg, access_key, secret_key).get_json_or_none(f"{dataset_prefix(name)}/manifest.json")
    return manifest if isinstance(manifest, dict) else None
