"""The chaos suite: faults injected into real trainers on the real control plane and the real
MinIO, each case asserting the end state (README, "Faults survived").

- The store stopped for 30 s mid-training: a trainer waits it out, no pod fails; one whose
  deadline is shorter fails cleanly, with the endpoint in its status.
- A trainer pod evicted 7 times (3 in CI) through the Eviction API: the expert completes, no eviction
  counts against backoffLimit 0, and no step is lost (each SIGTERM writes a checkpoint where
  the trainer stopped, and the next pod resumes there).
- A trainer SIGKILLed 5 times, at random points and during checkpoint uploads: it completes,
  each resume loses at most one checkpoint interval, and no checkpoint is ever torn.
- A `paris train router` SIGKILLed while it publishes: the old pipeline stays served.

Each case prints one `chaos figures:` line (run with -rP to see them): the README's table of
faults survived and steps lost comes from those.

Sized for 2 shared CPU cores: tiny models, few steps, short outages.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import yaml

from paris.config import StorageConfig
from paris.storage import S3Store, open_store
from paris.trainer.checkpoint import COMPLETE, fetch_checkpoint, file_sums
from tests.e2e.test_ensemble_life import DATA, MODEL, expert, prepare, status_of, until
from tests.e2e.test_operator import (
    Operator,
    apply,
    chart_rbac_kubeconfig,
    create_secret,
    pod_env,
)
from tests.helpers import eventually
from tests.servers.cluster import Cluster
from tests.servers.minio import MinioServer
from tests.servers.podrunner import PodProcess, PodRunner

pytestmark = pytest.mark.timeout(2400)


@pytest.fixture
def chaos_operator(
    k8s_cluster: Cluster, k8s_namespace: str, own_minio: MinioServer, pod_runtime: str, tmp_path: Path
) -> Iterator[Operator]:
    """The operator of `operator`, on the test's own MinIO (which the test may take down)."""
    (tmp_path / "kube").mkdir()  # its own folder: the operator image mounts it (tmp_path is 0700)
    kubeconfig, role = chart_rbac_kubeconfig(k8s_cluster, k8s_namespace, tmp_path / "kube")
    op = Operator(k8s_cluster, k8s_namespace, own_minio, tmp_path, kubeconfig, pod_runtime).start()
    try:
        yield op
    finally:
        if not own_minio.running:
            own_minio.start()
        k8s_cluster.kubectl(
            "delete", "parisexperts,parisrouters", "--all", "-n", k8s_namespace, "--timeout=60s", check=False
        )
        op.stop()
        k8s_cluster.kubectl("delete", "clusterrolebinding,clusterrole", role, "--ignore-not-found", check=False)


def ready(cluster: Cluster, ns: str, minio: MinioServer, runner: PodRunner, tmp_path: Path) -> str:
    bucket = minio.make_bucket()
    prepare(minio, bucket, tmp_path)
    create_secret(cluster, ns, minio)
    runner.env.update(pod_env(minio, runner))
    return bucket


def trainers(runner: PodRunner, ns: str, name: str) -> list[PodProcess]:
    """Every pod process of one expert, oldest first."""
    return [p for p in runner.processes() if p.namespace == ns and p.name.startswith(f"{name}-train-")]


def alive(p: PodProcess) -> bool:
    return p.proc is not None and p.proc.poll() is None


def stopped(p: PodProcess) -> bool:
    return not alive(p)


def figures(case: str, **numbers: object) -> None:
    print(f"chaos figures: {case}: {json.dumps(numbers)}")


def store_of(minio: MinioServer, bucket: str) -> S3Store:
    cfg = StorageConfig(uri=f"s3://{bucket}", endpoint=minio.endpoint, retry_deadline=30)
    store = open_store(cfg, access_key=minio.access_key, secret_key=minio.secret_key)
    assert isinstance(store, S3Store)
    return store


