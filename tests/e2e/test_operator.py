"""The operator on the real control plane: the example manifests become Jobs on their node
pools, the real trainers (played by the pod runner) train against the real MinIO, the router
trains and rolls out, and the endpoint answers with a PNG.

With the images built (the default of scripts/test; see tests/servers/images.py), the operator
runs from the operator image and every trainer and serve pod from the trainer image, with the
pods' users, env, volumes and read-only root; otherwise all of them run as local processes.

Sized for 2 shared CPU cores: 8 tiny experts x 40 steps, a 30-step router, 4 sampling steps.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from PIL import Image

from tests.helpers import eventually
from tests.servers import images as local_images
from tests.servers.cluster import FAKE_NODE_TOLERATIONS, Cluster
from tests.servers.minio import MinioServer
from tests.servers.podrunner import PodRunner
from tests.servers.procs import ServerProcess, binary

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "k8s"
GROUP, VERSION = "paris.dev", "v1alpha1"

pytestmark = pytest.mark.timeout(1800)




def chart_rbac_kubeconfig(cluster: Cluster, ns: str, workdir: Path) -> tuple[Path, str]:
    """Install the chart's ServiceAccount, ClusterRole and binding, and return a kubeconfig with
    that ServiceAccount's token: the operator under test has exactly the chart's rights."""
    argv = [binary("helm"), "template", "paris", str(REPO / "charts" / "paris"), "--namespace", ns]
    argv += ["--kube-version", cluster.version.lstrip("v"), "--set", "serviceAccount.name=paris-operator"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    docs = [
        d for d in yaml.safe_load_all(out) if d and d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")
    ]
    role = f"paris-operator-{ns}"  # cluster-scoped: unique per test namespace
    for d in docs:
        if d["kind"] != "ServiceAccount":
            d["metadata"]["name"] = role
        if d["kind"] == "ClusterRoleBinding":
            d["roleRef"]["name"] = role
    cluster.kubectl("apply", "-f", "-", input="---\n".join(yaml.safe_dump(d) for d in docs))
    token = (
        cluster.core()
        .create_namespaced_service_account_token("paris-operator", ns, {"spec": {"expirationSeconds": 7200}})
        .status.token
    )
    path = workdir / "operator.kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                # The CA inline: the file must work inside the operator's container too.
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {
                            "server": cluster.server,
                            "certificate-authority-data": base64.b64encode(cluster.ca_file.read_bytes()).decode(),
                        },
                    }
                ],
                "users": [{"name": "paris-operator", "user": {"token": token}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "paris-operator"}}],
                "current-context": "c",
            }
        )
    )
    return path, role


class Operator:
    """The operator against the test cluster, restartable: the operator image's entrypoint
    (`kopf run -m paris.operator`) run as the image's user with a read-only root and an emptyDir
    /tmp, as the chart's Deployment runs it; or, in process mode, the same command from the
    venv. It authenticates as the chart's ServiceAccount, so RBAC is tested along the way."""

    def __init__(
        self, cluster: Cluster, namespace: str, minio: MinioServer, workdir: Path, kubeconfig: Path, runtime: str
    ) -> None:
        self.cluster, self.namespace, self.minio, self.workdir = cluster, namespace, minio, workdir
        self.kubeconfig = kubeconfig
        self.runtime = runtime
        self.proc: ServerProcess | None = None
        self.container: local_images.Container | None = None
        self.runs = 0

    def start(self) -> Operator:
        self.runs += 1
        # The trainer image the operator puts into pods: the built one, which the pod runner runs.
        trainer = local_images.require_image("trainer") if self.runtime == "image" else "paris/trainer:test"
        env = {
            # Reach the test MinIO from outside the cluster, as the pods do through the runner.
            "PARIS_S3_ENDPOINT": self.minio.url,
            "PARIS_OPERATOR_CONFIG": yaml.safe_dump({"pollSeconds": 1.0, "trainerImage": trainer}),
        }
        args = ["--standalone", f"--namespace={self.namespace}", "--verbose"]
        if self.runtime == "image":
            ref = local_images.require_image("operator")
            name = local_images.container_name("operator", self.namespace, str(self.runs))
            self.container = local_images.Container(ref, name)
            tmp = self.workdir / f"operator-tmp-{self.runs}"
            tmp.mkdir()
            tmp.chmod(0o777)
            argv = self.container.argv(
                [*local_images.image_config(ref).entrypoint, *args],
                env={**env, "KUBECONFIG": f"/etc/kube/{self.kubeconfig.name}"},
                volumes=[
                    local_images.Volume(self.kubeconfig.parent, "/etc/kube", read_only=True),
                    local_images.Volume(tmp, "/tmp"),
                ],
                read_only=True,
            )
            self.proc = ServerProcess("operator", argv, self.log_path, env=local_images.storage_env())
            return self
        env |= {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "VIRTUAL_ENV", "TMPDIR")}
        env["KUBECONFIG"] = str(self.kubeconfig)
        argv = [sys.executable, "-m", "kopf", "run", "-m", "paris.operator", *args]
        self.proc = ServerProcess("operator", argv, self.log_path, env=env, cwd=REPO)
        return self

    def _remove_container(self) -> None:
        if self.container is not None:
            self.container.remove()
            self.container = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"operator-{self.runs}.log"

    def kill(self) -> None:
        """SIGKILL, no chance to clean up: what a node failure does to the operator pod."""
        assert self.proc is not None
        os.killpg(os.getpgid(self.proc.pid), signal.SIGKILL)
        self.proc.proc.wait(timeout=30)
        self.proc.stop()
        self.proc = None
        self._remove_container()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None
        self._remove_container()

    def logs(self) -> str:
        return "\n".join(
            f"--- operator run {i} ---\n"
            + "\n".join((self.workdir / f"operator-{i}.log").read_text().splitlines()[-40:])
            for i in range(1, self.runs + 1)
            if (self.workdir / f"operator-{i}.log").exists()
        )


