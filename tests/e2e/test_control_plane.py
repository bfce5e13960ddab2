"""The e2e tier's cluster is a real control plane: the built apiserver answers kubectl at the
pinned version, the real controller-manager turns Jobs into Pods, the real scheduler places
pods by pool and GPU capacity, and the pod runner plays pods with real exit codes, inside the
built trainer image (image mode) or as local processes."""

from __future__ import annotations

import json
import time
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from tests.helpers import eventually
from tests.servers import images
from tests.servers.cluster import FAKE_NODE_TOLERATIONS, Cluster, Pool, apply_crds, start_cluster
from tests.servers.minio import MinioServer
from tests.servers.podrunner import PodRunner
from tests.servers.procs import port_open

REPO = Path(__file__).resolve().parents[2]


def pinned(key: str) -> str:
    for line in (REPO / "scripts" / "test-infra.versions").read_text().splitlines():
        if line.startswith(f"{key}="):
            return line.split("=", 1)[1].strip()
    raise KeyError(key)




def image_for(runner: PodRunner) -> str:
    """The image pods name: the built trainer image where the runner runs images."""
    return images.image_ref("trainer") if runner.runtime == "image" else "paris/trainer:test"


def pod_spec(
    command: list[str] | None,
    *,
    pool: str = "cpu",
    gpus: int = 0,
    restart: str = "Never",
    env: list[dict[str, Any]] | None = None,
    image: str = "paris/trainer:test",
    **extra: Any,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": image, "env": env or []}
    if command is not None:
        container["command"] = command
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    container.update(extra)
    return {
        "restartPolicy": restart,
        "nodeSelector": {"pool": pool},
        "tolerations": FAKE_NODE_TOLERATIONS,
        "containers": [container],
    }


def job(name: str, spec: dict[str, Any], backoff: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": backoff, "template": {"metadata": {"labels": {"app": name}}, "spec": spec}},
    }


def job_condition(cluster: Cluster, ns: str, name: str) -> str | None:
    j = cluster.batch().read_namespaced_job(name, ns)
    for c in j.status.conditions or []:
        if c.type in ("Complete", "Failed") and c.status == "True":
            return str(c.type)
    return None


def job_pods(cluster: Cluster, ns: str, name: str) -> list[Any]:
    return list(cluster.core().list_namespaced_pod(ns, label_selector=f"job-name={name}").items)


# ---- the apiserver ---------------------------------------------------------------------------


def test_kubectl_talks_to_the_built_apiserver_at_the_pinned_version(k8s_cluster: Cluster) -> None:
    out = json.loads(k8s_cluster.kubectl("version", "-o", "json").stdout)
    want = pinned("KUBERNETES_VERSION")
    assert out["serverVersion"]["gitVersion"] == want
    assert out["clientVersion"]["gitVersion"] == want
    assert k8s_cluster.version == want
    # It is our process: the apiserver serves on the port we gave it.
    assert k8s_cluster.server.endswith(f":{k8s_cluster.ports['apiserver']}")


def test_fake_node_pools(k8s_cluster: Cluster) -> None:
    nodes = {n.metadata.name: n for n in k8s_cluster.core().list_node(label_selector="type=kwok").items}
    gpus = {name: (n.status.allocatable or {}).get("nvidia.com/gpu", "0") for name, n in nodes.items()}
    assert gpus == {
        "kwok-a40-0": "4",
        "kwok-a40-1": "4",
        "kwok-h100-0": "8",
        "kwok-cpu-0": "0",
        "kwok-cpu-1": "0",
    }
    for n in nodes.values():
        assert n.metadata.annotations["kwok.x-k8s.io/node"] == "fake"
        taints = {(t.key, t.value, t.effect) for t in n.spec.taints}
        assert ("kwok.x-k8s.io/node", "fake", "NoSchedule") in taints
        assert (("nvidia.com/gpu", "present", "NoSchedule") in taints) == (n.metadata.labels["pool"] != "cpu")
        assert any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)


