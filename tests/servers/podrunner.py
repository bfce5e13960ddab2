"""The kubelet stand-in: runs pods bound to fake kwok nodes, in their image or as local processes.

kwok makes pods Running but executes nothing. The pod runner watches pods on fake nodes and,
once kwok has marked one Running, runs its first container with the container's resolved
environment, then reports the real exit code in the pod status (phase Succeeded/Failed,
containerStatuses[].state.terminated). The Job/ReplicaSet controllers take it from there,
exactly as with a real kubelet.

Two runtimes (`PodRunner(runtime=...)`, chosen by $PARIS_POD_RUNTIME, see tests/servers/images.py):
- "image": the container runs inside its image, which must be built locally (the pod's `image`
  is looked up in scripts/test-infra's store, never pulled: ErrImageNeverPull otherwise), with
  `buildah run --isolation chroot`: the image's ENTRYPOINT/CMD unless the pod sets
  command/args, the pod's runAsUser/runAsGroup (else the image's USER; runAsNonRoot is
  enforced as the kubelet does), the image's env under the pod's, workingDir, volumes and
  readOnlyRootFilesystem (see images.Container). Volumes are per-pod directories: emptyDir
  (mode 0777, kept across restarts), secret, configMap and projected volumes written as
  their files (a projected ServiceAccount token is a real one, from the TokenRequest API), and
  hostPath (this machine is the node; types "", Directory, DirectoryOrCreate and File).
  Other volume types fail the pod with a message.
- "process": the container's command + args as a local process of the test's venv (fast; no
  image needed). PATH is the test process's (with the running interpreter's bin dir first), so
  `paris` and `python` are found; an absolute command path that does not exist locally falls
  back to its basename on PATH. HOME is the test process's. Volumes and the security context
  are ignored, and `command` is required (no image to take an ENTRYPOINT from).

What is emulated of a container in both, and what is not:
- env / envFrom, including Secret and ConfigMap references read from the API, fieldRef and
  resourceFieldRef; `$(VAR)` references in env values, command and args are expanded.
- Networking is the host's. Each pod gets a free loopback port in env PORT and
  PARIS_SERVE_PORT (they override the pod's own values); a server must listen on it.
  `url_for()` finds it.
- restartPolicy: Never ends the pod with the exit code; OnFailure restarts on non-zero;
  Always restarts on any exit (restartCount and lastState are reported).
- Deletion (an eviction through the Eviction API, a preemption, a foreground-deleted Job): the
  container's processes get SIGTERM (in image mode past `buildah run`'s own, which would
  SIGKILL them), then SIGKILL after the pod's terminationGracePeriodSeconds, and
  the pod gets its final phase and exit code, as the kubelet gives it; conditions the API
  server set (DisruptionTarget) stay. A pod deleted before its process ran ends Failed with
  reason ContainerStatusUnknown. A Job with a podFailurePolicy needs this final status.
- terminationMessagePolicy FallbackToLogsOnError: a failed container's termination message is
  the tail of its log (80 lines, 2 KiB at most), as the kubelet makes it.
- readinessProbe httpGet/tcpSocket/exec is probed against the local process (the probe's
  port is mapped to PORT) and the pod turns Ready when it passes; without a probe the pod is
  Ready as soon as kwok runs it.
- Not emulated: init containers, containers after the first (they are reported terminated
  with the pod), resource limits.
- stdout/stderr of every run go to files under the runner's workdir; see `logs()`.
"""

from __future__ import annotations

import base64
import contextlib
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException
from kubernetes.utils import parse_quantity

from tests.servers import images
from tests.servers.cluster import FAKE_NODE_ANNOTATION, Cluster
from tests.servers.procs import free_port, kill_group, port_open

# The hostPath types emulated, and what each requires of the path ("" checks nothing).
HOST_PATH_CHECKS = {"": None, "DirectoryOrCreate": None, "Directory": Path.is_dir, "File": Path.is_file}

# Variables of the test process a local process may need (offline hub flags, locale, BLAS
# quirks of this machine). Everything else of the test environment stays out; in image mode
# all of it does (the image sets its own).
PASSTHROUGH = (
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "TZ",
    "VIRTUAL_ENV",
    "PARIS_CACHE",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "HF_HOME",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OMP_NUM_THREADS",
)


TERMINATION_MESSAGE_BYTES = 2048  # the kubelet's cap on a termination message from the log


