"""A real MinIO server on a free loopback port, with a fresh data dir and generated credentials."""

from __future__ import annotations

import contextlib
import os
import secrets
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from minio import Minio

from tests.servers.procs import ServerProcess, binary, free_port, wait_until


@dataclass
class MinioServer:
    """Handle on a running MinIO: pass endpoint/keys explicitly to the code under test."""

    endpoint: str  # "127.0.0.1:PORT", what S3 clients take
    access_key: str
    secret_key: str
    data_dir: Path
    process: ServerProcess
    port: int
    console_port: int
    _buckets: int = field(default=0, repr=False)
    _argv: list[str] = field(default_factory=list, repr=False)
    _env: dict[str, str] = field(default_factory=dict, repr=False)
    _workdir: Path | None = field(default=None, repr=False)
    _starts: int = field(default=1, repr=False)

    # ---- outages (the chaos suite) ------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process.alive()

    def stop(self, grace: float = 5.0) -> None:
        """Take the store down (SIGTERM, then SIGKILL after `grace`): clients get connection
        refused until start(). The data dir, port and credentials stay."""
        self.process.stop(grace)

    def kill(self) -> None:
        """Take the store down at once (SIGKILL), as a crashed node would."""
        self.process.stop(0)

    def start(self, timeout: float = 60.0) -> None:
        """Bring it back on the same port, data dir and credentials: what a restarted MinIO
        pod behind the same Service looks like to its clients."""
        assert self._workdir is not None and not self.process.alive(), "stop() it first"
        self._starts += 1
        log = self._workdir / f"minio-{self._starts}.log"
        self.process = ServerProcess("minio", self._argv, log, env=self._env, cwd=self._workdir)
        wait_until(
            lambda: _healthy(f"http://127.0.0.1:{self.port}/minio/health/ready"),
            timeout,
            "MinIO /minio/health/ready after a restart",
            server=self.process,
        )

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """The store is unreachable inside the block."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    @property
    def url(self) -> str:
        """http URL of the S3 API."""
        return f"http://{self.endpoint}"

    def client(self) -> Minio:
        """A `minio.Minio` client with the server's root credentials."""
        return Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False)

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a unique name when none is given) and return its name."""
        if name is None:
            self._buckets += 1
            name = f"test-{self._buckets}-{secrets.token_hex(3)}"
        self.client().make_bucket(name)
        return name

    def read_only_user(self, bucket: str) -> tuple[str, str]:
        """A new user that may list and read `bucket` and nothing else: (access key, secret key)."""
        from minio import MinioAdmin
        from minio.credentials import StaticProvider

        user, key = "reader-" + secrets.token_hex(3), secrets.token_urlsafe(24)
        admin = MinioAdmin(endpoint=self.endpoint, credentials=StaticProvider(self.access_key, self.secret_key),
                           secure=False)
        arn = f"arn:aws:s3:::{bucket}"
        statements = [
            {"Effect": "Allow", "Action": ["s3:GetBucketLocation", "s3:ListBucket"], "Resource": [arn]},
            {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": [f"{arn}/*"]},
        ]
        admin.policy_add(f"read-{bucket}", policy={"Version": "2012-10-17", "Statement": statements})
        admin.user_add(user, key)
        admin.attach_policy([f"read-{bucket}"], user=user)
        return user, key

    def env(self) -> dict[str, str]:
        """The variables an S3 consumer usually reads; for passing to subprocesses, not os.environ."""
        return {
            "PARIS_S3_ENDPOINT": self.url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "MINIO_ACCESS_KEY": self.access_key,
            "MINIO_SECRET_KEY": self.secret_key,
        }


def _healthy(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as r:
        return bool(r.status == 200)


@contextlib.contextmanager
def start_minio(workdir: Path, timeout: float = 60.0) -> Iterator[MinioServer]:
    """Start MinIO in `workdir`, wait until it is ready, stop it (whole process group) on exit."""
    exe = binary("minio")
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    access_key = "paris-" + secrets.token_hex(4)
    secret_key = secrets.token_urlsafe(24)
    port, console = free_port(), free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "MINIO_ROOT_USER": access_key,
        "MINIO_ROOT_PASSWORD": secret_key,
        # No web console, no phoning home: a bare S3 endpoint.
        "MINIO_BROWSER": "off",
        "MINIO_CALLHOME_ENABLE": "off",
        "MINIO_UPDATE": "off",
    }
    argv = [
        exe,
        "server",
        str(data),
        "--address",
        f"127.0.0.1:{port}",
        "--console-address",
        f"127.0.0.1:{console}",
        "--quiet",
    ]
    proc = ServerProcess("minio", argv, workdir / "minio.log", env=env, cwd=workdir)
    server: MinioServer | None = None
    try:
        wait_until(
            lambda: _healthy(f"http://127.0.0.1:{port}/minio/health/ready"),
            timeout,
            "MinIO /minio/health/ready",
            server=proc,
        )
        server = MinioServer(f"127.0.0.1:{port}", access_key, secret_key, data, proc, port, console)
        server._argv, server._env, server._workdir = argv, env, workdir
        yield server
    finally:
        (server.process if server is not None else proc).stop()  # the latest process after restarts
