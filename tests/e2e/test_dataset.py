"""A ParisDataset on the real control plane and the real MinIO: its stages run as Indexed Jobs
on a kwok pool (pods played by the pod runner), an index killed mid-way is retried alone, the
manifest counts every sample exactly once, and experts wait for the dataset to be Ready."""

from __future__ import annotations

import io
import json
import os
import signal
import tarfile
from collections import Counter
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.e2e.test_operator import Operator, apply, create_secret, get_cr, pod_env, with_fake_node_toleration
from tests.e2e.test_operator import operator as operator  # the fixture
from tests.helpers import eventually
from tests.servers.cluster import Cluster
from tests.servers.minio import MinioServer
from tests.servers.podrunner import PodRunner

pytestmark = pytest.mark.timeout(1800)

TARS, PER_TAR = 4, 10
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


def upload_tars(minio: MinioServer, bucket: str) -> None:
    """WebDataset tars of 16x16 RGB squares in three colours, in the store the pods read."""
    client = minio.client()
    rng = np.random.default_rng(0)
    for t in range(TARS):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for i in range(PER_TAR):
                n = t * PER_TAR + i
                img = rng.integers(0, 40, (16, 16, 3)).astype(np.uint8)
                img[..., n % 3] = 200
                png = io.BytesIO()
                Image.fromarray(img).save(png, format="PNG")
                caption = f"a {['red', 'green', 'blue'][n % 3]} square".encode()
                for ext, data in (("png", png.getvalue()), ("txt", caption)):
                    info = tarfile.TarInfo(f"{n:04d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        size = buf.tell()
        buf.seek(0)
        client.put_object(bucket, f"raw/squares/shard-{t}.tar", buf, size)


def dataset_manifest(bucket: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "storage": {"uri": f"s3://{bucket}"},
        "data": {
            "name": "squares",
            "source": "webdataset",
            "path": f"s3://{bucket}/raw/squares",
            "image_size": 16,
            "clusters": 2,
            "fine_clusters": 4,
            "holdout_fraction": 0.25,
            # One sample per part and per batch: an index uploads many parts, so it can be
            # caught (and killed) between its first part and its index manifest.
            "shard_size": 1,
            "batch_size": 1,
            "text_encoder": {"max_length": 8},
        },
        "indexes": TARS,
        "parallelism": TARS,
        "backoffLimitPerIndex": 2,
        "pool": "cpu",
    }
    with_fake_node_toleration(spec)
    return {"apiVersion": "paris.dev/v1alpha1", "kind": "ParisDataset", "metadata": {"name": "squares"}, "spec": spec}


def expert(name: str, dataset: str, bucket: str, model: str = "squares") -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": model,
        "cluster": 0,
        "dataset": dataset,
        "storage": {"uri": f"s3://{bucket}"},
        "expert": {"preset": "tiny", "hidden_size": 32, "depth": 1, "heads": 2, "patch_size": 2},
        "train": {"steps": 2, "batch_size": 4, "checkpoint_every": 2, "log_every": 1, "threads": 1},
        "pool": "cpu",
    }
    with_fake_node_toleration(spec)
    return {"apiVersion": "paris.dev/v1alpha1", "kind": "ParisExpert", "metadata": {"name": name}, "spec": spec}


def _keys(minio: MinioServer, bucket: str, prefix: str) -> list[str]:
    return [o.object_name or "" for o in minio.client().list_objects(bucket, prefix=prefix, recursive=True)]