def test_a_short_store_outage_fails_no_pod_and_one_past_the_deadline_fails_cleanly(
    k8s_cluster: Cluster,
    k8s_namespace: str,
    own_minio: MinioServer,
    pod_runner: PodRunner,
    chaos_operator: Operator,
    tmp_path: Path,
) -> None:
    ns, cluster = k8s_namespace, k8s_cluster
    bucket = ready(cluster, ns, own_minio, pod_runner, tmp_path)
    patient, hasty = expert("patient", 0, bucket, steps=300), expert("hasty", 1, bucket, steps=300)
    hasty["spec"]["storage"]["retryDeadlineSeconds"] = 8
    hasty["spec"]["backoffLimit"] = 0
    for e in (patient, hasty):
        e["spec"]["train"]["checkpoint_every"] = 25
    assert apply(cluster, ns, [patient, hasty]).returncode == 0

    def debug() -> str:
        return cluster.kubectl("get", "paris,jobs,pods", "-n", ns, check=False).stdout + pod_runner.describe()

    for name in ("patient", "hasty"):
        until(cluster, ns, "parisexperts", name, lambda s: s.get("step", 0) >= 10, "to train", debug)
    own_minio.stop()
    time.sleep(30)
    own_minio.start()

    failed = until(cluster, ns, "parisexperts", "hasty", lambda s: s.get("phase") == "Failed", "to fail", debug)
    assert f"s3 endpoint {own_minio.endpoint} unreachable for" in failed["message"], failed
    st = until(cluster, ns, "parisexperts", "patient", lambda s: s.get("phase") == "Succeeded", "to finish", debug)
    assert not st.get("podFailures"), "no pod failed"
    (only,) = trainers(pod_runner, ns, "patient")
    log = only.logs()
    assert "unreachable" in log and "answers again after" in log, log[-2000:]
    waited = [int(w) for w in re.findall(r"answers again after (\d+)s", log)]
    figures("store stopped 30 s", pods_failed=0, steps_lost=0, steps=st["step"], waits_s=waited)
    figures("store stopped past an 8 s deadline", phase="Failed", message=failed["message"])


# The Job controller delays each replacement pod, evictions included (10 s doubling per failed
# pod, at most 10 min: kubernetes/kubernetes#130881), so seven evictions spend about 21 minutes
# in backoff alone. CI runs three (70 s of backoff); PARIS_CHAOS_EVICTIONS=7 runs the seven of
# the README's fault table.
EVICTIONS = int(os.environ.get("PARIS_CHAOS_EVICTIONS", "3"))


def job_backoff(failures: int) -> float:
    """The Job controller's delay before the pod after the given number of failed pods."""
    return min(10.0 * 2 ** (failures - 1), 600.0) if failures else 0.0


def test_an_expert_evicted_again_and_again_still_completes(
    k8s_cluster: Cluster,
    k8s_namespace: str,
    own_minio: MinioServer,
    pod_runner: PodRunner,
    chaos_operator: Operator,
    tmp_path: Path,
) -> None:
    ns, cluster = k8s_namespace, k8s_cluster
    bucket = ready(cluster, ns, own_minio, pod_runner, tmp_path)
    e = expert("evicted", 0, bucket, steps=240)
    e["spec"]["backoffLimit"] = 0  # a counted failure would end it: evictions must not count
    e["spec"]["train"]["checkpoint_every"] = 10
    assert apply(cluster, ns, [e]).returncode == 0

    def debug() -> str:
        return cluster.kubectl("get", "paris,jobs,pods", "-n", ns, check=False).stdout + pod_runner.describe()

    core = cluster.core()
    last_step = 0
    for n in range(EVICTIONS):
        # A fresh pod that trained at least one step past the last eviction.
        def running(n: int = n, last_step: int = last_step) -> PodProcess | None:
            st = status_of(cluster, ns, "parisexperts", "evicted")
            pods = trainers(pod_runner, ns, "evicted")
            fresh = len(pods) > n and alive(pods[-1]) and st.get("step", 0) > last_step
            return pods[-1] if fresh else None

        # The Job controller's backoff (above), then the pod starts.
        victim = eventually(running, job_backoff(n) + 300, f"pod {n + 1} to train", debug)
        last_step = status_of(cluster, ns, "parisexperts", "evicted")["step"]
        body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": victim.name, "namespace": ns}}
        core.create_namespaced_pod_eviction(victim.name, ns, body)
        eventually(partial(stopped, victim), 60, f"eviction {n + 1} to stop its trainer", debug)
        # Its SIGTERM checkpoint's progress write is no sign of the next pod training: go past it.
        if m := re.search(r"stopped on SIGTERM after .* at step (\d+)", victim.logs()):
            last_step = int(m[1])

    # The last pod waits out the longest backoff first.
    succeeded, wait = (lambda s: s.get("phase") == "Succeeded"), job_backoff(EVICTIONS) + 300
    st = until(cluster, ns, "parisexperts", "evicted", succeeded, "to finish", debug, wait)
    assert st["step"] == 240 and not st.get("podFailures"), st
    job = cluster.batch().read_namespaced_job(st["jobName"], ns)
    assert not job.status.failed, "evictions are disruptions: none counted"
    pods = trainers(pod_runner, ns, "evicted")
    assert len(pods) == EVICTIONS + 1
    resumed = [int(m[1]) for p in pods[1:] if (m := re.search(r"resuming from the checkpoint at step (\d+)", p.logs()))]
    assert len(resumed) == EVICTIONS and resumed == sorted(resumed), resumed
    # Each evicted trainer wrote a checkpoint where SIGTERM stopped it: the next one lost nothing.
    stops = [int(m[1]) for p in pods[:-1] if (m := re.search(r"stopped on SIGTERM after .* at step (\d+)", p.logs()))]
    assert stops == resumed, (stops, resumed)
    assert all(p.exit_code == 143 for p in pods[:-1]), [p.exit_code for p in pods]
    figures(
        f"{EVICTIONS} evictions", steps=st["step"], pods=len(pods), stopped_at=stops, resumed_at=resumed, steps_lost=0
    )