# ---- controller-manager and scheduler --------------------------------------------------------


def test_job_gets_a_pod_from_the_controller_manager(k8s_cluster: Cluster, k8s_namespace: str) -> None:
    ns = k8s_namespace
    k8s_cluster.batch().create_namespaced_job(ns, job("cm", pod_spec(["sleep", "300"])))
    pods = eventually(lambda: job_pods(k8s_cluster, ns, "cm"), what="the Job's pod")
    owner = pods[0].metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.controller) == ("Job", "cm", True)
    bound = eventually(
        lambda: k8s_cluster.core().read_namespaced_pod(pods[0].metadata.name, ns).spec.node_name,
        what="the pod to be scheduled",
    )
    assert bound in k8s_cluster.nodes_in_pool("cpu")
    # kwok runs the pod but never completes it by itself: that is the pod runner's job.
    eventually(
        lambda: k8s_cluster.core().read_namespaced_pod(pods[0].metadata.name, ns).status.phase == "Running",
        what="kwok to run the pod",
    )
    time.sleep(2)
    assert k8s_cluster.core().read_namespaced_pod(pods[0].metadata.name, ns).status.phase == "Running"
    assert job_condition(k8s_cluster, ns, "cm") is None


def test_scheduler_places_by_pool_and_gpu_capacity(k8s_cluster: Cluster, k8s_namespace: str) -> None:
    ns, core = k8s_namespace, k8s_cluster.core()
    core.create_namespaced_pod(
        ns, {"metadata": {"name": "big"}, "spec": pod_spec(["sleep", "300"], pool="h100", gpus=8)}
    )
    # a40 nodes have 4 GPUs each: two 4-GPU pods take one node each, a third cannot fit.
    for i in range(3):
        core.create_namespaced_pod(
            ns, {"metadata": {"name": f"a40-{i}"}, "spec": pod_spec(["sleep", "300"], pool="a40", gpus=4)}
        )

    def placed() -> dict[str, str | None] | None:
        pods = {p.metadata.name: p for p in core.list_namespaced_pod(ns).items}
        pending = pods.get("a40-2")
        unsched = pending is not None and any(
            c.type == "PodScheduled" and c.status == "False" for c in pending.status.conditions or []
        )
        nodes = {n: p.spec.node_name for n, p in pods.items()}
        if nodes["big"] and nodes["a40-0"] and nodes["a40-1"] and unsched:
            return nodes
        return None

    nodes = eventually(placed, what="scheduling decisions")
    assert nodes["big"] == "kwok-h100-0"
    assert {nodes["a40-0"], nodes["a40-1"]} == {"kwok-a40-0", "kwok-a40-1"}
    assert nodes["a40-2"] is None


def test_pod_asking_for_more_gpus_than_any_node_stays_pending(k8s_cluster: Cluster, k8s_namespace: str) -> None:
    ns, core = k8s_namespace, k8s_cluster.core()
    core.create_namespaced_pod(
        ns,
        {"metadata": {"name": "greedy"}, "spec": {**pod_spec(["sleep", "1"], gpus=16), "nodeSelector": {}}},
    )

    def condition() -> Any:
        pod = core.read_namespaced_pod("greedy", ns)
        return next((c for c in pod.status.conditions or [] if c.type == "PodScheduled"), None)

    cond = eventually(condition, what="PodScheduled condition")
    assert cond.status == "False"
    assert cond.reason == "Unschedulable"
    assert "nvidia.com/gpu" in cond.message
    time.sleep(2)
    pod = core.read_namespaced_pod("greedy", ns)
    assert pod.status.phase == "Pending" and not pod.spec.node_name


# ---- the pod runner --------------------------------------------------------------------------