@pytest.fixture
def operator(
    k8s_cluster: Cluster, k8s_namespace: str, minio_server: MinioServer, pod_runtime: str, tmp_path: Path
) -> Iterator[Operator]:
    (tmp_path / "kube").mkdir()
    kubeconfig, role = chart_rbac_kubeconfig(k8s_cluster, k8s_namespace, tmp_path / "kube")
    op = Operator(k8s_cluster, k8s_namespace, minio_server, tmp_path, kubeconfig, pod_runtime).start()
    try:
        yield op
    finally:
        # kopf puts a finalizer on resources with timers: delete them while the operator runs,
        # or the namespace would hang in Terminating.
        if op.proc is None:
            op.start()
        k8s_cluster.kubectl(
            "delete", "parisexperts,parisrouters,parisdatasets", "--all", "-n", k8s_namespace, "--timeout=60s",
            check=False,
        )
        op.stop()
        k8s_cluster.kubectl("delete", "clusterrolebinding,clusterrole", role, "--ignore-not-found", check=False)


# ---- helpers -----------------------------------------------------------------------------------


def custom(cluster: Cluster) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(cluster.api_client())


def get_cr(cluster: Cluster, ns: str, plural: str, name: str) -> dict[str, Any]:
    return custom(cluster).get_namespaced_custom_object(GROUP, VERSION, ns, plural, name)


def list_cr(cluster: Cluster, ns: str, plural: str) -> list[dict[str, Any]]:
    return list(custom(cluster).list_namespaced_custom_object(GROUP, VERSION, ns, plural)["items"])


TOKEN = "e2e-" + secrets.token_hex(8)
JSON = {"Content-Type": "application/json"}
AUTH = {**JSON, "Authorization": f"Bearer {TOKEN}"}


