"""Object store behind one small interface: `file://` (embedded default) and `s3://` (MinIO).

Experts share nothing but this store, so it is the only coordination point: every write is
all-or-nothing per object, and a multi-file artifact (a checkpoint) becomes visible only when
its pointer object is written after all of its files.

An s3:// store outlives outages: every call retries an unreachable server with exponential
backoff and jitter for up to `storage.retry_deadline` seconds (default 15 minutes), logging one
line when the outage starts and one when it ends, and past the deadline fails with one line
naming the endpoint (StoreUnavailable: the trainer exits so that its Job retries it).
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast

from paris.config import StorageConfig
from paris.errors import StorageError, StoreUnavailable
from paris.progress import console

T = TypeVar("T")


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode()


class Store(ABC):
    """Keys are '/'-separated paths relative to the store's root (bucket + prefix)."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def keys(self, prefix: str) -> list[str]:
        """All keys below prefix (recursively), sorted."""

    @abstractmethod
    def uri(self, key: str = "") -> str: ...

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Upload a local file without holding it in memory (multipart on S3)."""

    @abstractmethod
    def get_file(self, key: str, path: Path) -> Path:
        """Download to a local file without holding it in memory; the file appears whole or not at all."""

    @abstractmethod
    def open_read(self, key: str, offset: int = 0) -> AbstractContextManager[BinaryIO]:
        """A stream of the object's bytes from `offset` on, read as they arrive."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove one object; a missing one is not an error."""

    # ---- conveniences shared by every backend --------------------------------------

    def put_json(self, key: str, obj: Any) -> None:
        self.put_bytes(key, _json_bytes(obj))

    def try_put_json(self, key: str, obj: Any) -> bool:
        """Write once without waiting out an outage; False when the store did not take it. For
        writes that must never hold up training (progress.json: the next one carries on)."""
        try:
            self.put_json(key, obj)
        except (StorageError, OSError):
            return False
        return True

    def get_json(self, key: str) -> Any:
        try:
            return json.loads(self.get_bytes(key))
        except json.JSONDecodeError as err:
            raise StorageError(f"{self.uri(key)} is not valid JSON: {err}") from None

    def get_json_or_none(self, key: str) -> Any:
        return self.get_json(key) if self.exists(key) else None

    def delete_prefix(self, prefix: str) -> int:
        keys = self.keys(prefix.rstrip("/") + "/")
        for key in keys:
            self.delete(key)
        return len(keys)

    def upload_dir(self, local: Path, prefix: str) -> list[str]:
        keys: list[str] = []
        for f in sorted(p for p in Path(local).rglob("*") if p.is_file()):
            key = f"{prefix.rstrip('/')}/{f.relative_to(local).as_posix()}"
            self.put_file(key, f)
            keys.append(key)
        return keys

    def download_dir(self, prefix: str, local: Path) -> Path:
        prefix = prefix.rstrip("/") + "/"
        keys = self.keys(prefix)
        if not keys:
            raise StorageError(f"nothing stored under {self.uri(prefix)}")
        root = Path(local).resolve()
        dests = {key: (root / key[len(prefix) :]).resolve() for key in keys}
        for key, dest in dests.items():
            # A key is data from the store: "a/../../x" or "a//etc/x" must not write outside.
            if root not in dest.parents:
                raise StorageError(f"refusing {self.uri(key)}: it would be written outside {root}")
        for key, dest in dests.items():
            dest.parent.mkdir(parents=True, exist_ok=True)
            self.get_file(key, dest)
        return Path(local)

    def publish(self, local: Path, prefix: str, pointer_key: str, pointer: dict[str, Any]) -> None:
        """Upload a directory, then write the pointer that makes it visible (last, on purpose)."""
        self.upload_dir(local, prefix)
        self.put_json(pointer_key, {**pointer, "prefix": prefix})


class LocalStore(Store):
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        p = (self.root / key.lstrip("/")).resolve()
        if self.root not in (p, *p.parents):
            raise StorageError(f"key escapes the store: {key}")
        return p

    def put_bytes(self, key: str, data: bytes) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a reader sees the old object or the new one, never a torn one.
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_file(self, key: str, path: Path) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"not found: {self.uri(key)}") from None

    def get_file(self, key: str, path: Path) -> Path:
        src = self._path(key)
        if not src.is_file():
            raise StorageError(f"not found: {self.uri(key)}")
        path = Path(path)
        tmp = path.with_name(f".tmp-{path.name}")
        shutil.copyfile(src, tmp)
        os.replace(tmp, path)
        return path

    @contextmanager
    def open_read(self, key: str, offset: int = 0) -> Iterator[BinaryIO]:
        try:
            f = self._path(key).open("rb")
        except FileNotFoundError:
            raise StorageError(f"not found: {self.uri(key)}") from None
        with f:
            f.seek(offset)
            yield f

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def keys(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if base.is_file():
            return [prefix]
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        )

    def uri(self, key: str = "") -> str:
        return f"file://{self.root}/{key}" if key else f"file://{self.root}"