def _in_flight(store: S3Store, prefix: str) -> bool:
    """A checkpoint folder being uploaded: files there, its checkpoint.json not yet."""
    folders: dict[str, bool] = {}
    for key in store.keys(f"{prefix}/checkpoints/"):
        folder, _, rest = key[len(prefix) + len("/checkpoints/") :].partition("/")
        folders[folder] = folders.get(folder, False) or rest == COMPLETE
    return any(not done for done in folders.values())


def test_a_trainer_killed_five_times_even_mid_upload_completes_with_no_torn_checkpoint(
    k8s_cluster: Cluster,
    k8s_namespace: str,
    own_minio: MinioServer,
    pod_runner: PodRunner,
    chaos_operator: Operator,
    tmp_path: Path,
) -> None:
    ns, cluster = k8s_namespace, k8s_cluster
    bucket = ready(cluster, ns, own_minio, pod_runner, tmp_path)
    every = 10
    e = expert("killed", 0, bucket, steps=200)
    # The tiny preset at full width: checkpoints of a few MB, so an upload takes long enough to
    # be caught in flight.
    e["spec"]["expert"] = {"preset": "tiny"}
    e["spec"]["train"].update(checkpoint_every=every, keep_checkpoints=2)
    e["spec"]["backoffLimit"] = 6
    assert apply(cluster, ns, [e]).returncode == 0
    store = store_of(own_minio, bucket)
    rng = random.Random(7)

    def debug() -> str:
        return cluster.kubectl("get", "paris,jobs,pods", "-n", ns, check=False).stdout + pod_runner.describe()

    kills: list[tuple[str, int]] = []  # (how, last progress step seen before the kill)
    mid_upload = 0
    for n in range(5):
        victim = eventually(
            lambda: next((p for p in trainers(pod_runner, ns, "killed") if alive(p)), None),
            300,
            f"trainer {n + 1}",
            debug,
        )
        assert victim.pid is not None
        born = time.time()
        prefix = eventually(lambda: status_of(cluster, ns, "parisexperts", "killed").get("prefix"), 60, "a prefix")

        def training(prefix: str = prefix, born: float = born) -> bool:
            """This pod wrote progress (the last one is dead): it loaded and trains."""
            key = f"{prefix}/progress.json"
            return store.exists(key) and float(store.get_json(key).get("updated", 0)) > born

        eventually(training, 300, f"trainer {n + 1} to train", debug)
        how = "sleep"
        if n % 2 == 0:  # try to catch an upload in flight (polling the bucket), else kill anyway
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline and alive(victim):
                if _in_flight(store, prefix):
                    how = "mid-upload"
                    break
                time.sleep(0.005)
        else:
            time.sleep(rng.uniform(2, 6))
        step = int(store.get_json(f"{prefix}/progress.json").get("step", 0))
        os.killpg(os.getpgid(victim.pid), signal.SIGKILL)
        eventually(partial(stopped, victim), 30, "the kill", debug)
        mid_upload += how == "mid-upload" and _in_flight(store, prefix)
        kills.append((how, step))

    st = until(cluster, ns, "parisexperts", "killed", lambda s: s.get("phase") == "Succeeded", "to finish", debug)
    assert st["step"] == 200 and st.get("podFailures") == 5, st
    assert mid_upload >= 1, f"no kill landed during an upload: {kills}"
    pods = trainers(pod_runner, ns, "killed")
    assert len(pods) == 6
    lost = []
    for (how, seen), pod in zip(kills, pods[1:], strict=True):
        m = re.search(r"resuming from the checkpoint at step (\d+)", pod.logs())
        resumed = int(m[1]) if m else 0
        assert resumed >= seen - every, f"{how} kill at step {seen} resumed from {resumed}: more than one interval lost"
        lost.append({"how": how, "progress_step": seen, "resumed_at": resumed, "steps_lost": max(0, seen - resumed)})
    figures("5 SIGKILLs", checkpoint_every=every, kills=lost, mid_upload=mid_upload)

    # No torn checkpoint: every folder left is complete and every file matches its checksum.
    prefix = st["prefix"]
    folders = sorted({k.split("/checkpoints/")[1].split("/")[0] for k in store.keys(f"{prefix}/checkpoints/")})
    assert folders, "checkpoints were kept"
    with tempfile.TemporaryDirectory() as tmp:
        for folder in folders:
            record = store.get_json(f"{prefix}/checkpoints/{folder}/{COMPLETE}")
            local = store.download_dir(f"{prefix}/checkpoints/{folder}", Path(tmp) / folder)
            have = {k: v for k, v in file_sums(local).items() if k != COMPLETE}
            assert have == record["files"], folder
        got = fetch_checkpoint(store, prefix, Path(tmp) / "latest")
        assert got is not None and got[0] == 200


