"""pytest fixtures for the real servers (loaded by tests/conftest.py as a plugin).

Servers are session-scoped and start only when a test asks for them, so the unit tier never
pays for them. A missing binary fails the test with the command that builds it (never a
skip: a CI run without servers must not look green).

Fixtures
--------
minio_server -> tests.servers.minio.MinioServer
    .endpoint ("127.0.0.1:PORT"), .url ("http://..."), .access_key, .secret_key,
    .make_bucket(name=None) -> str, .client() -> minio.Minio, .env() -> dict for subprocesses.
own_minio -> tests.servers.minio.MinioServer
    A MinIO of the test alone, for outages: .stop(), .kill(), .start() (same port, data dir
    and credentials), `with .down(): ...`.
k8s_cluster -> tests.servers.cluster.Cluster
    .kubeconfig (Path), .server, .token, .version (pinned gitVersion), .pools,
    .api_client() / .core() / .batch() / .apps(), .kubectl(*args), .env(), .logs().
    Control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the kwok
    controller, built by scripts/test-infra. Every YAML in the repo's crds/ is applied.
    Fake nodes (kwok): every node has annotation kwok.x-k8s.io/node=fake, label type=kwok,
    label pool=<pool> and taint kwok.x-k8s.io/node=fake:NoSchedule; GPU pools also carry
    taint nvidia.com/gpu=present:NoSchedule. Pods need tolerations for both
    (tests.servers.cluster.FAKE_NODE_TOLERATIONS):
      pool=a40  : kwok-a40-0, kwok-a40-1  (4 nvidia.com/gpu each, 32 cpu, 256Gi)
      pool=h100 : kwok-h100-0             (8 nvidia.com/gpu, 32 cpu, 256Gi)
      pool=cpu  : kwok-cpu-0, kwok-cpu-1  (no GPU, 16 cpu, 64Gi)
k8s_namespace -> str
    A fresh namespace per test (its default ServiceAccount exists), deleted afterwards.
pod_runtime -> str
    "image" or "process": how pods (and the e2e operator) run. $PARIS_POD_RUNTIME=image|process
    forces one; unset, the images built for this tree (scripts/test-infra build images) are
    used when they exist, else local processes, with a warning. See tests/servers/images.py.
pod_runner -> tests.servers.podrunner.PodRunner
    Runs pods bound to fake nodes inside their image (or as local processes) and reports their
    real exit codes (see that module). .runtime, .env (overrides, cleared after each test), .overrides(env),
    .url_for(pod, namespace), .url_for_selector(selector, namespace), .wait_for(pod, ns),
    .find(pod, ns) -> PodProcess (.exit_code, .stdout_path, .stderr_path, .logs()),
    .logs(pod, ns), .describe().
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

import pytest

from tests.servers.procs import PortInUse

# The server modules import the kubernetes and minio clients (~1 s): import them only when a
# fixture is used, so the unit tier does not pay for them.
if TYPE_CHECKING:
    from tests.servers.cluster import Cluster
    from tests.servers.minio import MinioServer
    from tests.servers.podrunner import PodRunner

T = TypeVar("T")


def _start(stack: contextlib.ExitStack, start: Callable[[], contextlib.AbstractContextManager[T]]) -> T:
    """Enter a server's context, starting over (fresh dir, fresh ports) if it lost the race
    for a port between our pick and its bind."""
    for attempt in range(3):
        try:
            return stack.enter_context(start())
        except PortInUse:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def minio_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioServer]:
    """A real MinIO server for the whole session; make a bucket per test."""
    from tests.servers.minio import start_minio

    with contextlib.ExitStack() as stack:
        yield _start(stack, lambda: start_minio(tmp_path_factory.mktemp("minio")))


@pytest.fixture
def own_minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioServer]:
    """A MinIO server of this test alone, which it may stop and start (.stop(), .kill(),
    .start(), `with .down():`) on the same port, data dir and credentials."""
    from tests.servers.minio import start_minio

    with contextlib.ExitStack() as stack:
        yield _start(stack, lambda: start_minio(tmp_path_factory.mktemp("own-minio")))


@pytest.fixture(scope="session")
def k8s_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A real control plane with fake GPU/CPU node pools; see the module docstring."""
    from tests.servers.cluster import start_cluster

    with contextlib.ExitStack() as stack:
        yield _start(stack, lambda: start_cluster(tmp_path_factory.mktemp("k8s")))


@pytest.fixture(scope="session")
def pod_runtime() -> str:
    """"image" (pods run in the locally built images) or "process"; see the module docstring."""
    from tests.servers import images

    runtime = images.pod_runtime()
    if runtime == "process" and images.RUNTIME_VAR not in os.environ:
        warnings.warn(
            "the images are not built for this tree: pods run as local processes "
            "(scripts/test-infra build images, or PARIS_POD_RUNTIME=process to silence this)",
            stacklevel=1,
        )
    return runtime


@pytest.fixture(scope="session")
def _pod_runner_session(
    k8s_cluster: Cluster, pod_runtime: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PodRunner]:
    from tests.servers.podrunner import PodRunner

    runner = PodRunner(k8s_cluster, tmp_path_factory.mktemp("pods"), runtime=pod_runtime).start()
    try:
        yield runner
    finally:
        runner.stop()


@pytest.fixture
def pod_runner(_pod_runner_session: PodRunner) -> Iterator[PodRunner]:
    """The session's pod runner, with env overrides reset after the test. A problem inside the
    runner itself (not a pod's own failure) fails the test that saw it."""
    runner = _pod_runner_session
    seen = len(runner.errors)
    yield runner
    runner.env.clear()
    new_errors = runner.errors[seen:]
    assert not new_errors, f"pod runner errors: {new_errors}\n{runner.describe()}"


@pytest.fixture
def k8s_namespace(k8s_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace, ready for pods (its default ServiceAccount exists)."""
    from kubernetes.client.exceptions import ApiException

    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"{base}-{secrets.token_hex(3)}"
    core = k8s_cluster.core()
    core.create_namespace({"metadata": {"name": name}})
    deadline = time.monotonic() + 60
    while True:
        try:
            core.read_namespaced_service_account("default", name)
            break
        except ApiException as e:
            if e.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    yield name
    try:
        core.delete_namespace(name)
    except ApiException as e:
        if e.status != 404:
            raise
