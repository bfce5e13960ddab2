"""A real Kubernetes control plane from bare binaries, with fake kwok node pools.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the kwok controller run as
local processes on free loopback ports, each in its own process group. We launch them
ourselves rather than through `kwokctl --runtime binary`: every port, flag and pid is then in
our hands, teardown is a plain process-group kill, and nothing tries to download a binary.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from tests.servers.procs import ServerProcess, binary, free_port, port_open, wait_until

REPO = Path(__file__).resolve().parents[2]
STAGES = Path(__file__).with_name("stages.yaml")

FAKE_NODE_ANNOTATION = {"kwok.x-k8s.io/node": "fake"}
FAKE_NODE_TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
GPU = "nvidia.com/gpu"

# Tolerations a pod needs to land on the fake nodes (the GPU one only matters on GPU pools).
FAKE_NODE_TOLERATIONS: list[dict[str, str]] = [
    {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
]


@dataclass(frozen=True)
class Pool:
    """A node pool: `count` identical fake nodes labelled pool=<name>."""

    name: str
    count: int
    gpus: int
    cpu: str = "32"
    memory: str = "256Gi"

    def node_names(self) -> list[str]:
        return [f"kwok-{self.name}-{i}" for i in range(self.count)]


# The heterogeneous cluster the e2e tests get: two GPU pools of different sizes and a CPU pool.
DEFAULT_POOLS: tuple[Pool, ...] = (
    Pool("a40", count=2, gpus=4),
    Pool("h100", count=1, gpus=8),
    Pool("cpu", count=2, gpus=0, cpu="16", memory="64Gi"),
)


def node_manifest(pool: Pool, name: str) -> dict[str, Any]:
    """A v1.Node that kwok manages: annotated fake, tainted, with the pool's capacity."""
    capacity = {"cpu": pool.cpu, "memory": pool.memory, "pods": "110", "ephemeral-storage": "1Ti"}
    taints = [FAKE_NODE_TAINT]
    if pool.gpus:
        capacity[GPU] = str(pool.gpus)
        taints = [FAKE_NODE_TAINT, GPU_TAINT]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": dict(FAKE_NODE_ANNOTATION),
            "labels": {
                "type": "kwok",
                "pool": pool.name,
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": f"fake-{pool.name}",
            },
        },
        "spec": {"taints": taints},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


