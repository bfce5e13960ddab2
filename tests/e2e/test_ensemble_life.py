"""An ensemble's life on the real control plane, with the real trainers against the real MinIO:
an expert with a user's mistake fails at once with its reason in the status, the router
trains over the experts that succeeded and serves them Degraded, a foreign Deployment with a
child's name is left alone, a duplicate expert is refused, a fixed expert rolls the router
forward while an expert's `lr` change and a router's spec change each train a new version (in
events, status and the checkpoints' records), an expert added later with `paris data add`
grows the served router to K+1 experts, a replaced Job's successor never overlaps the old pod,
and a resource deleted while the operator is down is released when it returns.

Sized for 2 shared CPU cores: tiny experts (32 wide, 1 block) on 3 clusters of 300 digits
(the nines left out, to be added later), a few steps each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from paris.config import StorageConfig
from paris.router.assemble import published
from paris.storage import S3Store, open_store
from paris.trainer.checkpoint import checkpoint_fingerprint
from tests.e2e.test_operator import (  # noqa: F401 - `operator` is a fixture
    GROUP,
    VERSION,
    Operator,
    apply,
    create_secret,
    custom,
    events_for,
    get_cr,
    operator,
    pod_env,
    with_fake_node_toleration,
)
from tests.helpers import eventually, tiny_config
from tests.servers.cluster import Cluster
from tests.servers.minio import MinioServer
from tests.servers.podrunner import PodRunner

pytestmark = pytest.mark.timeout(1500)

MODEL = "life"
SMALL = {"preset": "tiny", "hidden_size": 32, "depth": 1, "heads": 2}
# Digits 0-8: the nines are the new data an expert added later trains on.
DATA = {**tiny_config("file://unused", data={"name": "life-digits", "clusters": 3, "labels": list(range(9))})["data"]}


def prepare(minio: MinioServer, bucket: str, tmp_path: Path, *extra: str, command: str = "prepare") -> str:
    """`paris data prepare` of the tiny 3-cluster digits set into the bucket, as a user does
    (or another `paris data` command on it); what it printed."""
    cfg = {"model": MODEL, "storage": {"uri": f"s3://{bucket}"}, "data": DATA}
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, **minio.env(), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "paris", "data", command, str(path), *extra]
    res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout + res.stderr


def train_settings(steps: int) -> dict[str, Any]:
    every = max(1, steps // 4)
    return {"steps": steps, "batch_size": 8, "checkpoint_every": every, "log_every": 1, "threads": 1, "warmup_steps": 1}


def expert(
    name: str, cluster: int, bucket: str, steps: int = 6, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": MODEL,
        "cluster": cluster,
        "pool": "cpu",
        "storage": {"uri": f"s3://{bucket}"},
        "data": DATA,
        "expert": SMALL,
        "train": train_settings(steps),
        "backoffLimit": 3,
    }
    with_fake_node_toleration(spec)
    meta = {"name": name, "labels": {"ensemble": MODEL} if labels is None else labels}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ParisExpert", "metadata": meta, "spec": spec}


def router(name: str, bucket: str, count: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": MODEL,
        "experts": {"matchLabels": {"ensemble": MODEL}, **({"count": count} if count else {})},
        "pool": "cpu",
        "storage": {"uri": f"s3://{bucket}"},
        "data": DATA,
        "router": {"model": {k: v for k, v in SMALL.items() if k != "preset"}, "train": train_settings(6)},
        "inference": {"steps": 2, "pool": "cpu"},
    }
    with_fake_node_toleration(spec)
    with_fake_node_toleration(spec["inference"])
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ParisRouter", "metadata": {"name": name}, "spec": spec}


def status_of(cluster: Cluster, ns: str, plural: str, name: str) -> dict[str, Any]:
    return get_cr(cluster, ns, plural, name).get("status") or {}


def until(
    cluster: Cluster,
    ns: str,
    plural: str,
    name: str,
    ok: Callable[[dict[str, Any]], bool],
    what: str,
    debug: Any,
    timeout: float = 600,
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        st = status_of(cluster, ns, plural, name)
        return st if st and ok(st) else None

    return eventually(check, timeout, f"{name}: {what}", debug)


def cond(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions") or [] if c["type"] == type_), {})


def patch_spec(cluster: Cluster, ns: str, plural: str, name: str, spec: dict[str, Any]) -> None:
    custom(cluster).patch_namespaced_custom_object(GROUP, VERSION, ns, plural, name, {"spec": spec})


def foreign_deployment(name: str) -> dict[str, Any]:
    """Someone else's Deployment that happens to have a router child's name."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": "theirs"}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "theirs"}},
            "template": {
                "metadata": {"labels": {"app": "theirs"}},
                "spec": {"containers": [{"name": "web", "image": "example.org/theirs:1"}]},
            },
        },
    }