class PodStartError(Exception):
    """The pod cannot be run locally (no command, missing Secret, ...); `reason` is the
    container's waiting reason while it is retried."""

    def __init__(self, message: str, reason: str = "CreateContainerConfigError") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class PodProcess:
    """One pod played by a local process (restarts reuse the record)."""

    namespace: str
    name: str
    uid: str
    node: str
    port: int
    workdir: Path
    argv: list[str] = field(default_factory=list)  # inside the container
    env: dict[str, str] = field(default_factory=dict)
    launch: list[str] = field(default_factory=list)  # the host command line (buildah run ... in image mode)
    run_options: dict[str, Any] = field(default_factory=dict)  # images.Container.argv() options
    container: images.Container | None = field(default=None, repr=False)
    pid: int | None = None
    exit_code: int | None = None  # of the last run
    restarts: int = 0
    finished: bool = False  # terminal status reported (or pod gone)
    error: str | None = None  # why it could not start
    ready: bool = False
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    stop_requested: threading.Event = field(default_factory=threading.Event, repr=False)
    deleted: bool = False  # the pod got a deletionTimestamp while its process ran

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stdout_path(self) -> Path:
        return self.workdir / "stdout.log"

    @property
    def stderr_path(self) -> Path:
        return self.workdir / "stderr.log"

    def logs(self) -> str:
        """stdout then stderr of every run of this pod."""
        out = self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""
        err = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        return f"--- stdout ---\n{out}--- stderr ---\n{err}"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: defined references are replaced, `$$` escapes a `$`,
    undefined references stay as written."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _REF.sub(sub, value)


def _field_path(pod: dict[str, Any], path: str) -> str:
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
    }
    if path not in simple:
        raise PodStartError(f"fieldRef {path} is not supported by the pod runner")
    return str(simple[path] or "")


def _resource_field(container: dict[str, Any], ref: dict[str, Any]) -> str:
    kind, _, res = ref["resource"].partition(".")
    value = ((container.get("resources") or {}).get(kind) or {}).get(res)
    if value is None:
        return "0"
    divisor = parse_quantity(ref.get("divisor") or "1")
    return str(math.ceil(parse_quantity(value) / divisor))