@dataclass
class Cluster:
    """Handle on the running control plane. Pass `kubeconfig` to whatever talks to it."""

    kubeconfig: Path
    server: str  # https://127.0.0.1:PORT
    token: str
    ca_file: Path
    workdir: Path
    version: str  # the apiserver's gitVersion, e.g. v1.34.4
    pools: tuple[Pool, ...]
    processes: dict[str, ServerProcess] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def api_client(self) -> k8s.ApiClient:
        """A fresh kubernetes-client ApiClient bound to this cluster (no global config)."""
        return k8s_config.new_client_from_config(config_file=str(self.kubeconfig))

    # Typed as Any on purpose: the client's models make every field Optional and reject
    # plain-dict bodies in its annotations, which would bury test code in casts.
    def core(self) -> Any:
        """CoreV1Api on a fresh ApiClient."""
        return k8s.CoreV1Api(self.api_client())

    def batch(self) -> Any:
        """BatchV1Api on a fresh ApiClient."""
        return k8s.BatchV1Api(self.api_client())

    def apps(self) -> Any:
        """AppsV1Api on a fresh ApiClient."""
        return k8s.AppsV1Api(self.api_client())

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster; raises with its stderr on failure."""
        argv = [binary("kubectl"), f"--kubeconfig={self.kubeconfig}", *args]
        res = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=120)
        if check and res.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({res.returncode}):\n{res.stderr}")
        return res

    def env(self) -> dict[str, str]:
        """Variables for a subprocess that should talk to this cluster (e.g. an operator)."""
        return {"KUBECONFIG": str(self.kubeconfig)}

    def nodes_in_pool(self, pool: str) -> list[str]:
        return [n for p in self.pools if p.name == pool for n in p.node_names()]

    def logs(self) -> dict[str, Path]:
        """Log file of each control-plane process, for debugging."""
        return {name: p.log_path for name, p in self.processes.items()}


def _openssl(*args: str, cwd: Path) -> None:
    res = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{res.stderr}")


def make_pki(d: Path) -> None:
    """A throwaway CA, a serving cert for 127.0.0.1/localhost, and the service-account key pair."""
    d.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=paris-test-ca",
        cwd=d,
    )
    (d / "san.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=kube-apiserver",
        cwd=d,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
        cwd=d,
    )
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)


def write_kubeconfig(path: Path, server: str, ca_file: Path, token: str) -> None:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "paris-test", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "paris-test", "context": {"cluster": "paris-test", "user": "admin"}}],
        "current-context": "paris-test",
    }
    path.write_text(yaml.safe_dump(cfg))


def _get_json(url: str, token: str | None = None, ca_file: Path | None = None) -> Any:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    ctx = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
        body = r.read()
    try:
        return json.loads(body)
    except ValueError:
        return body.decode()


def _base_env(workdir: Path) -> dict[str, str]:
    # HOME points at the workdir so no ~/.kube or ~/.kwok of the developer leaks in.
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir)}


def _nodes_ready(core: Any, names: list[str]) -> bool:
    """Every fake node is Ready and the node lifecycle controller has lifted its startup taints."""
    for name in names:
        node = core.read_node(name)
        ready = any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
        extra_taints = [t for t in node.spec.taints or [] if t.key.startswith("node.kubernetes.io/")]
        if not ready or extra_taints or not (node.status.allocatable or {}).get("pods"):
            return False
    return True


def apply_crds(cluster: Cluster, crd_dir: Path) -> list[Path]:
    """Apply every YAML in crd_dir (server-side, as big CRDs overflow client-side apply) and
    wait until each CRD is Established."""
    files = sorted([*crd_dir.glob("*.yaml"), *crd_dir.glob("*.yml")])
    if not files:
        return []
    for f in files:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(f))
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    return files


@contextlib.contextmanager
def start_cluster(
    workdir: Path,
    pools: tuple[Pool, ...] = DEFAULT_POOLS,
    crd_dir: Path | None = REPO / "crds",
    timeout: float = 120.0,
) -> Iterator[Cluster]:
    """Start the control plane in `workdir`, create the fake nodes, apply the CRDs; on exit
    stop every process (reverse order, whole process groups)."""
    exes = {
        n: binary(n) for n in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kubectl")
    }
    workdir.mkdir(parents=True, exist_ok=True)
    pki = workdir / "pki"
    make_pki(pki)
    token = secrets.token_hex(16)
    (pki / "tokens.csv").write_text(f'{token},paris-admin,paris-admin,"system:masters"\n')
    ports = {
        "etcd": free_port(),
        "etcd-peer": free_port(),
        "apiserver": free_port(),
        "scheduler": free_port(),
    }
    server = f"https://127.0.0.1:{ports['apiserver']}"
    kubeconfig = workdir / "kubeconfig"
    write_kubeconfig(kubeconfig, server, pki / "ca.crt", token)
    env = _base_env(workdir)

    with contextlib.ExitStack() as stack:
        procs: dict[str, ServerProcess] = {}

        def launch(name: str, argv: list[str]) -> ServerProcess:
            p = ServerProcess(name, argv, workdir / "logs" / f"{name}.log", env=env, cwd=workdir)
            procs[name] = p
            stack.callback(p.stop, 10.0)  # ExitStack unwinds in reverse launch order
            return p

        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        peer_url = f"http://127.0.0.1:{ports['etcd-peer']}"
        etcd = launch(
            "etcd",
            [
                exes["etcd"],
                "--name=node0",
                f"--data-dir={workdir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=node0={peer_url}",
                "--unsafe-no-fsync",
                "--log-level=warn",
                "--auto-compaction-retention=1",
                "--quota-backend-bytes=2147483648",
            ],
        )
        wait_until(lambda: _get_json(f"{etcd_url}/health")["health"] == "true", timeout, "etcd /health", etcd)

        apiserver = launch(
            "kube-apiserver",
            [
                exes["kube-apiserver"],
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={ports['apiserver']}",
                f"--tls-cert-file={pki / 'server.crt'}",
                f"--tls-private-key-file={pki / 'server.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                "--authorization-mode=Node,RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-cluster-ip-range=10.96.0.0/16",
                # No real network behind the 'kubernetes' Service: don't publish 127.0.0.1 endpoints.
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                "--profiling=false",
                f"--cert-dir={workdir / 'apiserver-certs'}",
            ],
        )
        wait_until(
            lambda: _get_json(f"{server}/readyz", token, pki / "ca.crt") == "ok",
            timeout,
            "kube-apiserver /readyz",
            apiserver,
        )

        launch(
            "kube-controller-manager",
            [
                exes["kube-controller-manager"],
                f"--kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--secure-port=0",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                "--kube-api-qps=100",
                "--kube-api-burst=200",
                "--concurrent-job-syncs=10",
            ],
        )
        launch(
            "kube-scheduler",
            [
                exes["kube-scheduler"],
                f"--kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['scheduler']}",
                f"--cert-dir={workdir / 'scheduler-certs'}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
            ],
        )
        launch(
            "kwok",
            [
                exes["kwok"],
                f"--kubeconfig={kubeconfig}",
                f"--config={STAGES}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--node-lease-duration-seconds=40",
                # Node and pod IPs are only strings in status here, but anything that dials them
                # (kubectl logs, apiserver proxy) must stay on loopback.
                "--node-ip=127.0.0.1",
                "--cidr=127.1.0.0/16",
            ],
        )

        version = str(_get_json(f"{server}/version", token, pki / "ca.crt")["gitVersion"])
        cluster = Cluster(
            kubeconfig=kubeconfig,
            server=server,
            token=token,
            ca_file=pki / "ca.crt",
            workdir=workdir,
            version=version,
            pools=pools,
            processes=procs,
            ports=ports,
        )
        api = cluster.api_client()
        stack.callback(api.close)
        core: Any = k8s.CoreV1Api(api)
        names: list[str] = []
        for pool in pools:
            for name in pool.node_names():
                core.create_node(node_manifest(pool, name))
                names.append(name)

        def check_processes() -> bool:
            for p in procs.values():
                if not p.alive():
                    raise p.died("the cluster to come up")
            return True

        wait_until(lambda: check_processes() and _nodes_ready(core, names), timeout, "fake nodes Ready")
        # The controller-manager is live once it has created the default ServiceAccount.
        wait_until(
            lambda: check_processes() and bool(core.read_namespaced_service_account("default", "default")),
            timeout,
            "kube-controller-manager (default ServiceAccount)",
        )
        # The scheduler serves /healthz once its informers are running.
        wait_until(
            lambda: check_processes() and port_open(ports["scheduler"]),
            timeout,
            "kube-scheduler secure port",
        )
        if crd_dir is not None and crd_dir.is_dir():
            apply_crds(cluster, crd_dir)
        yield cluster
