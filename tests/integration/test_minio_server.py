"""The integration tier's MinIO is the real server: its own health and admin APIs answer,
and objects round-trip through the S3 protocol."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from minio.credentials import StaticProvider
from minio.minioadmin import MinioAdmin

from tests.servers.minio import MinioServer, start_minio
from tests.servers.procs import binary, port_open


def _get(url: str) -> tuple[int, dict[str, str]]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, dict(r.headers)


def test_health_endpoints_and_server_header(minio_server: MinioServer) -> None:
    status, headers = _get(f"{minio_server.url}/minio/health/live")
    assert status == 200
    assert headers.get("Server", "").startswith("MinIO")
    status, _ = _get(f"{minio_server.url}/minio/health/ready")
    assert status == 200


def test_admin_info_reports_one_online_server(minio_server: MinioServer) -> None:
    admin = MinioAdmin(
        endpoint=minio_server.endpoint,
        credentials=StaticProvider(minio_server.access_key, minio_server.secret_key),
        secure=False,
    )
    info = json.loads(admin.info())
    servers = info["servers"]
    assert len(servers) == 1
    assert servers[0]["state"] == "online"
    assert servers[0]["endpoint"] == minio_server.endpoint


def test_put_get_round_trip(minio_server: MinioServer) -> None:
    bucket = minio_server.make_bucket()
    client = minio_server.client()
    payload = b"paris" * 1000
    client.put_object(bucket, "dir/blob.bin", io.BytesIO(payload), len(payload))
    resp = client.get_object(bucket, "dir/blob.bin")
    try:
        assert resp.read() == payload
    finally:
        resp.close()
        resp.release_conn()
    names = [o.object_name for o in client.list_objects(bucket, prefix="dir/")]
    assert names == ["dir/blob.bin"]


def test_wrong_credentials_are_refused(minio_server: MinioServer) -> None:
    from minio import Minio
    from minio.error import S3Error

    bad = Minio(minio_server.endpoint, access_key=minio_server.access_key, secret_key="wrong", secure=False)
    try:
        bad.list_buckets()
    except S3Error as e:
        assert e.code == "SignatureDoesNotMatch"
    else:
        raise AssertionError("MinIO accepted a wrong secret key")


def test_teardown_closes_ports_and_kills_process(tmp_path: Path) -> None:
    with start_minio(tmp_path) as server:
        assert port_open(server.port)
        pid = server.process.pid
    assert not port_open(server.port)
    assert not port_open(server.console_port)
    assert server.process.proc.poll() is not None, f"minio pid {pid} still running"


def test_servers_die_with_a_killed_test_process(tmp_path: Path) -> None:
    """A pytest killed outright (a CI time-out) must not leave a server behind."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from tests.servers.minio import start_minio\n"
        "with start_minio(Path(sys.argv[1])) as s:\n"
        "    print(s.port, s.process.pid, flush=True)\n"
        "    time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
        text=True,
    )
    try:
        assert parent.stdout is not None
        port, pid = (int(x) for x in parent.stdout.readline().split())
        assert port_open(port)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while (port_open(port) or _alive(pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not port_open(port)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead: its parent is gone, init reaps it.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_missing_binary_fails_with_the_build_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARIS_TEST_BIN", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match=r"scripts/test-infra build"):
        binary("minio")


def test_a_stopped_minio_comes_back_on_the_same_port_with_its_data(own_minio: MinioServer) -> None:
    """The chaos suite's outage: clients are refused while it is down, then find every object."""
    bucket = own_minio.make_bucket()
    own_minio.client().put_object(bucket, "k", io.BytesIO(b"kept"), 4)
    endpoint = own_minio.endpoint
    with own_minio.down():
        assert not own_minio.running and not port_open(own_minio.port)
        with pytest.raises(Exception):  # noqa: B017 - urllib3 raises one of several connection errors
            own_minio.client().bucket_exists(bucket)
    assert own_minio.running and own_minio.endpoint == endpoint
    assert own_minio.client().get_object(bucket, "k").read() == b"kept"
    own_minio.kill()
    assert not port_open(own_minio.port)
    own_minio.start()
    assert own_minio.client().get_object(bucket, "k").read() == b"kept"