def test_a_degraded_ensemble_serves_what_it_has_and_rolls_forward_when_the_missing_expert_recovers(
    k8s_cluster: Cluster,
    k8s_namespace: str,
    minio_server: MinioServer,
    pod_runner: PodRunner,
    operator: Operator,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    ns, cluster = k8s_namespace, k8s_cluster
    bucket = minio_server.make_bucket()
    prepare(minio_server, bucket, tmp_path)
    create_secret(cluster, ns, minio_server)
    pod_runner.env.update(pod_env(minio_server, pod_runner))

    def debug() -> str:
        out = cluster.kubectl("get", "paris,jobs,pods,deployments", "-n", ns, "-o", "wide", check=False).stdout
        return f"{out}\n{operator.logs()}\n{pod_runner.describe()}"

    # Someone else's Deployment already has the name the router's would get.
    theirs = cluster.apps().create_namespaced_deployment(ns, foreign_deployment("life-serve"))
    # e2 asks for a GPU on the CPU pool: a user's mistake only its trainer can see.
    e2 = expert("e2", 2, bucket)
    e2["spec"]["train"]["device"] = "cuda"
    assert apply(cluster, ns, [expert("e0", 0, bucket), expert("e1", 1, bucket), e2]).returncode == 0
    assert apply(cluster, ns, [router("life", bucket, count=2)]).returncode == 0

    # A user's mistake fails the Job at once (podFailurePolicy), with the trainer's own words.
    st = until(cluster, ns, "parisexperts", "e2", lambda s: s.get("phase") == "Failed", "to fail", debug)
    assert st["reason"] == "PodFailurePolicy", st
    assert "error: device 'cuda': this machine has no CUDA device" in st["message"], st
    assert st.get("podFailures") == 1, "no retry of a deterministic error (backoffLimit 3)"

    # A duplicate of e1 (another resource, same model and cluster) is refused; both say so.
    assert apply(cluster, ns, [expert("e1-twin", 1, bucket, labels={})]).returncode == 0
    twin = until(
        cluster, ns, "parisexperts", "e1-twin", lambda s: s.get("reason") == "DuplicateExpert", "refused", debug
    )
    assert twin["phase"] == "Failed" and "e1" in twin["message"]
    e1 = until(cluster, ns, "parisexperts", "e1", lambda s: cond(s, "Duplicate").get("status") == "True", "told", debug)
    assert "e1-twin" in cond(e1, "Duplicate")["message"]
    assert not cluster.batch().list_namespaced_job(ns, label_selector="paris.dev/expert=e1-twin").items
    custom(cluster).delete_namespaced_custom_object(GROUP, VERSION, ns, "parisexperts", "e1-twin")

    # The router trains over e0 and e1 only, and leaves the foreign Deployment alone.
    st = until(
        cluster, ns, "parisrouters", "life", lambda s: s.get("reason") == "ChildConflict", "to meet the namesake", debug
    )
    assert st["phase"] == "Deploying" and cond(st, "RouterTrained")["status"] == "True"
    assert "Deployment" in st["message"] and "life-serve" in st["message"] and "left alone" in st["message"]
    job = cluster.batch().read_namespaced_job(st["trainJob"], ns)
    command = job.spec.template.spec.containers[0].command
    versions = [status_of(cluster, ns, "parisexperts", e)["prefix"] for e in ("e0", "e1")]
    assert command[3:7] == ["--expert", f"0={versions[0]}", "--expert", f"1={versions[1]}"]
    assert command[7:] == ["--prefix", st["prefix"]] and st["prefix"].startswith(f"models/{MODEL}/router/fp-")
    mine = cluster.apps().read_namespaced_deployment("life-serve", ns)
    assert mine.metadata.uid == theirs.metadata.uid and mine.metadata.labels == {"app": "theirs"}
    assert not mine.metadata.owner_references and mine.spec.template.spec.containers[0].image == "example.org/theirs:1"
    assert any(e.reason == "NotOwned" and e.type == "Warning" for e in events_for(cluster, ns, "life"))

    # Its owner removes it: the router serves the two experts it has, Degraded.
    cluster.apps().delete_namespaced_deployment("life-serve", ns)
    st = until(cluster, ns, "parisrouters", "life", lambda s: s.get("phase") == "Degraded", "Degraded", debug)
    assert st["servedExperts"] == ["e0", "e1"] and len(st["missingExperts"]) == 1
    assert st["missingExperts"][0].startswith("e2 (Failed:") and "no CUDA device" in st["missingExperts"][0]
    assert cond(st, "Degraded")["status"] == "True" and cond(st, "Available")["status"] == "True"
    url = pod_runner.url_for_selector("app.kubernetes.io/instance=life,app.kubernetes.io/component=serve", ns)
    usage = generate_usage(url)
    assert len(usage) == 2, "routing renormalized over the two experts served"
    degraded_job = st["trainJob"]

    # The user fixes e2 and, meanwhile, changes e0's learning rate and the router's: e0 trains a
    # new version with the new lr, e2 trains, and the router trains from scratch (its settings
    # changed) over all three, and rolls forward.
    e0_before = status_of(cluster, ns, "parisexperts", "e0")
    patch_spec(cluster, ns, "parisexperts", "e2", {"train": {"device": "auto"}})
    patch_spec(cluster, ns, "parisexperts", "e0", {"train": {"lr": 0.002}})
    patch_spec(cluster, ns, "parisrouters", "life", {"router": {"train": {"lr": 0.002}}})
    until(cluster, ns, "parisexperts", "e2", lambda s: s.get("phase") == "Succeeded", "to succeed", debug)
    e0 = until(
        cluster,
        ns,
        "parisexperts",
        "e0",
        lambda s: s.get("phase") == "Succeeded" and s.get("observedGeneration") == 2,
        "to train its new lr",
        debug,
    )
    assert e0["prefix"] != e0_before["prefix"] and e0["fingerprint"]["fields"]["train.lr"] == 0.002
    changed = [e.message for e in events_for(cluster, ns, "e0") if e.reason == "FingerprintChanged"]
    # (Two reconciles racing on one change may each say it: at least once, always the same words.)
    assert changed and all("train.lr 0.001 -> 0.002" in m and e0["prefix"] in m for m in changed), changed
    store = _store(minio_server, bucket)
    trained = checkpoint_fingerprint(store, e0["prefix"])
    assert trained == e0["fingerprint"], "the trainer trained what the operator asked, lr 0.002"
    st = until(
        cluster,
        ns,
        "parisrouters",
        "life",
        lambda s: s.get("phase") == "Ready" and s["trainJob"] != degraded_job,
        "to roll forward",
        debug,
    )
    assert st["servedExperts"] == ["e0", "e1", "e2"] and st["missingExperts"] == []
    assert cond(st, "Degraded")["status"] == "False" and not st.get("grownFrom"), "new settings: from scratch"
    changed = [e.message for e in events_for(cluster, ns, "life") if e.reason == "FingerprintChanged"]
    assert any("router.clusters [0, 1] -> [0, 1, 2]" in m and "router.train.lr 0.001 -> 0.002" in m for m in changed)
    assert checkpoint_fingerprint(store, st["prefix"]) == st["fingerprint"]
    pointer = published(store, MODEL)
    assert pointer is not None and pointer["fingerprint"]["fields"]["router"] == st["fingerprint"]["digest"]
    assert pointer["fingerprint"]["fields"]["expert.0"] == e0["fingerprint"]["digest"], "serves the new e0"
    url = pod_runner.url_for_selector("app.kubernetes.io/instance=life,app.kubernetes.io/component=serve", ns)
    assert len(generate_usage(url)) == 3
    e1 = status_of(cluster, ns, "parisexperts", "e1")
    assert cond(e1, "Duplicate")["status"] == "False", "the twin is gone"
    reasons = [e.reason for e in events_for(cluster, ns, "life")]
    assert reasons.count("RouterTraining") == 2 and "Degraded" in reasons, reasons

    # New data (the nines) joins the dataset as cluster 3; its expert trains alone, and the
    # served router grows by one class: the pipeline serves 3 + 1 experts.
    old = {e: status_of(cluster, ns, "parisexperts", e)["prefix"] for e in ("e0", "e1", "e2")}
    said = prepare(minio_server, bucket, tmp_path, "--source", "digits", "--label", "9", command="add")
    assert "added cluster 3" in said, said
    scratch, scratch_job = st["prefix"], st["trainJob"]
    assert apply(cluster, ns, [expert("e3", 3, bucket)]).returncode == 0
    until(cluster, ns, "parisexperts", "e3", lambda s: s.get("phase") == "Succeeded", "to succeed", debug)
    st = until(
        cluster,
        ns,
        "parisrouters",
        "life",
        lambda s: s.get("phase") == "Ready" and s["trainJob"] != scratch_job,
        "to grow",
        debug,
    )
    assert st["servedExperts"] == ["e0", "e1", "e2", "e3"] and st["grownFrom"] == scratch
    parent = checkpoint_fingerprint(store, scratch)
    assert parent is not None and st["fingerprint"]["fields"]["router.grown_from"] == parent["digest"]
    assert checkpoint_fingerprint(store, st["prefix"]) == st["fingerprint"], "the trainer grew what the operator asked"
    job = cluster.batch().read_namespaced_job(st["trainJob"], ns)
    assert job.spec.template.spec.containers[0].command[-2:] == ["--grow-from", scratch]
    trainings = [e.message for e in events_for(cluster, ns, "life") if e.reason == "RouterTraining"]
    assert any("e3 (cluster 3)" in m and f"growing the router at {scratch}" in m for m in trainings), trainings
    assert {e: status_of(cluster, ns, "parisexperts", e)["prefix"] for e in old} == old, "old experts untouched"
    url = pod_runner.url_for_selector("app.kubernetes.io/instance=life,app.kubernetes.io/component=serve", ns)
    assert len(generate_usage(url)) == 4


def _store(minio: MinioServer, bucket: str) -> S3Store:
    cfg = StorageConfig(uri=f"s3://{bucket}", endpoint=minio.endpoint, retry_deadline=30)
    store = open_store(cfg, access_key=minio.access_key, secret_key=minio.secret_key)
    assert isinstance(store, S3Store)
    return store


def generate_usage(url: str) -> list[float]:
    body = json.dumps({"prompt": "a handwritten digit two", "steps": 2, "format": "json", "routing": "full"})
    deadline = time.monotonic() + 120
    while True:  # the new pods may still be loading when the old ones go
        try:
            req = urllib.request.Request(f"{url}/v1/generate", body.encode(), {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=120) as r:
                return list(json.loads(r.read())["usage"])
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def test_a_replaced_jobs_successor_starts_only_once_the_old_pod_is_gone(
    k8s_cluster: Cluster,
    k8s_namespace: str,
    minio_server: MinioServer,
    pod_runner: PodRunner,
    operator: Operator,  # noqa: F811
    tmp_path: Path,
) -> None:
    ns, cluster = k8s_namespace, k8s_cluster
    bucket = minio_server.make_bucket()
    prepare(minio_server, bucket, tmp_path)
    create_secret(cluster, ns, minio_server)
    pod_runner.env.update(pod_env(minio_server, pod_runner))
    e = expert("long", 0, bucket, steps=2000)
    e["spec"]["train"]["checkpoint_every"] = 20
    assert apply(cluster, ns, [e]).returncode == 0

    def debug() -> str:
        return cluster.kubectl("get", "paris,jobs,pods", "-n", ns, check=False).stdout + pod_runner.describe()

    until(cluster, ns, "parisexperts", "long", lambda s: s.get("step", 0) >= 10, "to train", debug)
    overlaps: list[list[str]] = []
    stop = threading.Event()

    def watch() -> None:  # every trainer process of this expert training at the same moment
        while not stop.is_set():
            # A process told to stop is writing its SIGTERM checkpoint: a kubelet keeps its pod
            # Terminating meanwhile (which the operator waits for), but kwok deletes the pod object
            # at once, so this emulation cannot hold the successor back for that window.
            alive = [
                p.name
                for p in pod_runner.processes()
                if p.namespace == ns and p.proc and p.proc.poll() is None and not p.stop_requested.is_set()
            ]
            if len(alive) > 1:
                overlaps.append(alive)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        patch_spec(cluster, ns, "parisexperts", "long", {"train": {"steps": 300}})
        st = until(cluster, ns, "parisexperts", "long", lambda s: s.get("phase") == "Succeeded", "to finish", debug)
    finally:
        stop.set()
        watcher.join()
    assert not overlaps, f"two trainers of one expert ran at once: {overlaps[:3]}"
    assert st["observedGeneration"] == 2 and st["step"] == 300
    events = events_for(cluster, ns, "long")
    said = [f"{ev.reason}: {ev.message}" for ev in events]
    # (Each phase transition posts an event with the same reason, "Training -> Pending: ...":
    # count the operator's own actions.)
    actions = [m for m in said if m.startswith(("JobCreated: created Job", "ReplacingJob: deleting Job"))]
    assert sorted(actions) == [  # (timestamps have 1 s resolution: compare as a multiset)
        "JobCreated: created Job long-train",
        "JobCreated: created Job long-train",
        "ReplacingJob: deleting Job long-train: spec generation 2",
    ], said
    pods = [p for p in pod_runner.processes() if p.namespace == ns]
    assert len(pods) == 2 and pods[0].exit_code in (143, 137), [(p.name, p.exit_code) for p in pods]


def test_a_resource_deleted_while_the_operator_is_down_is_released_when_it_returns(
    k8s_cluster: Cluster,
    k8s_namespace: str,
    minio_server: MinioServer,
    operator: Operator,  # noqa: F811
    tmp_path: Path,
) -> None:
    """kopf's finalizer (it stops the status timer) holds a deleted resource until the operator
    is back; a malformed progress.json meanwhile is reported, not fatal."""
    ns, cluster = k8s_namespace, k8s_cluster
    bucket = minio_server.make_bucket()
    prepare(minio_server, bucket, tmp_path)  # no Job (hence no jobName) for a dataset not prepared
    create_secret(cluster, ns, minio_server)
    e = expert("held", 0, bucket)
    e["spec"]["nodeSelector"] = {"pool": "nowhere"}  # its pod never runs: this test needs none
    assert apply(cluster, ns, [e]).returncode == 0
    st = until(cluster, ns, "parisexperts", "held", lambda s: bool(s.get("jobName")), "a Job", None)
    # A torn progress.json where this version trains (as a crashed writer on a store without
    # atomic PUTs could leave it): reported, not fatal.
    minio_server.client().put_object(bucket, f"{st['prefix']}/progress.json", _bytes(b"{torn"), 5)
    def told(s: dict[str, Any]) -> bool:
        return cond(s, "ProgressMalformed").get("status") == "True"

    st = until(cluster, ns, "parisexperts", "held", told, "the malformed file reported", None)
    bad = cond(st, "ProgressMalformed")
    assert bad["status"] == "True" and "progress.json is not JSON" in bad["message"], bad
    assert st["phase"] == "Pending" and operator.proc is not None and operator.proc.alive()
    finalizers = get_cr(cluster, ns, "parisexperts", "held")["metadata"].get("finalizers")
    assert finalizers == ["paris.dev/finalizer"]

    operator.stop()
    custom(cluster).delete_namespaced_custom_object(GROUP, VERSION, ns, "parisexperts", "held")
    time.sleep(2)
    assert get_cr(cluster, ns, "parisexperts", "held")["metadata"]["deletionTimestamp"], "held while it is away"
    operator.start()

    def gone() -> bool:
        try:
            get_cr(cluster, ns, "parisexperts", "held")
            return False
        except ApiException as err:
            return err.status == 404

    eventually(gone, 60, "the operator to release the deleted resource", operator.logs)
    eventually(
        lambda: not cluster.batch().list_namespaced_job(ns, label_selector="paris.dev/expert=held").items,
        60,
        "its Job to be garbage-collected",
    )


def _bytes(data: bytes) -> Any:
    import io

    return io.BytesIO(data)