def apply(cluster: Cluster, ns: str, docs: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    text = "---\n".join(yaml.safe_dump(d) for d in docs)
    return cluster.kubectl("apply", "-n", ns, "-f", "-", input=text, check=False)


def with_fake_node_toleration(spec: dict[str, Any]) -> None:
    tol = spec.setdefault("tolerations", [])
    tol += [t for t in FAKE_NODE_TOLERATIONS if t["key"] == "kwok.x-k8s.io/node"]


def example_experts(bucket: str, steps: int = 40) -> list[dict[str, Any]]:
    """examples/k8s/experts.yaml, patched: our bucket, few steps, one thread, kwok toleration."""
    docs = [d for d in yaml.safe_load_all((EXAMPLES / "experts.yaml").read_text()) if d]
    for d in docs:
        s = d["spec"]
        s["storage"]["uri"] = f"s3://{bucket}"
        s["train"].update(steps=steps, checkpoint_every=steps // 2, batch_size=16, log_every=2, threads=1)
        s["train"]["warmup_steps"] = 5
        with_fake_node_toleration(s)
    return docs


def example_router(bucket: str) -> dict[str, Any]:
    d = yaml.safe_load((EXAMPLES / "router.yaml").read_text())
    s = d["spec"]
    s["storage"]["uri"] = f"s3://{bucket}"
    s["router"]["train"].update(steps=30, checkpoint_every=15, batch_size=16, threads=1, warmup_steps=5)
    s["inference"]["steps"] = 4
    with_fake_node_toleration(s)
    with_fake_node_toleration(s["inference"])
    return d


def prepare_dataset(minio: MinioServer, bucket: str, tmp_path: Path) -> None:
    """What a user does before applying experts: `paris data prepare` into the store."""
    cfg = yaml.safe_load((EXAMPLES / "dataset.yaml").read_text())
    cfg["storage"]["uri"] = f"s3://{bucket}"
    path = tmp_path / "dataset.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, **minio.env(), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "paris", "data", "prepare", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "into 8 clusters" in res.stdout + res.stderr


def pod_env(minio: MinioServer, runner: PodRunner) -> dict[str, str]:
    """What the played pods get besides their own env: the test MinIO and one thread; as local
    processes also this checkout's `paris` on PYTHONPATH (whatever the venv's editable install
    points at), while an image brings its own."""
    env = {"PARIS_S3_ENDPOINT": minio.url, "OMP_NUM_THREADS": "1"}
    if runner.runtime == "process":
        env["PYTHONPATH"] = str(REPO)
    return env


def create_secret(cluster: Cluster, ns: str, minio: MinioServer, name: str = "paris-s3") -> None:
    cluster.core().create_namespaced_secret(
        ns,
        {
            "metadata": {"name": name},
            "stringData": {"AWS_ACCESS_KEY_ID": minio.access_key, "AWS_SECRET_ACCESS_KEY": minio.secret_key},
        },
    )


def create_read_only_secret(cluster: Cluster, ns: str, minio: MinioServer, bucket: str, name: str) -> None:
    """A MinIO user that may only list and read the bucket, in a Secret with the usual keys."""
    from minio import Minio
    from minio.error import S3Error

    user, key = minio.read_only_user(bucket)
    reader = Minio(minio.endpoint, access_key=user, secret_key=key, secure=False)
    with pytest.raises(S3Error, match="Access Denied"):
        reader.put_object(bucket, "probe", io.BytesIO(b"x"), 1)
    cluster.core().create_namespaced_secret(
        ns, {"metadata": {"name": name}, "stringData": {"AWS_ACCESS_KEY_ID": user, "AWS_SECRET_ACCESS_KEY": key}}
    )


def expert_jobs(cluster: Cluster, ns: str) -> list[Any]:
    return list(cluster.batch().list_namespaced_job(ns, label_selector="app.kubernetes.io/component=expert").items)


def events_for(cluster: Cluster, ns: str, name: str) -> list[Any]:
    return [e for e in cluster.core().list_namespaced_event(ns).items if e.involved_object.name == name]


# ---- the API server refuses what the models refuse -------------------------------------------------


def test_invalid_manifests_are_refused_and_create_nothing(
    k8s_cluster: Cluster, k8s_namespace: str, operator: Operator
) -> None:
    ns = k8s_namespace
    good = example_experts("paris")[0]

    negative = json.loads(json.dumps(good))
    negative["metadata"]["name"] = "negative-steps"
    negative["spec"]["train"]["steps"] = -5
    res = apply(k8s_cluster, ns, [negative])
    assert res.returncode != 0
    assert "spec.train.steps" in res.stderr and "greater than or equal to 1" in res.stderr

    missing = json.loads(json.dumps(good))
    missing["metadata"]["name"] = "no-cluster"
    del missing["spec"]["cluster"]
    res = apply(k8s_cluster, ns, [missing])
    assert res.returncode != 0 and "spec.cluster: Required value" in res.stderr

    router = example_router("paris")
    router["spec"]["inference"]["routing"] = "top-everything"
    res = apply(k8s_cluster, ns, [router])
    assert res.returncode != 0
    assert "spec.inference.routing" in res.stderr and "top1|top2|topk" in res.stderr

    both = example_router("paris")
    both["spec"]["experts"]["names"] = ["digits-expert-0"]
    res = apply(k8s_cluster, ns, [both])
    assert res.returncode != 0 and "exactly one of experts.matchLabels and experts.names" in res.stderr

    time.sleep(3)  # the operator would have reacted by now
    assert list_cr(k8s_cluster, ns, "parisexperts") == [] and list_cr(k8s_cluster, ns, "parisrouters") == []
    assert k8s_cluster.batch().list_namespaced_job(ns).items == []


# ---- a missing Secret is a condition, not a crash loop ------------------------------------------------


def test_missing_secret_reports_a_condition_then_converges(
    k8s_cluster: Cluster, k8s_namespace: str, operator: Operator, minio_server: MinioServer, tmp_path: Path
) -> None:
    ns = k8s_namespace
    bucket = minio_server.make_bucket()
    prepare_dataset(minio_server, bucket, tmp_path)  # the operator fingerprints the data before a Job
    expert = example_experts(bucket)[6]  # a cpu-pool expert
    # Nowhere to run: the Job, once created, stays Pending (no trainer needed for this test).
    expert["spec"]["nodeSelector"] = {"pool": "nowhere"}
    assert apply(k8s_cluster, ns, [expert]).returncode == 0
    name = expert["metadata"]["name"]

    def pending_on_secret() -> dict[str, Any] | None:
        st = get_cr(k8s_cluster, ns, "parisexperts", name).get("status") or {}
        return st if st.get("reason") == "SecretNotReady" else None

    st = eventually(pending_on_secret, 60, "the SecretNotReady status", operator.logs)
    assert st["phase"] == "Pending"
    assert "Secret" in st["message"] and "paris-s3" in st["message"] and "not found" in st["message"]
    cond = next(c for c in st["conditions"] if c["type"] == "SecretReady")
    assert cond["status"] == "False" and cond["reason"] == "SecretNotReady"
    assert expert_jobs(k8s_cluster, ns) == [], "no Job while the credentials are missing"
    warnings = [e for e in events_for(k8s_cluster, ns, name) if e.type == "Warning"]
    assert any(e.reason == "SecretNotReady" for e in warnings)
    time.sleep(3)
    assert expert_jobs(k8s_cluster, ns) == [] and operator.proc is not None and operator.proc.alive()

    create_secret(k8s_cluster, ns, minio_server)
    jobs = eventually(lambda: expert_jobs(k8s_cluster, ns), 60, "the Job once the Secret exists", operator.logs)
    assert [j.metadata.name for j in jobs] == [f"{name}-train"]
    st = eventually(
        lambda: (
            (s := get_cr(k8s_cluster, ns, "parisexperts", name).get("status") or {}).get("reason") != "SecretNotReady"
            and s
        )
        or None,
        60,
        "the status to move on",
    )
    assert next(c for c in st["conditions"] if c["type"] == "SecretReady")["status"] == "True"


# ---- the whole run ----------------------------------------------------------------------------------


def test_digits_run_from_manifests_to_png(
    k8s_cluster: Cluster,
    k8s_namespace: str,
    minio_server: MinioServer,
    pod_runner: PodRunner,
    operator: Operator,
    tmp_path: Path,
) -> None:
    ns, cluster = k8s_namespace, k8s_cluster
    bucket = minio_server.make_bucket()
    prepare_dataset(minio_server, bucket, tmp_path)
    create_secret(cluster, ns, minio_server)
    pod_runner.env.update(pod_env(minio_server, pod_runner))

    def debug() -> str:
        return f"{cluster.kubectl('get', 'paris,jobs,pods', '-n', ns, '-o', 'wide', check=False).stdout}\n" + (
            f"{operator.logs()}\n{pod_runner.describe()}"
        )

    experts = example_experts(bucket)
    res = apply(cluster, ns, experts)
    assert res.returncode == 0, res.stderr
    pools = {d["metadata"]["name"]: d["spec"]["pool"] for d in experts}
    assert sorted(set(pools.values())) == ["a40", "cpu", "h100"]

    # Every expert's pod lands on its own pool.
    def placed() -> dict[str, str] | None:
        where = {}
        for p in cluster.core().list_namespaced_pod(ns, label_selector="app.kubernetes.io/component=expert").items:
            if p.spec.node_name:
                where[p.metadata.labels["paris.dev/expert"]] = p.spec.node_name
        return where if len(where) == len(pools) else None

    nodes = eventually(placed, 120, "every expert pod to be scheduled", debug)
    for name, node in nodes.items():
        assert node in cluster.nodes_in_pool(pools[name]), (name, node)

    # `kubectl get parisexperts` shows progress mid-run.
    def mid_run() -> tuple[str, list[str]] | None:
        out = cluster.kubectl("get", "parisexperts", "-n", ns).stdout
        for r in (ln.split() for ln in out.splitlines()[1:]):
            # NAME CLUSTER POOL PHASE PROGRESS LOSS AGE, with a loss and 0 < step < 40
            if len(r) == 7 and r[3] == "Training" and (m := re.fullmatch(r"(\d+)/40", r[4])) and 0 < int(m[1]) < 40:
                return out, r
        return None

    snapshot, row = eventually(mid_run, 600, "an expert mid-run in `kubectl get parisexperts`", debug)
    header = snapshot.splitlines()[0].split()
    assert header == ["NAME", "CLUSTER", "POOL", "PHASE", "PROGRESS", "LOSS", "AGE"], snapshot
    assert row[1].isdigit() and row[2] in ("a40", "h100", "cpu") and float(row[5]) > 0
    print(f"mid-run:\n{snapshot}")

    # Kill the operator while the experts train, start it again: no duplicate Job, no restart.
    assert len(expert_jobs(cluster, ns)) == 8
    uids = {j.metadata.name: j.metadata.uid for j in expert_jobs(cluster, ns)}
    operator.kill()
    time.sleep(2)
    operator.start()

    def all_succeeded() -> list[dict[str, Any]] | None:
        items = list_cr(cluster, ns, "parisexperts")
        if any((e.get("status") or {}).get("phase") == "Failed" for e in items):
            pytest.fail(f"an expert failed\n{debug()}")
        ok = [e for e in items if (e.get("status") or {}).get("phase") == "Succeeded"]
        return items if len(ok) == 8 else None

    done = eventually(all_succeeded, 900, "every ParisExpert to succeed", debug)
    jobs = expert_jobs(cluster, ns)
    assert {j.metadata.name: j.metadata.uid for j in jobs} == uids, "exactly the same one Job per expert"
    for e in done:
        st, k = e["status"], e["spec"]["cluster"]
        assert (st["step"], st["totalSteps"], st["progress"]) == (40, 40, "40/40")
        # Each trains into the version of its fingerprint (paris.fingerprint), named in its status.
        assert st["prefix"] == f"models/digits/experts/{k}/fp-{st['fingerprint']['digest'][:12]}"
        assert st["checkpoint"] == f"s3://{bucket}/{st['prefix']}/checkpoints/step-000040"
        assert st["observedGeneration"] == e["metadata"]["generation"]
        assert st["startTime"] and st["completionTime"] and isinstance(st["loss"], float)
        conds = {c["type"]: c["status"] for c in st["conditions"]}
        assert conds["Succeeded"] == "True" and conds["Failed"] == "False" and conds["SecretReady"] == "True"
    reasons = {ev.reason for ev in events_for(cluster, ns, "digits-expert-0")}
    assert {"JobCreated", "JobComplete"} <= reasons, reasons
    # Pods ran the real trainer, with credentials from the Secret only.
    pod = cluster.core().list_namespaced_pod(ns, label_selector="paris.dev/expert=digits-expert-5").items[0]
    proc = pod_runner.find(pod.metadata.name, ns)
    assert proc is not None and proc.exit_code == 0
    prefix5 = next(e["status"]["prefix"] for e in done if e["spec"]["cluster"] == 5)
    assert proc.argv == ["paris", "train", "expert", "--cluster", "5", "--prefix", prefix5]
    if pod_runner.runtime == "image":  # ...inside the trainer image the operator was configured with
        assert pod.spec.containers[0].image == local_images.image_ref("trainer")
        assert proc.launch[:4] == ["buildah", "run", "--isolation", "chroot"]
    assert minio_server.secret_key not in json.dumps(pod.to_dict(), default=str)

    # The router trains, publishes the pipeline and rolls out the endpoint: behind a bearer
    # token, reading the store with a read-only MinIO user.
    create_read_only_secret(cluster, ns, minio_server, bucket, "paris-s3-read")
    cluster.core().create_namespaced_secret(ns, {"metadata": {"name": "digits-token"}, "stringData": {"token": TOKEN}})
    router = example_router(bucket)
    router["spec"]["inference"].update(auth={"secretName": "digits-token"}, storageSecretName="paris-s3-read")
    res = apply(cluster, ns, [router])
    assert res.returncode == 0, res.stderr

    def ready() -> dict[str, Any] | None:
        st = get_cr(cluster, ns, "parisrouters", "digits").get("status") or {}
        if st.get("phase") == "Failed":
            pytest.fail(f"router failed: {st}\n{debug()}")
        return st if st.get("phase") == "Ready" else None

    st = eventually(ready, 900, "the ParisRouter to be Ready", debug)
    assert st["expertsReady"] == "8/8" and len(st["readyExperts"]) == 8
    assert st["endpoint"] == f"http://digits-serve.{ns}.svc.cluster.local/v1/generate"
    conds = {c["type"]: c["status"] for c in st["conditions"]}
    assert conds == {"ExpertsReady": "True", "RouterTrained": "True", "Available": "True", "Degraded": "False"}
    dep = cluster.apps().read_namespaced_deployment("digits-serve", ns)
    assert (dep.status.ready_replicas or 0) >= 1
    assert cluster.core().read_namespaced_service("digits-serve", ns).spec.ports[0].port == 80
    assert minio_server.client().stat_object(bucket, "models/digits/pipeline.json")
    router_pod = cluster.core().list_namespaced_pod(ns, label_selector="app.kubernetes.io/component=router-train")
    assert router_pod.items[0].spec.node_name in cluster.nodes_in_pool("cpu")
    out = cluster.kubectl("get", "parisrouters", "-n", ns).stdout
    assert out.split("\n")[0].split() == ["NAME", "MODEL", "EXPERTS", "PHASE", "ENDPOINT", "AGE"]
    assert "8/8" in out and "Ready" in out

    # The serve pod reads the store with the read-only user, and gets the token by reference.
    serve_pod = cluster.core().list_namespaced_pod(ns, label_selector="app.kubernetes.io/component=serve").items[0]
    env = {e.name: e for e in serve_pod.spec.containers[0].env}
    assert env["AWS_ACCESS_KEY_ID"].value_from.secret_key_ref.name == "paris-s3-read"
    assert env["PARIS_SERVE_TOKEN"].value_from.secret_key_ref.name == "digits-token" and TOKEN not in str(env)
    assert serve_pod.spec.security_context.seccomp_profile.type == "RuntimeDefault"
    assert serve_pod.spec.containers[0].security_context.read_only_root_filesystem is True

    # The OpenAI images route and the playground page, and no image without the token.
    url = pod_runner.url_for_selector("app.kubernetes.io/instance=digits,app.kubernetes.io/component=serve", ns)
    anonymous = openai.OpenAI(base_url=f"{url}/v1", api_key="not-the-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.images.generate(prompt="a handwritten digit seven")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(f"{url}/v1/generate", b'{"prompt": "p"}', JSON), timeout=60)
    assert refused.value.code == 401
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0, timeout=300)
    images = client.images.generate(model="digits", prompt="a handwritten digit seven", n=2, size="32x32",
                                    extra_body={"num_inference_steps": 4, "seed": 3, "routing": "top2"})
    assert images.data is not None and len(images.data) == 2
    assert Image.open(io.BytesIO(base64.b64decode(images.data[0].b64_json or ""))).size == (32, 32)
    assert len((images.data[0].model_extra or {})["expert_usage"]) == 8
    with urllib.request.urlopen(f"{url}/", timeout=30) as r:
        assert "paris playground" in r.read().decode()

    # A generated PNG from the endpoint.
    body = json.dumps({"prompt": "a handwritten digit seven", "count": 4, "size": 32, "steps": 4, "seed": 1})
    req = urllib.request.Request(f"{url}/v1/generate", body.encode(), AUTH)
    with urllib.request.urlopen(req, timeout=300) as r:
        assert r.headers["Content-Type"] == "image/png"
        png = r.read()
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size[0] > 4 * 32
    one = json.dumps({"prompt": "a handwritten digit two", "format": "json", "routing": "top1", "steps": 4})
    req = urllib.request.Request(f"{url}/v1/generate", one.encode(), AUTH)
    with urllib.request.urlopen(req, timeout=300) as r:
        answer = json.loads(r.read())
    assert Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))).size == (8, 8)
    assert answer["routing"] == "top1" and len(answer["usage"]) == 8
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as r:
        assert "paris_images_generated_total 7.0" in r.read().decode()

    # A spec change is a new generation: an inference-only change rolls the Deployment, with
    # no new router training.
    train_jobs = {j.metadata.name for j in cluster.batch().list_namespaced_job(ns).items}
    patch = {"spec": {"inference": {"routing": "top1"}}}
    custom(cluster).patch_namespaced_custom_object(GROUP, VERSION, ns, "parisrouters", "digits", patch)

    def rolled_out() -> dict[str, Any] | None:
        st = get_cr(cluster, ns, "parisrouters", "digits").get("status") or {}
        return st if st.get("observedGeneration") == 2 and st.get("phase") == "Ready" else None

    eventually(rolled_out, 600, "generation 2 to roll out", debug)
    assert {j.metadata.name for j in cluster.batch().list_namespaced_job(ns).items} == train_jobs
    url = pod_runner.url_for_selector("app.kubernetes.io/instance=digits,app.kubernetes.io/component=serve", ns)
    req = urllib.request.Request(f"{url}/v1/generate", b'{"prompt": "a digit", "steps": 2}', AUTH)
    with urllib.request.urlopen(req, timeout=300) as r:
        assert r.headers["X-Paris-Routing"] == "top1", "the new default from generation 2"

    # Deleting the router cascades to its children; the artifacts stay in the store.
    custom(cluster).delete_namespaced_custom_object(GROUP, VERSION, ns, "parisrouters", "digits")

    def children_gone() -> bool:
        try:
            cluster.apps().read_namespaced_deployment("digits-serve", ns)
            return False
        except ApiException as e:
            if e.status != 404:
                raise
        left = cluster.batch().list_namespaced_job(ns, label_selector="paris.dev/router=digits").items
        return not left

    eventually(children_gone, 120, "the router's Deployment and Job to be garbage-collected", debug)
    assert minio_server.client().stat_object(bucket, "models/digits/pipeline.json")
    prefix3 = get_cr(cluster, ns, "parisexperts", "digits-expert-3")["status"]["prefix"]
    assert minio_server.client().stat_object(bucket, f"{prefix3}/latest.json")