def test_a_router_killed_while_it_publishes_leaves_the_old_pipeline_served(
    own_minio: MinioServer, tmp_path: Path
) -> None:
    """No cluster needed: `paris train router` against the real MinIO, SIGKILLed once its new
    pipeline version starts to appear; the pointer still names the old one, which loads."""
    from paris.router.assemble import load_pipeline, published

    bucket = own_minio.make_bucket()
    prepare(own_minio, bucket, tmp_path)
    cfg = {
        "model": MODEL,
        "storage": {"uri": f"s3://{bucket}"},
        "data": DATA,
        "expert": {"preset": "tiny", "hidden_size": 32, "depth": 1, "heads": 2},
        "train": {"steps": 2, "batch_size": 8, "checkpoint_every": 2, "threads": 1},
        "router": {"model": {"hidden_size": 32, "depth": 1, "heads": 2}, "train": {"steps": 2, "threads": 1}},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, **own_minio.env(), "OMP_NUM_THREADS": "1"}

    def paris(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "paris", *args]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)

    for k in (0, 1):
        assert paris("train", "expert", str(path), "--cluster", str(k)).returncode == 0
    r = paris("train", "router", str(path), "--expert", "0", "--expert", "1")
    assert r.returncode == 0, r.stderr
    store = store_of(own_minio, bucket)
    before = published(store, MODEL)
    assert before is not None

    argv = [sys.executable, "-m", "paris", "train", "router", str(path), "--expert", "0"]
    argv += ["--prefix", f"models/{MODEL}/router/one"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def new_version() -> bool:
            keys = store.keys(f"models/{MODEL}/pipelines/")
            return any(not k.startswith(before["prefix"] + "/") for k in keys)

        eventually(new_version, 300, "the new pipeline version to start uploading")
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert published(store, MODEL) == before, "the pointer never moved"
    with tempfile.TemporaryDirectory() as tmp:
        pipe = load_pipeline(store, MODEL, Path(tmp))
    assert pipe.router.config.num_clusters == 2, "the old pipeline, whole"
    figures("router SIGKILLed mid-publish", served=before["prefix"], steps_lost=0)
