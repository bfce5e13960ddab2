"""The s3:// backend against the real MinIO: the same contract as file://, plus a whole
expert trained with nothing but the bucket in common."""

from __future__ import annotations

import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from paris.config import StorageConfig
from paris.errors import TRANSIENT_EXIT, StorageError, StoreUnavailable
from paris.storage import S3Store, open_store
from tests.helpers import paris_cli, tiny_config, write_config
from tests.servers.minio import MinioServer
from tests.unit.test_storage import check_store_contract


@pytest.fixture
def s3(minio_server: MinioServer, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    for k, v in minio_server.env().items():
        monkeypatch.setenv(k, v)
    bucket = minio_server.make_bucket()
    store = open_store(StorageConfig(uri=f"s3://{bucket}/some/prefix"))
    assert isinstance(store, S3Store)
    return store


def test_s3_store_contract(s3: S3Store, tmp_path: Path) -> None:
    check_store_contract(s3, tmp_path)
    assert s3.uri("a/x.json").endswith("/some/prefix/a/x.json")


def test_s3_store_creates_its_bucket(minio_server: MinioServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in minio_server.env().items():
        monkeypatch.setenv(k, v)
    store = open_store(StorageConfig(uri="s3://fresh-bucket-for-paris"))
    store.put_bytes("k", b"v")
    assert minio_server.client().bucket_exists("fresh-bucket-for-paris")


def test_wrong_credentials_are_a_one_line_error(minio_server: MinioServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARIS_S3_ENDPOINT", minio_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(StorageError, match="refused bucket paris: InvalidAccessKeyId") as err:
        open_store(StorageConfig(uri="s3://paris"))
    assert not isinstance(err.value, StoreUnavailable), "wrong keys are the user's to fix: no retries"


def test_prepare_and_train_an_expert_through_minio(minio_server: MinioServer, tmp_path: Path) -> None:
    bucket = minio_server.make_bucket()
    cfg = write_config(tmp_path / "c.yaml", tiny_config(f"s3://{bucket}/run1"))
    env = minio_server.env()
    for args in (("data", "prepare", str(cfg)), ("train", "expert", str(cfg), "--cluster", "1")):
        r = paris_cli(*args, env=env)
        assert r.returncode == 0, r.stderr
    client = minio_server.client()
    latest = json.loads(client.get_object(bucket, "run1/models/tiny/experts/1/latest.json").read())
    assert latest["step"] == 2
    names = {o.object_name for o in client.list_objects(bucket, prefix="run1/", recursive=True)}
    assert "run1/datasets/digits-mini/manifest.json" in names
    assert any(n.startswith(f"run1/{latest['prefix']}/") and n.endswith(".safetensors") for n in names)
    # Expert 1 wrote under its own prefix only.
    assert not any("/experts/0/" in n for n in names)


def test_a_read_only_store_reads_but_never_writes_or_creates_buckets(minio_server: MinioServer) -> None:
    bucket = minio_server.make_bucket()
    minio_server.client().put_object(bucket, "p/progress.json", io.BytesIO(b'{"step": 3}'), 11)
    ro = open_store(StorageConfig(uri=f"s3://{bucket}/p", endpoint=minio_server.endpoint), read_only=True,
                    access_key=minio_server.access_key, secret_key=minio_server.secret_key)
    assert ro.get_json("progress.json") == {"step": 3}
    with pytest.raises(StorageError, match="read-only"):
        ro.put_bytes("x", b"1")
    open_store(StorageConfig(uri="s3://never-created", endpoint=minio_server.endpoint), read_only=True,
               access_key=minio_server.access_key, secret_key=minio_server.secret_key)
    assert not minio_server.client().bucket_exists("never-created")


def _store(minio: MinioServer, bucket: str, deadline: float) -> S3Store:
    cfg = StorageConfig(uri=f"s3://{bucket}", endpoint=minio.endpoint, retry_deadline=deadline)
    store = open_store(cfg, access_key=minio.access_key, secret_key=minio.secret_key)
    assert isinstance(store, S3Store)
    return store


def test_an_outage_shorter_than_the_deadline_is_waited_out(own_minio: MinioServer) -> None:
    """MinIO stopped, then back after a few seconds: the call that met the outage succeeds."""
    store = _store(own_minio, own_minio.make_bucket(), deadline=60)
    store.put_json("before.json", {"n": 1})
    own_minio.stop()
    # The call waits in a worker thread; the server restarts from this one (a server started
    # from a thread that then ends would die with it: PR_SET_PDEATHSIG).
    t0 = time.monotonic()
    with ThreadPoolExecutor(1) as pool:
        during = pool.submit(store.put_json, "during.json", {"n": 2})
        time.sleep(3)
        assert not during.done(), "still waiting for the store"
        own_minio.start()
        during.result(timeout=60)
    assert 2.5 < time.monotonic() - t0 < 60
    assert store.get_json("during.json") == {"n": 2} and store.get_json("before.json") == {"n": 1}


def test_past_the_deadline_the_store_fails_in_one_line_naming_the_endpoint(own_minio: MinioServer) -> None:
    store = _store(own_minio, own_minio.make_bucket(), deadline=2)
    own_minio.stop()
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable) as err:
        store.get_json("anything.json")
    assert 2 <= time.monotonic() - t0 < 10
    line = str(err.value)
    assert "\n" not in line and own_minio.endpoint in line and "unreachable for" in line
    assert err.value.exit_code == TRANSIENT_EXIT, "a Job retries an outage; it is no user error"
    # A write that must never hold up training makes one attempt and says it did not land.
    t0 = time.monotonic()
    assert store.try_put_json("progress.json", {"step": 3}) is False
    assert time.monotonic() - t0 < 2
    own_minio.start()
    assert store.try_put_json("progress.json", {"step": 4}) is True
    # An answer of the server (here: no such key) is no outage: raised at once.
    t0 = time.monotonic()
    with pytest.raises(StorageError, match="not found"):
        _store(own_minio, "no-such-thing-here", deadline=60).with_prefix("no-such-bucket", "").get_bytes("k")
    assert time.monotonic() - t0 < 5