class PodRunner:
    """Watches pods on fake nodes and plays their containers with local processes.

    `env` holds overrides applied last to every process started after they are set (e.g.
    ``{"PARIS_S3_ENDPOINT": minio.url}``); the `pod_runner` fixture clears them after each test.
    """

    def __init__(self, cluster: Cluster, workdir: Path, stop_grace: float = 5.0, runtime: str = "process") -> None:
        if runtime not in ("process", "image"):
            raise ValueError(f"runtime must be process or image, not {runtime!r}")
        self.cluster = cluster
        self.workdir = workdir
        self.stop_grace = stop_grace
        self.runtime = runtime
        self.env: dict[str, str] = {}
        self._api = cluster.api_client()
        self._core: Any = k8s.CoreV1Api(self._api)
        self._lock = threading.RLock()
        self._pods: dict[str, PodProcess] = {}  # by uid
        self._closed: set[str] = set()  # uids of pods deleted before they ran, given a final status
        self._fake_nodes: set[str] = set()
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch_loop, name="pod-runner-watch", daemon=True)
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []  # problems of the runner itself, for debugging

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> PodRunner:
        self._watcher.start()
        return self

    def stop(self) -> None:
        """Stop watching and kill every process (whole process groups)."""
        self._stopping.set()
        with self._lock:
            records = list(self._pods.values())
        for rec in records:
            rec.stop_requested.set()
            if rec.proc is not None:
                kill_group(rec.proc, self.stop_grace)
        self._watcher.join(timeout=15)
        for t in self._threads:
            t.join(timeout=15)
        for rec in records:
            if rec.container is not None:
                rec.container.remove()
        self._api.close()

    @contextlib.contextmanager
    def overrides(self, env: Mapping[str, str]) -> Iterator[None]:
        """Apply env overrides for the duration of a block."""
        saved = dict(self.env)
        self.env.update(env)
        try:
            yield
        finally:
            self.env.clear()
            self.env.update(saved)

    # ---- queries for tests -----------------------------------------------------------------

    def processes(self) -> list[PodProcess]:
        with self._lock:
            return list(self._pods.values())

    def find(self, name: str, namespace: str = "default") -> PodProcess | None:
        """The newest record of a pod by name (a recreated pod has a new uid)."""
        with self._lock:
            recs = [r for r in self._pods.values() if r.name == name and r.namespace == namespace]
        return recs[-1] if recs else None

    def wait_for(self, name: str, namespace: str = "default", timeout: float = 60.0) -> PodProcess:
        """Wait until the pod runner has started the pod's process."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rec = self.find(name, namespace)
            if rec is not None and (rec.pid is not None or rec.error):
                return rec
            time.sleep(0.1)
        raise TimeoutError(f"pod runner never started {namespace}/{name}\n{self.describe()}")

    def url_for(self, name: str, namespace: str = "default", timeout: float = 60.0) -> str:
        """http://127.0.0.1:PORT of a pod's process, once something listens on PORT."""
        rec = self.wait_for(name, namespace, timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if rec.error:
                raise RuntimeError(f"{namespace}/{name} could not start: {rec.error}")
            if port_open(rec.port):
                return rec.url
            if rec.finished:
                break
            time.sleep(0.1)
        raise TimeoutError(f"{namespace}/{name} is not listening on {rec.port}\n{rec.logs()}")

    def url_for_selector(self, label_selector: str, namespace: str = "default", timeout: float = 60.0) -> str:
        """URL of the first running pod matching a label selector (e.g. a Deployment's pods)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pods = self._core.list_namespaced_pod(namespace, label_selector=label_selector).items
            for pod in pods:
                rec = self.find(pod.metadata.name, namespace)
                if rec is not None and rec.pid is not None and not rec.finished and port_open(rec.port):
                    return rec.url
            time.sleep(0.2)
        raise TimeoutError(f"no pod matching {label_selector!r} in {namespace} serves\n{self.describe()}")

    def logs(self, name: str, namespace: str = "default") -> str:
        rec = self.find(name, namespace)
        return rec.logs() if rec else f"(no process for {namespace}/{name})"

    def describe(self) -> str:
        """Every process with its state and log tail: put it in assertion messages."""
        lines = [f"pod runner errors: {self.errors}" if self.errors else "pod runner: no errors"]
        for r in self.processes():
            lines.append(
                f"{r.namespace}/{r.name} node={r.node} pid={r.pid} exit={r.exit_code} "
                f"restarts={r.restarts} finished={r.finished} error={r.error} argv={r.argv}"
                + (f" options={r.run_options}" if self.runtime == "image" else "")
            )
            tail = "\n".join(r.logs().splitlines()[-20:])
            lines.append("    " + tail.replace("\n", "\n    "))
        return "\n".join(lines)

    # ---- watching --------------------------------------------------------------------------

    def _refresh_nodes(self) -> None:
        key, value = next(iter(FAKE_NODE_ANNOTATION.items()))
        nodes = self._core.list_node().items
        self._fake_nodes = {n.metadata.name for n in nodes if (n.metadata.annotations or {}).get(key) == value}

    def _watch_loop(self) -> None:
        """List, then watch from that resourceVersion for a few seconds; repeat. The relist
        makes a missed or expired watch harmless."""
        while not self._stopping.is_set():
            try:
                self._refresh_nodes()
                listing = self._core.list_pod_for_all_namespaces()
                for pod in listing.items:
                    self._handle("MODIFIED", self._api.sanitize_for_serialization(pod))
                w = k8s_watch.Watch()
                for ev in w.stream(
                    self._core.list_pod_for_all_namespaces,
                    resource_version=listing.metadata.resource_version,
                    timeout_seconds=3,
                ):
                    if ev["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self._handle(ev["type"], ev["raw_object"])
                    if self._stopping.is_set():
                        w.stop()
            except Exception as e:
                if not self._stopping.is_set():
                    self.errors.append(f"watch: {e!r}")
                    time.sleep(0.5)

    def _handle(self, kind: str, pod: dict[str, Any]) -> None:
        meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        uid = meta["uid"]
        with self._lock:
            rec = self._pods.get(uid)
        if kind == "DELETED" or meta.get("deletionTimestamp"):
            if rec is not None and not rec.stop_requested.is_set():
                # As the kubelet: SIGTERM, the pod's grace period, SIGKILL; then the pod's final
                # status (see _run_pod), which a Job with a podFailurePolicy waits for.
                rec.deleted = True
                rec.stop_requested.set()
                grace = float(spec.get("terminationGracePeriodSeconds", 30))
                if rec.proc is not None:
                    # Off the watch thread: a slow-dying process must not stall the watch.
                    spare = images.RUNTIME_PROCESS_NAME if self.runtime == "image" else None
                    threading.Thread(target=kill_group, args=(rec.proc, grace, spare), daemon=True).start()
                else:
                    rec.finished = True
                    self._never_ran(pod)
            elif rec is None and kind != "DELETED" and spec.get("nodeName") in self._fake_nodes:
                self._never_ran(pod)
            return
        if rec is not None or self._stopping.is_set():
            return
        node = spec.get("nodeName")
        if not node or status.get("phase") != "Running":
            return  # not yet bound, or kwok has not run it yet
        if node not in self._fake_nodes:
            self._refresh_nodes()
            if node not in self._fake_nodes:
                return
        d = self.workdir / f"{meta['namespace']}_{meta['name']}_{uid[:8]}"
        d.mkdir(parents=True, exist_ok=True)
        rec = PodProcess(meta["namespace"], meta["name"], uid, node, free_port(), d)
        with self._lock:
            self._pods[uid] = rec
        t = threading.Thread(target=self._supervise, args=(rec, pod), name=f"pod-{meta['name']}", daemon=True)
        self._threads.append(t)
        t.start()

    # ---- one pod ---------------------------------------------------------------------------

    def _lookup(self, ns: str, kind: str, name: str, key: str | None, optional: bool) -> dict[str, str] | str | None:
        """A Secret's or ConfigMap's data (or one key of it), as the kubelet resolves them; None
        when optional and missing."""
        try:
            if kind == "secret":
                obj = self._core.read_namespaced_secret(name, ns)
                data = {k: base64.b64decode(v).decode() for k, v in (obj.data or {}).items()}
            else:
                cm = self._core.read_namespaced_config_map(name, ns)
                data = dict(cm.data or {})
        except ApiException as e:
            if e.status == 404 and optional:
                return None
            raise PodStartError(f"{kind} {ns}/{name}: {e.status} {e.reason}") from e
        if key is None:
            return data
        if key not in data:
            if optional:
                return None
            raise PodStartError(f"{kind} {ns}/{name} has no key {key!r}")
        return data[key]

    def _volume_files(self, pod: dict[str, Any], vol: dict[str, Any]) -> dict[str, str]:
        """The files of a secret, configMap or projected volume (path -> content), as the kubelet
        writes them; a projected serviceAccountToken is a real token from the TokenRequest API."""
        ns = pod["metadata"]["namespace"]
        out: dict[str, str] = {}

        def data_files(kind: str, src: dict[str, Any], name: str) -> None:
            data = self._lookup(ns, kind, name, None, bool(src.get("optional")))
            if not isinstance(data, dict):
                return
            items = src.get("items")
            for item in items or [{"key": k, "path": k} for k in data]:
                if item["key"] not in data:
                    raise PodStartError(f"{kind} {ns}/{name} has no key {item['key']!r}")
                out[item["path"]] = data[item["key"]]

        if "secret" in vol:
            data_files("secret", vol["secret"], vol["secret"]["secretName"])
        elif "configMap" in vol:
            data_files("configmap", vol["configMap"], vol["configMap"]["name"])
        for source in (vol.get("projected") or {}).get("sources") or []:
            if "secret" in source:
                data_files("secret", source["secret"], source["secret"]["name"])
            elif "configMap" in source:
                data_files("configmap", source["configMap"], source["configMap"]["name"])
            elif "downwardAPI" in source:
                for item in source["downwardAPI"].get("items") or []:
                    if "fieldRef" not in item:
                        raise PodStartError(f"downwardAPI {item.get('path')}: only fieldRef is emulated")
                    out[item["path"]] = _field_path(pod, item["fieldRef"]["fieldPath"])
            elif "serviceAccountToken" in source:
                sat = source["serviceAccountToken"]
                spec: dict[str, Any] = {
                    "expirationSeconds": int(sat.get("expirationSeconds", 3600)),
                    "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod["metadata"]["name"],
                                       "uid": pod["metadata"]["uid"]},
                }
                if sat.get("audience"):
                    spec["audiences"] = [sat["audience"]]
                sa = pod["spec"].get("serviceAccountName") or "default"
                token = self._core.create_namespaced_service_account_token(sa, ns, {"spec": spec})
                out[sat["path"]] = token.status.token
            else:
                raise PodStartError(f"projected volume source {sorted(source)} is not emulated by the pod runner")
        return out

    def _resolve_env(self, pod: dict[str, Any], container: dict[str, Any], rec: PodProcess) -> dict[str, str]:
        ns = rec.namespace
        env: dict[str, str] = {}
        if self.runtime == "process":
            env.update({k: os.environ[k] for k in PASSTHROUGH if k in os.environ})

        def lookup(kind: str, name: str, key: str | None, optional: bool) -> dict[str, str] | str | None:
            return self._lookup(ns, kind, name, key, optional)

        for src in container.get("envFrom") or []:
            prefix = src.get("prefix", "")
            ref, kind = (src["secretRef"], "secret") if "secretRef" in src else (src["configMapRef"], "configmap")
            data = lookup(kind, ref["name"], None, bool(ref.get("optional")))
            if isinstance(data, dict):
                env.update({prefix + k: v for k, v in data.items()})
        for var in container.get("env") or []:
            name = var["name"]
            if "valueFrom" not in var:
                env[name] = expand(var.get("value", ""), env)
                continue
            vf = var["valueFrom"]
            value: str | dict[str, str] | None
            if "secretKeyRef" in vf or "configMapKeyRef" in vf:
                ref, kind = (
                    (vf["secretKeyRef"], "secret") if "secretKeyRef" in vf else (vf["configMapKeyRef"], "configmap")
                )
                value = lookup(kind, ref["name"], ref["key"], bool(ref.get("optional")))
            elif "fieldRef" in vf:
                value = _field_path(pod, vf["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in vf:
                value = _resource_field(container, vf["resourceFieldRef"])
            else:
                raise PodStartError(f"env {name}: unsupported valueFrom {sorted(vf)}")
            if isinstance(value, str):
                env[name] = value
        # What makes a local process of the pod: our PATH, our port, the test's overrides. In an
        # image, PATH is the image's (or the pod's).
        if self.runtime == "process":
            path = os.environ.get("PATH", "/usr/bin:/bin")
            env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{path}"
        env["HOSTNAME"] = rec.name
        env["PORT"] = env["PARIS_SERVE_PORT"] = str(rec.port)
        env.update(self.env)
        return env

    def _argv(self, container: dict[str, Any], env: dict[str, str]) -> list[str]:
        if self.runtime == "image":
            image = images.image_config(container["image"])
            args = container.get("args")
            raw = images.container_argv(image, container.get("command"), None if args is None else list(args))
            return [expand(a, env) for a in raw]
        command = list(container.get("command") or [])
        if not command:
            raise PodStartError(
                f"container {container['name']!r} has no `command`: image entrypoints are unknown "
                "to the pod runner, so manifests must spell the command out"
            )
        argv = [expand(a, env) for a in command + list(container.get("args") or [])]
        exe = argv[0]
        if os.sep in exe and not os.access(exe, os.X_OK):
            local = shutil.which(os.path.basename(exe), path=env["PATH"])
            if local:
                argv[0] = local
        return argv

    def _image_options(self, pod: dict[str, Any], container: dict[str, Any], rec: PodProcess) -> dict[str, Any]:
        """What `buildah run` needs besides env and argv: user, volumes, read-only root, working
        dir; raises PodStartError where a kubelet would refuse to start the container."""
        ref = container.get("image") or ""
        if not images.have_image(ref):
            raise PodStartError(
                f"image {ref!r} is not in the local store (the pod runner never pulls): "
                "scripts/test-infra build images",
                reason="ErrImageNeverPull",
            )
        image = images.image_config(ref)
        pod_sc = pod["spec"].get("securityContext") or {}
        sc = {**pod_sc, **(container.get("securityContext") or {})}
        uid = sc.get("runAsUser")
        if uid is None:
            uid = images.image_uid(image.user)
            if sc.get("runAsNonRoot") and uid is None:
                raise PodStartError(
                    f"container has runAsNonRoot and image has non-numeric user ({image.user}), "
                    "cannot verify user is non-root"
                )
        if sc.get("runAsNonRoot") and uid == 0:
            raise PodStartError("container has runAsNonRoot and image will run as root")
        user: str | None = None
        if "runAsUser" in sc or "runAsGroup" in sc:
            group = sc.get("runAsGroup")
            user = f"{uid}" + (f":{group}" if group is not None else "")
        # Volumes are directories of the pod on the host: an emptyDir is kept across container
        # restarts and world-writable, as the kubelet makes it; secret, configMap and projected
        # volumes are their files, read-only.
        specs = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        volumes = []
        for m in container.get("volumeMounts") or []:
            vol = specs.get(m["name"])
            if vol is None:
                raise PodStartError(f"volumeMount {m['name']!r} names no volume of the pod")
            host = rec.workdir / "volumes" / m["name"]
            read_only = bool(m.get("readOnly"))
            if "emptyDir" in vol:
                host.mkdir(parents=True, exist_ok=True)
                host.chmod(0o777)
            elif {"secret", "configMap", "projected"} & set(vol):
                files = self._volume_files(pod, vol)
                shutil.rmtree(host, ignore_errors=True)
                for path, content in files.items():
                    (host / path).parent.mkdir(parents=True, exist_ok=True)
                    (host / path).write_text(content)
                    (host / path).chmod(0o644)
                host.mkdir(parents=True, exist_ok=True)
                read_only = True
            elif "hostPath" in vol:
                # The node's own directory, as the kubelet mounts it; the node is this machine.
                host = Path(vol["hostPath"]["path"])
                kind = vol["hostPath"].get("type") or ""
                if kind not in HOST_PATH_CHECKS:
                    raise PodStartError(f"volume {m['name']!r}: hostPath type {kind!r} is not emulated")
                if kind == "DirectoryOrCreate":
                    host.mkdir(parents=True, exist_ok=True)
                elif (check := HOST_PATH_CHECKS[kind]) is not None and not check(host):
                    raise PodStartError(f"hostPath type check failed: {host} is not a {kind.lower()}")
            else:
                kinds = sorted(k for k in vol if k != "name")
                raise PodStartError(f"volume {m['name']!r}: {kinds} is not emulated by the pod runner")
            if m.get("subPath"):
                host = host / m["subPath"]
            volumes.append(images.Volume(host, m["mountPath"], read_only))
        return {
            "user": user,
            "volumes": volumes,
            "read_only": bool(sc.get("readOnlyRootFilesystem")),
            "workdir": container.get("workingDir"),
            "hostname": rec.name,
        }

    def _launch(self, rec: PodProcess, container: dict[str, Any]) -> list[str]:
        """The host command line of one run of the container (a fresh working container per run
        in image mode, as a restarted container gets a fresh writable layer)."""
        if self.runtime == "process":
            return rec.argv
        name = images.container_name("pod", rec.uid[:8], str(rec.restarts))
        rec.container = images.Container(container["image"], name)
        return rec.container.argv(rec.argv, env=rec.env, **rec.run_options)

    def _end_run(self, rec: PodProcess, code: int) -> tuple[int, str]:
        """Exit code and reason of the run that just ended; removes its working container."""
        if code < 0:  # killed by a signal: report it as a shell/kubelet would
            code = 128 - code
        if rec.container is None:
            return code, "Completed" if code == 0 else "Error"
        rec.container.remove()
        rec.container = None
        try:
            with open(rec.stderr_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
                tail = f.read().decode(errors="replace")
        except OSError:
            tail = ""
        return images.exit_status(code, tail)

    def _supervise(self, rec: PodProcess, pod: dict[str, Any]) -> None:
        try:
            self._run_pod(rec, pod)
        except Exception as e:  # never let a runner bug pass silently: it shows in describe()
            self.errors.append(f"{rec.namespace}/{rec.name}: {e!r}")
            rec.error = rec.error or repr(e)

    def _run_pod(self, rec: PodProcess, pod: dict[str, Any]) -> None:
        spec = pod["spec"]
        containers = spec["containers"]
        container = containers[0]
        policy = spec.get("restartPolicy", "Always")
        # Like the kubelet: a missing Secret/ConfigMap keeps the container waiting in
        # CreateContainerConfigError and is retried until it appears or the pod goes away.
        while True:
            try:
                env = self._resolve_env(pod, container, rec)
                if self.runtime == "image":
                    rec.run_options = self._image_options(pod, container, rec)
                break
            except PodStartError as e:
                if rec.error != str(e):
                    rec.error = str(e)
                    with open(rec.stderr_path, "a") as f:
                        f.write(f"pod runner: {e}\n")
                    waiting = {"waiting": {"reason": e.reason, "message": str(e)}}
                    self._patch_status(
                        rec,
                        {
                            "conditions": [
                                {"type": "ContainersReady", "status": "False"},
                                {"type": "Ready", "status": "False"},
                            ],
                            "containerStatuses": self._container_statuses(pod, rec, waiting, ready=False),
                        },
                    )
                if rec.stop_requested.wait(1.0):
                    return
        rec.error = None
        try:
            argv = self._argv(container, env)
        except PodStartError as e:
            # A limit of the pod runner, not of the pod: fail fast and say why.
            rec.error = str(e)
            rec.stderr_path.write_text(f"pod runner: {e}\n")
            self._report_terminated(rec, pod, 128, "StartError", str(e), failed=True)
            return
        rec.argv, rec.env = argv, env
        cwd = container.get("workingDir")
        cwd_path = Path(cwd) if self.runtime == "process" and cwd and Path(cwd).is_dir() else rec.workdir
        last: dict[str, Any] | None = None
        while not rec.stop_requested.is_set():
            started = _now()
            try:
                rec.launch = self._launch(rec, container)
            except RuntimeError as e:  # buildah could not create the working container
                rec.error = str(e)
                with open(rec.stderr_path, "a") as f:
                    f.write(f"pod runner: {e}\n")
                self._report_terminated(rec, pod, 128, "StartError", str(e), failed=True)
                return
            with open(rec.stdout_path, "ab") as out, open(rec.stderr_path, "ab") as err:
                try:
                    rec.proc = subprocess.Popen(
                        rec.launch,
                        # buildah takes the container's env from --env; it needs ours (its store).
                        env=images.storage_env() if self.runtime == "image" else env,
                        cwd=cwd_path,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=err,
                        start_new_session=True,
                    )
                except OSError as e:
                    rec.error = f"cannot exec {argv[0]}: {e}"
                    err.write(f"pod runner: {rec.error}\n".encode())
                    self._report_terminated(
                        rec,
                        pod,
                        127 if isinstance(e, FileNotFoundError) else 126,
                        "StartError",
                        rec.error,
                        failed=True,
                    )
                    return
            rec.pid = rec.proc.pid
            probe = threading.Thread(target=self._probe_ready, args=(rec, pod, container, started), daemon=True)
            probe.start()
            code, reason = self._end_run(rec, rec.proc.wait())
            rec.exit_code = code
            rec.ready = False
            if rec.stop_requested.is_set():
                if rec.deleted:  # the pod is being deleted (evicted, preempted, its Job gone)
                    reason = "Completed" if code == 0 else "Error"
                    self._report_terminated(rec, pod, code, reason, "", failed=code != 0, started=started)
                return  # (or the runner stops: nothing to report)
            restart = policy == "Always" or (policy == "OnFailure" and code != 0)
            if not restart:
                self._report_terminated(rec, pod, code, reason, "", failed=code != 0, started=started)
                return
            rec.restarts += 1
            last = {
                "terminated": {
                    "exitCode": code,
                    "reason": reason,
                    "startedAt": started,
                    "finishedAt": _now(),
                }
            }
            self._patch_status(
                rec,
                {
                    "containerStatuses": self._container_statuses(
                        pod, rec, {"running": {"startedAt": _now()}}, ready=False, last=last
                    )
                },
            )
            # Crash-loop back-off, short: these are tests.
            rec.stop_requested.wait(min(10.0, 0.5 * 2 ** min(rec.restarts, 5)))

    def _probe_ready(self, rec: PodProcess, pod: dict[str, Any], container: dict[str, Any], started: str) -> None:
        probe = container.get("readinessProbe")
        if not probe:
            rec.ready = True
            return
        proc = rec.proc
        time.sleep(float(probe.get("initialDelaySeconds", 0)))
        period = min(float(probe.get("periodSeconds", 10)), 1.0)
        while proc is not None and proc.poll() is None and not rec.stop_requested.is_set():
            if self._probe_once(rec, probe):
                rec.ready = True
                now = _now()
                self._patch_status(
                    rec,
                    {
                        "conditions": [
                            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                            {"type": "Ready", "status": "True", "lastTransitionTime": now},
                        ],
                        "containerStatuses": self._container_statuses(
                            pod, rec, {"running": {"startedAt": started}}, ready=True
                        ),
                    },
                )
                return
            time.sleep(period)

    def _probe_once(self, rec: PodProcess, probe: dict[str, Any]) -> bool:
        timeout = float(probe.get("timeoutSeconds", 1))
        with contextlib.suppress(Exception):
            if "httpGet" in probe:
                path = probe["httpGet"].get("path", "/")
                with urllib.request.urlopen(f"{rec.url}{path}", timeout=timeout) as r:
                    return 200 <= r.status < 400
            if "tcpSocket" in probe:
                return port_open(rec.port)
            if "exec" in probe:
                cmd = [expand(a, rec.env) for a in probe["exec"]["command"]]
                if rec.container is not None:  # inside the running container, as the kubelet does
                    inside = rec.container.run(cmd, env=rec.env, timeout=max(timeout, 5.0), **rec.run_options)
                    return inside.returncode == 0
                res = subprocess.run(cmd, env=rec.env, cwd=rec.workdir, capture_output=True, timeout=max(timeout, 5.0))
                return res.returncode == 0
        return False

    # ---- status ----------------------------------------------------------------------------

    def _container_statuses(
        self,
        pod: dict[str, Any],
        rec: PodProcess,
        state: dict[str, Any],
        ready: bool,
        last: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """containerStatuses with `state` for the first container; the others share the pod's fate."""
        out = []
        for i, c in enumerate(pod["spec"]["containers"]):
            s: dict[str, Any] = {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": self._image_id(c.get("image", "")),
                "ready": ready,
                "restartCount": rec.restarts if i == 0 else 0,
                "started": "running" in state,
                "state": state,
            }
            if i == 0 and last:
                s["lastState"] = last
            if i > 0 and "terminated" in state:
                s["state"] = {"terminated": {**state["terminated"], "exitCode": 0, "reason": "Completed"}}
            out.append(s)
        return out

    def _image_id(self, ref: str) -> str:
        """sha256:<id> of the local image that ran (image mode), as a runtime reports it."""
        if self.runtime != "image":
            return ""
        try:
            return f"sha256:{images.image_config(ref).id}"
        except RuntimeError:  # not built: the pod is waiting in ErrImageNeverPull
            return ""

    def _report_terminated(
        self,
        rec: PodProcess,
        pod: dict[str, Any],
        code: int,
        reason: str,
        message: str,
        failed: bool,
        started: str | None = None,
    ) -> None:
        now = _now()
        terminated: dict[str, Any] = {
            "exitCode": code,
            "reason": reason,
            "startedAt": started or now,
            "finishedAt": now,
        }
        container = pod["spec"]["containers"][0]
        if not message and failed and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            message = self._log_tail(rec)
        if message:
            terminated["message"] = message[-TERMINATION_MESSAGE_BYTES:]
        body = {
            "phase": "Failed" if failed else "Succeeded",
            "conditions": [
                {
                    "type": "ContainersReady",
                    "status": "False",
                    "reason": "PodCompleted",
                    "lastTransitionTime": now,
                },
                {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
            ],
            "containerStatuses": self._container_statuses(pod, rec, {"terminated": terminated}, ready=False),
        }
        self._patch_status(rec, body)
        rec.finished = True

    @staticmethod
    def _log_tail(rec: PodProcess) -> str:
        """What the kubelet takes for FallbackToLogsOnError: the log's last 80 lines, at most
        2 KiB. The container's stdout and stderr are one log there; here stderr (where a
        paris command prints its error line) comes last."""
        lines: list[str] = []
        for path in (rec.stdout_path, rec.stderr_path):
            with contextlib.suppress(OSError):
                lines += path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-80:])[-TERMINATION_MESSAGE_BYTES:]

    def _never_ran(self, pod: dict[str, Any]) -> None:
        """A pod deleted before its process started: the kubelet still gives it a final status
        (the Job controller waits for one), with the reason it uses for a container it cannot
        find."""
        meta, status = pod["metadata"], pod.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed") or meta["uid"] in self._closed:
            return
        self._closed.add(meta["uid"])
        terminated = {
            "exitCode": 137,
            "reason": "ContainerStatusUnknown",
            "message": "The container could not be located when the pod was terminated",
            "startedAt": _now(),
            "finishedAt": _now(),
        }
        statuses = [
            {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False, "restartCount": 0,
             "started": False, "state": {"terminated": terminated}}
            for c in pod["spec"]["containers"]
        ]
        with contextlib.suppress(ApiException):
            self._core.patch_namespaced_pod_status(
                meta["name"],
                meta["namespace"],
                {"status": {"phase": "Failed", "containerStatuses": statuses}},
                _content_type="application/strategic-merge-patch+json",
            )

    def _patch_status(self, rec: PodProcess, status: dict[str, Any]) -> None:
        for attempt in range(5):
            try:
                self._core.patch_namespaced_pod_status(
                    rec.name,
                    rec.namespace,
                    {"status": status},
                    _content_type="application/strategic-merge-patch+json",
                )
                return
            except ApiException as e:
                if e.status == 404:
                    return  # deleted meanwhile
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