def test_failing_job_reports_the_real_exit_code(
    k8s_cluster: Cluster, k8s_namespace: str, pod_runner: PodRunner
) -> None:
    ns = k8s_namespace
    cmd = ["python", "-c", "import sys; print('bye'); sys.exit(3)"]
    k8s_cluster.batch().create_namespaced_job(ns, job("fails", pod_spec(cmd, image=image_for(pod_runner))))
    state = eventually(lambda: job_condition(k8s_cluster, ns, "fails"), what="Job to finish", debug=pod_runner.describe)
    assert state == "Failed"
    pod = job_pods(k8s_cluster, ns, "fails")[0]
    assert pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 3
    assert terminated.reason == "Error"
    rec = pod_runner.find(pod.metadata.name, ns)
    assert rec is not None and rec.exit_code == 3
    assert "bye" in rec.stdout_path.read_text()


def test_an_evicted_pod_gets_sigterm_and_a_final_status_and_a_disruption_costs_no_retry(
    k8s_cluster: Cluster, k8s_namespace: str, pod_runner: PodRunner, tmp_path: Path
) -> None:
    """The Eviction API on a pod the pod runner plays: the API server marks it DisruptionTarget
    and deletes it; the process gets SIGTERM and its grace period, the pod its final status,
    and a Job whose podFailurePolicy ignores disruptions starts a new pod without counting a
    failure. The second pod's user error (exit 2) then fails the Job at once."""
    ns = k8s_namespace
    marks = tmp_path / "marks"
    marks.mkdir()
    marks.chmod(0o777)  # an image runs as its own non-root user
    script = (
        "import os, signal, sys, time\n"
        f"marks = {str(marks)!r}\n"
        "runs = len(os.listdir(marks))\n"
        "open(os.path.join(marks, str(runs)), 'w').close()\n"
        "def term(*_):\n"
        "    open(os.path.join(marks, f'term-{runs}'), 'w').close()\n"
        "    sys.exit(143)\n"
        "signal.signal(signal.SIGTERM, term)\n"
        "print('run', runs, flush=True)\n"
        "if runs: print('error: a user mistake', file=sys.stderr); sys.exit(2)\n"
        "time.sleep(600)\n"
    )
    # The marks are a hostPath volume at the same path: a local process sees the directory
    # itself, a container the mount.
    spec = pod_spec(
        ["python", "-c", script],
        image=image_for(pod_runner),
        terminationMessagePolicy="FallbackToLogsOnError",
        volumeMounts=[{"name": "marks", "mountPath": str(marks)}],
    )
    spec["volumes"] = [{"name": "marks", "hostPath": {"path": str(marks), "type": "Directory"}}]
    spec["terminationGracePeriodSeconds"] = 10
    body = job("evicted", spec, backoff=0)
    body["spec"]["podFailurePolicy"] = {
        "rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [2]}},
        ]
    }
    k8s_cluster.batch().create_namespaced_job(ns, body)
    first: list[Any] = eventually(
        lambda: job_pods(k8s_cluster, ns, "evicted") if (marks / "0").exists() else None, 60, "the first run"
    )
    name = first[0].metadata.name
    k8s_cluster.core().create_namespaced_pod_eviction(
        name, ns, {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": ns}}
    )
    eventually(lambda: (marks / "term-0").exists(), 30, "SIGTERM in the evicted pod", pod_runner.describe)
    state = eventually(lambda: job_condition(k8s_cluster, ns, "evicted"), 90, "the Job to end", pod_runner.describe)
    j = k8s_cluster.batch().read_namespaced_job("evicted", ns)
    assert state == "Failed" and j.status.conditions[0].reason == "PodFailurePolicy"
    assert (j.status.failed or 0) == 1, "the eviction was not counted against backoffLimit 0"
    (second,) = [p for p in job_pods(k8s_cluster, ns, "evicted") if p.metadata.name != name]
    terminated = second.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 2 and "error: a user mistake" in terminated.message
    rec = pod_runner.find(name, ns)
    assert rec is not None and rec.exit_code == 143


def test_succeeding_job_gets_secret_configmap_and_overrides(
    k8s_cluster: Cluster, k8s_namespace: str, pod_runner: PodRunner, minio_server: MinioServer
) -> None:
    ns, core = k8s_namespace, k8s_cluster.core()
    core.create_namespaced_secret(
        ns,
        {
            "metadata": {"name": "creds"},
            "stringData": {"access": minio_server.access_key, "secret": minio_server.secret_key},
        },
    )
    core.create_namespaced_config_map(ns, {"metadata": {"name": "cfg"}, "data": {"bucket": "b"}})
    bucket = minio_server.make_bucket()
    env: list[dict[str, Any]] = [
        {"name": "ACCESS", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "access"}}},
        {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "secret"}}},
        {"name": "CFG_BUCKET", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "bucket"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "GREETING", "value": "hello from $(POD)"},
        # Points nowhere in a real cluster; the test's override aims it at the test MinIO.
        {"name": "PARIS_S3_ENDPOINT", "value": "http://minio.paris.svc:9000"},
        {"name": "BUCKET", "value": "placeholder"},
    ]
    script = (
        "import io, os\n"
        "from minio import Minio\n"
        "assert os.environ['CFG_BUCKET'] == 'b'\n"
        "print(os.environ['GREETING'])\n"
        "host = os.environ['PARIS_S3_ENDPOINT'].removeprefix('http://')\n"
        "c = Minio(host, access_key=os.environ['ACCESS'], secret_key=os.environ['SECRET'], secure=False)\n"
        "data = os.environ['POD'].encode()\n"
        "c.put_object(os.environ['BUCKET'], 'hello.txt', io.BytesIO(data), len(data))\n"
    )
    pod_runner.env.update({"PARIS_S3_ENDPOINT": minio_server.url, "BUCKET": bucket})
    # A process finds a venv's absolute path on its PATH; an image has its own python.
    python = "/opt/venv/bin/python" if pod_runner.runtime == "process" else "python"
    k8s_cluster.batch().create_namespaced_job(
        ns, job("works", pod_spec([python, "-c", script], env=env, image=image_for(pod_runner)))
    )
    state = eventually(lambda: job_condition(k8s_cluster, ns, "works"), what="Job to finish", debug=pod_runner.describe)
    assert state == "Complete", pod_runner.describe()
    pod = job_pods(k8s_cluster, ns, "works")[0]
    assert pod.status.phase == "Succeeded"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0
    assert f"hello from {pod.metadata.name}" in pod_runner.logs(pod.metadata.name, ns)
    obj = minio_server.client().get_object(bucket, "hello.txt")
    try:
        assert obj.read().decode() == pod.metadata.name
    finally:
        obj.close()
        obj.release_conn()


