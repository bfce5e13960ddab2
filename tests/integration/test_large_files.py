"""Large files through the real MinIO: multipart uploads and downloads stream from and to
disk (a 192 MiB file moves with far less than 192 MiB of memory), and checkpoints are pruned."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from paris.config import StorageConfig
from paris.storage import S3Store, open_store
from tests.servers.minio import MinioServer
from tests.unit.test_checkpoints import check_pruning

_MOVE = """
import json, resource, sys
from pathlib import Path
from paris.config import StorageConfig
from paris.storage import open_store

store = open_store(StorageConfig(uri=sys.argv[1]))
store.part_size = 8 * 2**20
src, dst = Path(sys.argv[2]), Path(sys.argv[3])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
store.put_file("big/file.bin", src)
store.get_file("big/file.bin", dst)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_kib": before, "after_kib": after}))
"""


@pytest.fixture
def s3(minio_server: MinioServer, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    for k, v in minio_server.env().items():
        monkeypatch.setenv(k, v)
    store = open_store(StorageConfig(uri=f"s3://{minio_server.make_bucket()}/p"))
    assert isinstance(store, S3Store)
    return store


def test_a_large_file_streams_through_multipart_without_being_held_in_memory(
    s3: S3Store, minio_server: MinioServer, tmp_path: Path
) -> None:
    src = tmp_path / "src.bin"
    size = 192 * 2**20
    with src.open("wb") as f:  # incompressible-looking content, written in blocks
        block = bytes(range(256)) * 4096
        for _ in range(size // len(block)):
            f.write(block)
    r = subprocess.run([sys.executable, "-c", _MOVE, s3.uri(), str(src), str(tmp_path / "dst.bin")],
                       capture_output=True, text=True, env={**os.environ, **minio_server.env()})
    assert r.returncode == 0, r.stderr
    rss = json.loads(r.stdout.strip().splitlines()[-1])
    grew_mib = (rss["after_kib"] - rss["before_kib"]) / 1024
    assert grew_mib < 64, f"peak memory grew by {grew_mib:.0f} MiB moving a 192 MiB file"
    assert (tmp_path / "dst.bin").stat().st_size == size
    assert (tmp_path / "dst.bin").read_bytes()[:1 << 20] == src.read_bytes()[:1 << 20]
    stat = minio_server.client().stat_object(s3.bucket, "p/big/file.bin")
    assert stat.etag is not None and stat.etag.endswith("-24")  # 24 parts of 8 MiB: a multipart upload


def test_checkpoints_are_pruned_in_minio(s3: S3Store, tmp_path: Path) -> None:
    check_pruning(s3, tmp_path)
