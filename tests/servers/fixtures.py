"""pytest fixtures for the real servers (loaded by tests/conftest.py as a plugin).

Servers are session-scoped and start only when a test asks for them, so the unit tier never
pays for them. A missing binary fails the test with the command that builds it (never a
skip: a CI run without servers must not look green).

Fixtures
--------
minio_server -> tests.servers.minio.MinioServer
    .endpoint ("127.0.0.1:PORT"), .url ("http://..."), .access_key, .secret_key,
    .make_bucket(name=None) -> str, .client() -> minio.Minio, .env() -> dict for subprocesses.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers.minio import MinioServer, start_minio


@pytest.fixture(scope="session")
def minio_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioServer]:
    """A real MinIO server for the whole session; make a bucket per test."""
    with start_minio(tmp_path_factory.mktemp("minio")) as server:
        yield server