def test_missing_secret_keeps_the_container_waiting_until_it_exists(
    k8s_cluster: Cluster, k8s_namespace: str, pod_runner: PodRunner
) -> None:
    ns, core = k8s_namespace, k8s_cluster.core()
    env = [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "late", "key": "k"}}}]
    cmd = ["python", "-c", "import os, sys; sys.exit(0 if os.environ['X'] == 'v' else 1)"]
    k8s_cluster.batch().create_namespaced_job(ns, job("late", pod_spec(cmd, env=env, image=image_for(pod_runner))))

    def waiting_reason() -> str | None:
        pods = job_pods(k8s_cluster, ns, "late")
        statuses = pods[0].status.container_statuses if pods else None
        waiting = statuses[0].state.waiting if statuses else None
        return waiting.reason if waiting else None

    reason = eventually(waiting_reason, what="the container to wait for its Secret", debug=pod_runner.describe)
    assert reason == "CreateContainerConfigError"
    assert job_condition(k8s_cluster, ns, "late") is None
    core.create_namespaced_secret(ns, {"metadata": {"name": "late"}, "stringData": {"k": "v"}})
    state = eventually(lambda: job_condition(k8s_cluster, ns, "late"), what="Job to finish", debug=pod_runner.describe)
    assert state == "Complete"


