"""Reads an expert's progress.json and latest.json from the object store, for its status.

The operator reads with the credentials of the resource's own Secret (never its own), and
only ever reads: artifacts in the store belong to the trainers and outlive every resource.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from typing import Any

from paris.layout import expert_prefix


@dataclass(frozen=True)
class Location:
    endpoint: str
    secure: bool
    region: str | None
    bucket: str
    prefix: str  # inside the bucket, no slashes around

    @classmethod
    def from_uri(cls, uri: str, endpoint: str, secure: bool, region: str | None) -> Location:
        # The same override the trainer honours, so an operator outside the cluster (tests,
        # port-forwards) can reach the store by another address than the pods.
        endpoint = os.environ.get("PARIS_S3_ENDPOINT") or endpoint
        endpoint = endpoint.removeprefix("http://").removeprefix("https://").rstrip("/")
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        return cls(endpoint, secure, region, bucket, prefix.strip("/"))

    def key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.key(key)}"


_clients: dict[tuple[str, bool, str | None, str, str], Any] = {}
_lock = threading.Lock()


def _client(loc: Location, access_key: str, secret_key: str) -> Any:
    from minio import Minio
    from urllib3 import PoolManager, Retry, Timeout

    k = (loc.endpoint, loc.secure, loc.region, access_key, secret_key)
    with _lock:
        if k not in _clients:
            # Short timeouts, one retry: a status poll must never hang a worker thread.
            http = PoolManager(
                timeout=Timeout(connect=3, read=5), retries=Retry(total=1, backoff_factor=0.2), maxsize=8
            )
            _clients[k] = Minio(
                loc.endpoint,
                access_key=access_key,
                secret_key=secret_key,
                secure=loc.secure,
                region=loc.region,
                http_client=http,
            )
        return _clients[k]


def read_json(loc: Location, key: str, access_key: str, secret_key: str) -> Any | None:
    """The object as JSON, None when it does not exist (yet); raises when the store is unreachable."""
    from minio.error import S3Error

    client = _client(loc, access_key, secret_key)
    try:
        resp = client.get_object(loc.bucket, loc.key(key))
    except S3Error as err:
        if err.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
            return None
        raise
    try:
        return json.loads(resp.read())
    except ValueError:
        return None  # being rewritten: the next poll sees it whole
    finally:
        resp.close()
        resp.release_conn()


def expert_progress(
    loc: Location, model: str, cluster: int, access_key: str, secret_key: str
) -> tuple[dict[str, Any] | None, str | None]:
    """(progress.json, URI of the checkpoint latest.json points at)."""
    prefix = expert_prefix(model, cluster)
    progress = read_json(loc, f"{prefix}/progress.json", access_key, secret_key)
    latest = read_json(loc, f"{prefix}/latest.json", access_key, secret_key)
    checkpoint = loc.uri(latest["prefix"]) if isinstance(latest, dict) and "prefix" in latest else None
    return progress, checkpoint
