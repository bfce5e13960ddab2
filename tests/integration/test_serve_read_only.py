"""`paris serve` needs only read access to the store: its loader works with a MinIO user that
may list and read the bucket and nothing else (serve pods get such a credential)."""

from __future__ import annotations

import pytest
from minio import Minio
from minio.error import S3Error

from paris.config import RunConfig, StorageConfig
from paris.router.assemble import publish_pipeline, random_pipeline
from paris.router.server import pipeline_loader
from paris.storage import open_store
from tests.servers.minio import MinioServer


def test_the_server_loads_the_pipeline_with_a_read_only_credential(
    minio_server: MinioServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = minio_server.make_bucket()
    cfg = RunConfig(model="digits", storage=StorageConfig(uri=f"s3://{bucket}/team", endpoint=minio_server.endpoint))
    writer = open_store(cfg.storage, access_key=minio_server.access_key, secret_key=minio_server.secret_key)
    publish_pipeline(random_pipeline(2), writer, cfg.model)
    user, key = minio_server.read_only_user(bucket)
    with pytest.raises(S3Error, match="Access Denied"):
        Minio(minio_server.endpoint, access_key=user, secret_key=key, secure=False).make_bucket(bucket + "-x")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", user)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key)
    pipe = pipeline_loader(cfg)()
    assert len(pipe.experts) == 2