def test_http_deployment_is_reachable_and_stops_with_its_pod(
    k8s_cluster: Cluster, k8s_namespace: str, pod_runner: PodRunner
) -> None:
    ns = k8s_namespace
    spec = pod_spec(
        ["python", "-m", "http.server", "$(PORT)", "--bind", "127.0.0.1"],
        pool="a40",
        gpus=1,
        restart="Always",
        env=[{"name": "PORT", "value": "8000"}],
        image=image_for(pod_runner),
        ports=[{"containerPort": 8000, "name": "http"}],
        readinessProbe={"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
    )
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": spec},
        },
    }
    apps = k8s_cluster.apps()
    apps.create_namespaced_deployment(ns, deployment)
    url = pod_runner.url_for_selector("app=web", ns, timeout=60)
    with urllib.request.urlopen(url + "/", timeout=5) as r:
        assert r.status == 200
        assert r.headers["Server"].startswith("SimpleHTTP")
    # The Deployment becomes available only once the readiness probe passed on the process.
    eventually(
        lambda: (apps.read_namespaced_deployment("web", ns).status.available_replicas or 0) == 1,
        what="Deployment available",
        debug=pod_runner.describe,
    )
    pod = k8s_cluster.core().list_namespaced_pod(ns, label_selector="app=web").items[0]
    rec = pod_runner.find(pod.metadata.name, ns)
    assert rec is not None and rec.url == url and rec.port != 8000
    apps.delete_namespaced_deployment("web", ns, propagation_policy="Foreground")
    eventually(
        lambda: not port_open(rec.port) and rec.proc is not None and rec.proc.poll() is not None,
        what="the server process to stop with its pod",
        debug=pod_runner.describe,
    )


# ---- the pod runner, image mode --------------------------------------------------------------

# Run inside a pod with a read-only root and an emptyDir at /tmp: prints what it checked.
SANDBOX = r"""
set -u
echo "uid=$(id -u) gid=$(id -g) host=$HOSTNAME"
echo ok > /tmp/ok && echo tmp=writable
touch /home/paris/x 2>/dev/null && echo home=writable || echo home=read-only
touch /etc/x 2>/dev/null && echo etc=writable || echo etc=read-only
"""


def image_mode(runner: PodRunner) -> None:
    """These tests are about running images: they need the images (or an explicit process mode)."""
    images.skip_if_process_mode()
    for name in images.NAMES:
        images.require_image(name)
    assert runner.runtime == "image"


def waiting(cluster: Cluster, ns: str, name: str) -> Any:
    statuses = cluster.core().read_namespaced_pod(name, ns).status.container_statuses
    return statuses[0].state.waiting if statuses else None


def test_image_pod_runs_the_entrypoint_as_its_user_with_a_read_only_root_and_an_emptydir(
    k8s_cluster: Cluster, k8s_namespace: str, pod_runner: PodRunner
) -> None:
    image_mode(pod_runner)
    ns, batch = k8s_namespace, k8s_cluster.batch()
    ref = images.image_ref("trainer")
    # No command: the image's ENTRYPOINT (paris) with the pod's args.
    batch.create_namespaced_job(ns, job("entry", pod_spec(None, image=ref, args=["data", "--help"])))
    spec = pod_spec(
        ["sh", "-c", SANDBOX],
        image=ref,
        securityContext={"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False},
        volumeMounts=[{"name": "tmp", "mountPath": "/tmp"}],
    )
    spec["securityContext"] = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001}
    spec["volumes"] = [{"name": "tmp", "emptyDir": {}}]
    batch.create_namespaced_job(ns, job("sandbox", spec))
    for name in ("entry", "sandbox"):
        state = eventually(partial(job_condition, k8s_cluster, ns, name), what=f"Job {name}", debug=pod_runner.describe)
        assert state == "Complete", pod_runner.describe()

    entry = job_pods(k8s_cluster, ns, "entry")[0]
    rec = pod_runner.find(entry.metadata.name, ns)
    assert rec is not None and rec.argv == ["paris", "data", "--help"]
    assert "prepare" in pod_runner.logs(entry.metadata.name, ns)
    status = entry.status.container_statuses[0]
    assert status.image_id == f"sha256:{images.image_config(ref).id}"

    pod = job_pods(k8s_cluster, ns, "sandbox")[0]
    rec = pod_runner.find(pod.metadata.name, ns)
    assert rec is not None
    out = rec.stdout_path.read_text()
    assert f"uid=10001 gid=10001 host={pod.metadata.name}" in out, rec.logs()
    assert "tmp=writable" in out and "home=read-only" in out and "etc=read-only" in out, rec.logs()
    # The emptyDir is a directory of the pod on the host, as the kubelet keeps it.
    assert (rec.workdir / "volumes" / "tmp" / "ok").read_text() == "ok\n"