DEFAULT_RETRY_DEADLINE = 900.0  # StorageConfig.retry_deadline's default

# S3 error codes that mean "the server is there but cannot answer now".
_TRANSIENT_CODES = frozenset(
    {"ServiceUnavailable", "SlowDown", "InternalError", "RequestTimeout", "XMinioServerNotInitialized"}
)


def _http_client() -> Any:
    """minio's default HTTP client, but failing fast on a refused or broken connection:
    S3Store._retry waits out outages itself, with its deadline and its log lines (urllib3's
    own retries would add seconds to every attempt and say nothing)."""
    import certifi
    from urllib3 import PoolManager, Retry, Timeout

    return PoolManager(
        timeout=Timeout(connect=10, read=300),
        maxsize=16,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=Retry(total=1, connect=0, read=0, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )


def _transient(err: Exception) -> bool:
    """An outage (worth waiting out) rather than an answer."""
    from minio.error import S3Error, ServerError
    from urllib3.exceptions import HTTPError

    if isinstance(err, S3Error):
        return err.code in _TRANSIENT_CODES
    return isinstance(err, ServerError | HTTPError | ConnectionError | TimeoutError | OSError)


def _short(err: Exception | None) -> str:
    text = str(err or "").splitlines()[0] if err else ""
    if "Connection refused" in text:
        return "connection refused"
    return f"{type(err).__name__}: {text[:160]}" if err else "no answer"


class S3Store(Store):
    """Credentials come from the environment unless given; `read_only` never creates the
    bucket nor writes (the operator reads trainers' progress and must not touch artifacts)."""

    part_size = 64 * 2**20  # multipart upload part (S3's minimum is 5 MiB)

    def __init__(
        self,
        bucket: str,
        prefix: str,
        endpoint: str,
        secure: bool,
        region: str | None,
        access_key: str | None = None,
        secret_key: str | None = None,
        read_only: bool = False,
        http_client: Any = None,
        deadline: float = DEFAULT_RETRY_DEADLINE,
    ) -> None:
        from minio import Minio  # imported here so file:// users never need it configured

        access = access_key or os.environ.get("AWS_ACCESS_KEY_ID")
        secret = secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not access or not secret:
            raise StorageError("s3 storage needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment")
        endpoint = endpoint.removeprefix("http://").removeprefix("https://").rstrip("/")
        self.client = Minio(
            endpoint,
            access_key=access,
            secret_key=secret,
            secure=secure,
            region=region,
            http_client=http_client or _http_client(),
        )
        self.bucket, self.prefix, self.endpoint, self.read_only = bucket, prefix.strip("/"), endpoint, read_only
        self.secure, self.region, self.deadline = secure, region, deadline
        self._credentials = (access, secret)
        self._down_since: float | None = None
        if read_only:
            return
        from minio.error import S3Error

        try:
            if not self._retry(f"bucket {bucket}", lambda: self.client.bucket_exists(bucket)):
                self._retry(f"bucket {bucket}", lambda: self.client.make_bucket(bucket))
        except S3Error as err:  # the server answered no (credentials, policy): the user's to fix
            raise StorageError(f"s3 endpoint {endpoint} refused bucket {bucket}: {err.code}: {err.message}") from None

    def _retry(self, what: str, call: Callable[[], T], deadline: float | None = None) -> T:
        """`call`, again and again while the store is unreachable (connection refused or reset,
        timeouts, 5xx), with exponential backoff and full jitter, for up to `deadline` seconds
        (default: the store's). Past it: StoreUnavailable naming the endpoint, in one line. An
        answer of the server (NoSuchKey, AccessDenied) is no outage and is raised at once."""
        limit = self.deadline if deadline is None else deadline
        start, delay, last = time.monotonic(), 0.5, None
        while True:
            try:
                value = call()
            except Exception as err:
                if not _transient(err):
                    raise
                last = err
            else:
                if self._down_since is not None:
                    down = time.monotonic() - self._down_since
                    console.print(f"store {self.endpoint} answers again after {down:.0f}s")
                    self._down_since = None
                return value
            now = time.monotonic()
            if self._down_since is None:
                self._down_since = now
                if limit > 0:
                    console.print(
                        f"warning: store {self.endpoint} unreachable ({what}: {_short(last)}); "
                        f"retrying for up to {limit:.0f}s"
                    )
            if now - start >= limit:
                raise StoreUnavailable(
                    f"s3 endpoint {self.endpoint} unreachable for {now - start:.0f}s ({what}): {_short(last)}"
                ) from None
            time.sleep(min(random.uniform(0, delay), max(0.0, start + limit - now)))  # full jitter
            delay = min(delay * 2, 30.0)

    def try_put_json(self, key: str, obj: Any) -> bool:
        """One attempt, no retries: for writes that must never hold up training (progress)."""
        try:
            self._retry(key, lambda: self._put(key, _json_bytes(obj)), deadline=0)
        except StoreUnavailable:
            return False
        return True

    def _key(self, key: str) -> str:
        key = key.lstrip("/")
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_bytes(self, key: str, data: bytes) -> None:
        if self.read_only:
            raise StorageError(f"refusing to write {self.uri(key)}: this store is read-only")
        # A single PUT is atomic in S3/MinIO: readers never see a partial object.
        self._retry(key, lambda: self._put(key, data))

    def _put(self, key: str, data: bytes) -> None:
        self.client.put_object(self.bucket, self._key(key), io.BytesIO(data), len(data))

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Worker processes (`paris data prepare --workers N`) get the same store; the HTTP
        # client's sockets cannot travel, so the client is made again on the other side.
        access, secret = self._credentials
        return (
            S3Store,
            (
                self.bucket, self.prefix, self.endpoint, self.secure, self.region, access, secret, self.read_only,
                None, self.deadline,
            ),
        )

    def with_prefix(self, bucket: str, prefix: str) -> S3Store:
        """Another bucket/prefix on the same server with the same credentials, read-only
        (where prepare reads its input images from)."""
        access, secret = self._credentials
        return S3Store(
            bucket, prefix, self.endpoint, self.secure, self.region, access, secret, read_only=True,
            deadline=self.deadline,
        )

    def _not_found(self, err: Exception, key: str) -> None:
        from minio.error import S3Error

        if isinstance(err, S3Error) and err.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
            raise StorageError(f"not found: {self.uri(key)}") from None

    def put_file(self, key: str, path: Path) -> None:
        if self.read_only:
            raise StorageError(f"refusing to write {self.uri(key)}: this store is read-only")
        # Multipart above part_size: parts stream from the file, and the object appears only
        # when the upload completes (an aborted one leaves nothing visible).
        self._retry(
            key, lambda: self.client.fput_object(self.bucket, self._key(key), str(path), part_size=self.part_size)
        )

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as f:
            return f.read()

    def get_file(self, key: str, path: Path) -> Path:
        try:
            # fget_object streams into <path>.<etag>.part.minio and renames it when complete.
            self._retry(key, lambda: self.client.fget_object(self.bucket, self._key(key), str(path)))
        except Exception as err:
            self._not_found(err, key)
            raise
        return Path(path)

    @contextmanager
    def open_read(self, key: str, offset: int = 0) -> Iterator[BinaryIO]:
        try:
            resp = self._retry(key, lambda: self.client.get_object(self.bucket, self._key(key), offset=offset))
        except Exception as err:
            self._not_found(err, key)
            raise
        try:
            yield cast(BinaryIO, resp)
        finally:
            resp.close()
            resp.release_conn()

    def delete(self, key: str) -> None:
        if self.read_only:
            raise StorageError(f"refusing to delete {self.uri(key)}: this store is read-only")
        self._retry(key, lambda: self.client.remove_object(self.bucket, self._key(key)))

    def exists(self, key: str) -> bool:
        from minio.error import S3Error

        try:
            self._retry(key, lambda: self.client.stat_object(self.bucket, self._key(key)))
            return True
        except S3Error as err:
            if err.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
                return False
            raise

    def _iter(self, prefix: str) -> Iterator[str]:
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        for obj in self.client.list_objects(self.bucket, prefix=full, recursive=True):
            if obj.object_name is not None:
                yield obj.object_name[strip:]

    def keys(self, prefix: str) -> list[str]:
        return sorted(self._retry(f"list {prefix}", lambda: list(self._iter(prefix))))

    def etags(self, prefix: str) -> dict[str, str]:
        """Every key below prefix with its ETag, which changes when the object does (a cached
        copy is checked against it: paris.data.weights)."""
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0

        def listing() -> dict[str, str]:
            objects = self.client.list_objects(self.bucket, prefix=full, recursive=True)
            return {o.object_name[strip:]: str(o.etag) for o in objects if o.object_name is not None}

        return self._retry(f"list {prefix}", listing)

    def uri(self, key: str = "") -> str:
        base = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{base}/{key}" if key else base


def open_store(
    cfg: StorageConfig,
    *,
    access_key: str | None = None,
    secret_key: str | None = None,
    read_only: bool = False,
    http_client: Any = None,
    deadline: float | None = None,
) -> Store:
    """The store a config names. The keyword arguments matter for s3:// only: explicit
    credentials (instead of the environment), read-only access, a tuned HTTP client and how
    long an outage is waited out (default: cfg.retry_deadline; 0: one attempt)."""
    scheme, _, rest = cfg.uri.partition("://")
    if scheme == "file":
        return LocalStore(Path(rest))
    if scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        endpoint = cfg.resolved_endpoint()
        if not endpoint:
            raise StorageError("s3 storage needs an endpoint: set storage.endpoint or PARIS_S3_ENDPOINT")
        wait = cfg.retry_deadline if deadline is None else deadline
        return S3Store(
            bucket, prefix, endpoint, cfg.secure, cfg.region, access_key, secret_key, read_only, http_client, wait
        )
    raise StorageError(f"unsupported storage uri {cfg.uri!r}: use file:// or s3://")