# ---- Kueue admission and TTL cleanup -----------------------------------------------------------


KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def test_a_queued_expert_waits_for_admission_then_outlives_its_cleaned_up_job(
    k8s_cluster: Cluster,
    k8s_namespace: str,
    minio_server: MinioServer,
    pod_runner: PodRunner,
    operator: Operator,
    tmp_path: Path,
) -> None:
    """Kueue's side is played by the test (Kueue cannot be built here): the Job waits suspended
    with the queue label; unsuspending it, as Kueue's admission does, lets the real Job
    controller start the trainer. The real TTL controller then deletes the finished Job and
    its pods, and the ParisExpert's status keeps the outcome, loss, checkpoint and times."""
    ns, cluster = k8s_namespace, k8s_cluster
    bucket = minio_server.make_bucket()
    prepare_dataset(minio_server, bucket, tmp_path)
    create_secret(cluster, ns, minio_server)
    pod_runner.env.update(pod_env(minio_server, pod_runner))
    expert = example_experts(bucket, steps=4)[6]  # a cpu-pool expert, cluster 6
    expert["spec"].update(queueName="team-a", ttlSecondsAfterFinished=3)
    name, job_name = expert["metadata"]["name"], f"{expert['metadata']['name']}-train"

    def debug() -> str:
        return cluster.kubectl("get", "paris,jobs,pods", "-n", ns, "-o", "wide", check=False).stdout + operator.logs()

    def status() -> dict[str, Any]:
        return get_cr(cluster, ns, "parisexperts", name).get("status") or {}

    assert apply(cluster, ns, [expert]).returncode == 0
    st = eventually(lambda: status().get("phase") == "Queued" and status(), 60, "the Queued status", debug)
    job = cluster.batch().read_namespaced_job(job_name, ns)
    assert job.spec.suspend is True and job.metadata.labels[KUEUE_QUEUE_LABEL] == "team-a"
    assert job.spec.ttl_seconds_after_finished == 3
    admitted = next(c for c in st["conditions"] if c["type"] == "Admitted")
    assert (admitted["status"], admitted["reason"]) == ("False", "Queued") and "team-a" in st["message"]
    out = cluster.kubectl("get", "parisexperts", "-n", ns, "-o", "wide").stdout
    assert "Queued" in out and "team-a" in out, out
    time.sleep(3)
    pods = cluster.core().list_namespaced_pod(ns, label_selector=f"job-name={job_name}").items
    assert not pods, "no pod while queued"

    # Admission: Kueue unsuspends the Job; the real Job controller takes it from there.
    cluster.batch().patch_namespaced_job(job_name, ns, {"spec": {"suspend": False}})
    st = eventually(lambda: status().get("phase") == "Succeeded" and status(), 600, "the expert to succeed", debug)
    admitted = next(c for c in st["conditions"] if c["type"] == "Admitted")
    assert (admitted["status"], admitted["reason"]) == ("True", "Admitted")

    # Cleanup: the real TTL controller deletes the finished Job, and the pods go with it.
    def job_gone() -> bool:
        try:
            cluster.batch().read_namespaced_job(job_name, ns)
            return False
        except ApiException as e:
            if e.status != 404:
                raise
            return True

    eventually(job_gone, 120, "the TTL controller to delete the finished Job", debug)
    eventually(
        lambda: not cluster.core().list_namespaced_pod(ns, label_selector=f"job-name={job_name}").items,
        60,
        "the Job's pods to go",
        debug,
    )
    time.sleep(4)  # several operator polls with the Job gone
    st = status()
    assert (st["phase"], st["reason"], st["jobName"]) == ("Succeeded", "JobComplete", job_name)
    assert st["checkpoint"] == f"s3://{bucket}/{st['prefix']}/checkpoints/step-000004"
    assert isinstance(st["loss"], float) and st["progress"] == "4/4"
    assert st["startTime"] and st["completionTime"] and st["finishedJob"]["name"] == job_name
    assert not cluster.batch().list_namespaced_job(ns).items, "a cleaned-up Job is not run again"


def test_the_chart_with_its_store_is_accepted_by_the_api_server(k8s_cluster: Cluster, k8s_namespace: str) -> None:
    """`helm install --set minio.enabled=true`, rendered and checked by the real apiserver
    (server-side dry run: every field of the StatefulSet, Service, Secret and Jobs)."""
    argv = [binary("helm"), "template", "paris", str(REPO / "charts" / "paris"), "--namespace", k8s_namespace]
    argv += ["--kube-version", k8s_cluster.version.lstrip("v"), "--set", "minio.enabled=true"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = {d["kind"] for d in docs}
    assert {"StatefulSet", "Service", "Secret", "Job", "Deployment"} <= kinds, kinds
    res = k8s_cluster.kubectl(
        "apply", "--dry-run=server", "-n", k8s_namespace, "-f", "-", input="---\n".join(yaml.safe_dump(d) for d in docs)
    )
    assert "statefulset.apps/paris-minio created (server dry run)" in res.stdout, res.stdout