def test_image_pod_is_refused_as_root_under_run_as_non_root_and_never_pulls_a_missing_image(
    k8s_cluster: Cluster, k8s_namespace: str, pod_runner: PodRunner
) -> None:
    image_mode(pod_runner)
    ns, core = k8s_namespace, k8s_cluster.core()
    root = pod_spec(["true"], image=images.image_ref("trainer"))
    root["securityContext"] = {"runAsNonRoot": True, "runAsUser": 0}
    missing = pod_spec(["true"], image="localhost/paris-trainer:never-built")
    for name, spec in (("as-root", root), ("missing", missing)):
        core.create_namespaced_pod(ns, {"metadata": {"name": name}, "spec": spec})
    w = eventually(lambda: waiting(k8s_cluster, ns, "as-root"), what="as-root to wait", debug=pod_runner.describe)
    assert w.reason == "CreateContainerConfigError" and "runAsNonRoot" in w.message and "root" in w.message
    w = eventually(lambda: waiting(k8s_cluster, ns, "missing"), what="missing to wait", debug=pod_runner.describe)
    assert w.reason == "ErrImageNeverPull" and "never-built" in w.message
    for name in ("as-root", "missing"):
        rec = pod_runner.find(name, ns)
        assert rec is not None and rec.pid is None, "nothing ran"


# ---- teardown --------------------------------------------------------------------------------


def test_cluster_teardown_leaves_no_process_or_port(tmp_path: Path) -> None:
    with start_cluster(tmp_path, pools=(Pool("cpu", count=1, gpus=0),), crd_dir=None) as cluster:
        ports = dict(cluster.ports)
        procs = list(cluster.processes.values())
        assert not [name for name, p in ports.items() if not port_open(p)]
        assert all(p.alive() for p in procs)
    assert not [name for name, p in ports.items() if port_open(p)]
    assert not [p.name for p in procs if p.alive()]
    with pytest.raises(Exception):  # noqa: B017 - any connection error will do
        urllib.request.urlopen(cluster.server + "/readyz", timeout=2)


def test_api_rejects_unknown_token(k8s_cluster: Cluster) -> None:
    import ssl

    req = urllib.request.Request(
        k8s_cluster.server + "/api/v1/namespaces", headers={"Authorization": "Bearer not-the-token"}
    )
    ctx = ssl.create_default_context(cafile=str(k8s_cluster.ca_file))
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5, context=ctx)
    assert e.value.code == 401
    with pytest.raises(ApiException):
        k8s_cluster.core().read_namespace("does-not-exist")


def test_apply_crds_installs_and_establishes_them(k8s_cluster: Cluster, tmp_path: Path) -> None:
    """What the fixture does with the repo's crds/ folder, on a throwaway CRD."""
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.fixture.paris.test"},
        "spec": {
            "group": "fixture.paris.test",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                }
            ],
        },
    }
    (tmp_path / "widget.yaml").write_text(yaml.safe_dump(crd))
    assert apply_crds(k8s_cluster, tmp_path) == [tmp_path / "widget.yaml"]
    out = k8s_cluster.kubectl("get", "widgets", "-A", "-o", "json").stdout
    assert json.loads(out)["items"] == []
    k8s_cluster.kubectl("delete", "crd", "widgets.fixture.paris.test")
