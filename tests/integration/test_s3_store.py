"""The s3:// backend against the real MinIO: the same contract as file://, plus a whole
expert trained with nothing but the bucket in common."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from paris.config import StorageConfig
from paris.errors import StorageError
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
    with pytest.raises(StorageError, match="cannot reach s3 endpoint"):
        open_store(StorageConfig(uri="s3://paris"))


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