def test_a_dataset_prepared_by_indexed_jobs_survives_a_killed_index_and_gates_its_experts(
    k8s_cluster: Cluster,
    k8s_namespace: str,
    minio_server: MinioServer,
    pod_runner: PodRunner,
    operator: Operator,
) -> None:
    ns, cluster = k8s_namespace, k8s_cluster
    bucket = minio_server.make_bucket()
    upload_tars(minio_server, bucket)
    create_secret(cluster, ns, minio_server)
    pod_runner.env.update(pod_env(minio_server, pod_runner))

    def debug() -> str:
        return f"{cluster.kubectl('get', 'paris,jobs,pods', '-n', ns, '-o', 'wide', check=False).stdout}\n" + (
            f"{operator.logs()}\n{pod_runner.describe()}"
        )

    # An expert naming a dataset that does not exist: the reason, and no Job.
    assert apply(cluster, ns, [expert("orphan", "no-such-dataset", bucket, model="orphan")]).returncode == 0
    st = eventually(
        lambda: (s := get_cr(cluster, ns, "parisexperts", "orphan").get("status") or {}).get("reason")
        == "DatasetNotFound" and s,
        60, "DatasetNotFound on the orphan expert", debug,
    )
    cond = next(c for c in st["conditions"] if c["type"] == "DatasetReady")
    assert cond["status"] == "False" and "no-such-dataset" in cond["message"]

    res = apply(cluster, ns, [dataset_manifest(bucket), expert("squares-0", "squares", bucket)])
    assert res.returncode == 0, res.stderr

    # While the dataset prepares, its expert waits with DatasetReady=False and has no Job.
    st = eventually(
        lambda: (s := get_cr(cluster, ns, "parisexperts", "squares-0").get("status") or {}).get("reason")
        == "DatasetNotReady" and s,
        60, "the expert to wait for its dataset", debug,
    )
    assert st["phase"] == "Pending"

    # Kill one encode index mid-way: it has uploaded a part but not its index manifest.
    def encode_pod_midway() -> tuple[str, str] | None:
        st = get_cr(cluster, ns, "parisdatasets", "squares").get("status") or {}
        if st.get("phase") in ("Failed", "Ready"):
            pytest.fail(f"the dataset is {st.get('phase')} before an index could be killed: {st}\n{debug()}")
        for pod in cluster.core().list_namespaced_pod(ns, label_selector="paris.dev/stage=encode").items:
            index = (pod.metadata.annotations or {}).get(INDEX_ANNOTATION)
            if index is None or (pod.status.phase or "") != "Running":
                continue
            i = int(index)
            parts = [k for k in _keys(minio_server, bucket, "datasets/squares/") if f"/part-{i:05d}-" in k]
            done = _keys(minio_server, bucket, f"datasets/squares/work/encode/index-{i:05d}.json")
            if parts and not done:
                return pod.metadata.name, index
        return None

    victim, victim_index = eventually(encode_pod_midway, 600, "an encode index mid-way", debug, interval=0.05)
    rec = pod_runner.find(victim, ns)
    assert rec is not None and rec.pid is not None
    os.killpg(os.getpgid(rec.pid), signal.SIGKILL)

    ready = eventually(
        lambda: (s := get_cr(cluster, ns, "parisdatasets", "squares").get("status") or {}).get("phase")
        in ("Ready", "Failed") and s,
        900, "the dataset to be Ready", debug,
    )
    assert ready["phase"] == "Ready", json.dumps(ready, indent=1)
    assert ready["stage"] == "done" and ready["samples"] == TARS * PER_TAR
    assert sum(ready["clusterSizes"]) + ready["heldOut"] == TARS * PER_TAR and len(ready["clusterSizes"]) == 2
    assert ready["stages"]["encode"]["phase"] == "Succeeded"

    # The killed index ran again, alone: two pods for it, one for every other index.
    encode_pods = cluster.core().list_namespaced_pod(ns, label_selector="paris.dev/stage=encode").items
    per_index = Counter((p.metadata.annotations or {}).get(INDEX_ANNOTATION) for p in encode_pods)
    assert per_index[victim_index] == 2 and all(n == 1 for i, n in per_index.items() if i != victim_index), per_index

    # The manifest counts every sample exactly once (the killed attempt's parts are either
    # rewritten under the same names or left unreferenced).
    manifest = json.loads(minio_server.client().get_object(bucket, "datasets/squares/manifest.json").read())
    infos = [s for c in manifest["clusters"] for s in c["shards"]] + manifest["holdout"]["shards"]
    keys: list[str] = []
    for info in infos:
        data = minio_server.client().get_object(bucket, f"datasets/squares/{info['key']}").read()
        (n,) = np.frombuffer(data[:8], dtype="<u8")
        keys += json.loads(json.loads(data[8 : 8 + int(n)])["__metadata__"]["keys"])
    assert Counter(keys) == Counter(f"shard-{t}.tar/{t * PER_TAR + i:04d}" for t in range(TARS) for i in range(PER_TAR))

    # kubectl get parisdatasets shows the stage, indexes, samples and phase.
    out = cluster.kubectl("get", "parisdatasets", "-n", ns).stdout
    assert "STAGE" in out and "SAMPLES" in out and "Ready" in out and str(TARS * PER_TAR) in out

    # Only now does the expert start; it trains on the dataset's data.
    st = eventually(
        lambda: (s := get_cr(cluster, ns, "parisexperts", "squares-0").get("status") or {}).get("phase")
        in ("Succeeded", "Failed") and s,
        600, "the expert to train", debug,
    )
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    assert next(c for c in st["conditions"] if c["type"] == "DatasetReady")["status"] == "True"
    assert _keys(minio_server, bucket, f"{st['prefix']}/latest.json")  # its fingerprint's version
    assert get_cr(cluster, ns, "parisexperts", "orphan")["status"]["reason"] == "DatasetNotFound"
    assert not cluster.batch().list_namespaced_job(ns, label_selector="paris.dev/expert=orphan").items
