"""The Helm chart lints, renders the operator with least-privilege RBAC, carries the
generated CRDs, and passes its values to the operator as valid OperatorSettings."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from paris.config import OperatorSettings
from tests.servers.procs import binary

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "paris"
KUBE_VERSION = "1.34.0"


def helm(*args: str) -> str:
    res = subprocess.run([binary("helm"), *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout


def render(*sets: str) -> list[dict[str, Any]]:
    argv = ["template", "rel", str(CHART), "--namespace", "paris-system", "--kube-version", KUBE_VERSION]
    for s in sets:
        argv += ["--set", s]
    return [d for d in yaml.safe_load_all(helm(*argv, "--include-crds")) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_helm_lint() -> None:
    out = helm("lint", str(CHART), "--kube-version", KUBE_VERSION, "--strict")
    assert "0 chart(s) failed" in out


def test_renders_crds_operator_and_rbac() -> None:
    docs = render()
    assert {d["metadata"]["name"] for d in by_kind(docs, "CustomResourceDefinition")} == {
        "parisexperts.paris.dev",
        "parisrouters.paris.dev",
        "parisdatasets.paris.dev",
    }
    (dep,) = by_kind(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"][:4] == ["kopf", "run", "-m", "paris.operator"]
    assert "--all-namespaces" in c["command"] and "--standalone" in c["command"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    (sa,) = by_kind(docs, "ServiceAccount")
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    (binding,) = by_kind(docs, "ClusterRoleBinding")
    assert binding["subjects"][0] == {
        "kind": "ServiceAccount",
        "name": sa["metadata"]["name"],
        "namespace": "paris-system",
    }


def test_settings_from_values_are_valid() -> None:
    (dep,) = by_kind(render("storage.endpoint=s3.example:9000", "pollSeconds=3", "trainerImage.tag=v9"), "Deployment")
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    s = OperatorSettings.model_validate(yaml.safe_load(env["PARIS_OPERATOR_CONFIG"]))
    assert s.s3_endpoint == "s3.example:9000" and s.poll_seconds == 3
    assert s.trainer_image == "ghcr.io/paris-dev/paris-trainer:v9"
    assert set(s.pools) == {"a40", "h100", "cpu"}
    assert s.pools["a40"].tolerations[0].key == "nvidia.com/gpu"


def rules(docs: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    (role,) = by_kind(docs, "ClusterRole")
    out: dict[tuple[str, str], set[str]] = {}
    for r in role["rules"]:
        for g in r["apiGroups"]:
            for res in r["resources"]:
                out.setdefault((g, res), set()).update(r["verbs"])
    return out


def test_rbac_is_least_privilege() -> None:
    r = rules(render())
    assert r[("paris.dev", "parisexperts/status")] >= {"patch"}
    assert r[("batch", "jobs")] >= {"create", "get", "list", "watch"}
    assert r[("apps", "deployments")] >= {"create", "get", "update"}
    assert r[("", "services")] >= {"create", "get"}
    assert r[("", "pods")] == {"get", "list", "watch"}, "pods: read only"
    assert r[("", "secrets")] == {"get"}, "secrets: get only, never list"
    assert r[("", "events")] == {"create"}
    for key, verbs in r.items():
        assert "*" not in verbs and key[1] != "*", key
    assert not {k for k in r if k[0] == "kopf.dev"}, "no peering rights without peering"
    assert ("kopf.dev", "clusterkopfpeerings") in rules(render("peering.enabled=true"))


def test_namespaced_watch_and_secret_creation() -> None:
    docs = render(
        "watch.allNamespaces=false",
        "watch.namespaces={team-a,team-b}",
        "storage.createSecret=true",
        "storage.accessKey=ak",
        "storage.secretKey=sk",
    )
    (dep,) = by_kind(docs, "Deployment")
    cmd = dep["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--namespace=team-a" in cmd and "--namespace=team-b" in cmd and "--all-namespaces" not in cmd
    (secret,) = by_kind(docs, "Secret")
    assert secret["stringData"] == {"AWS_ACCESS_KEY_ID": "ak", "AWS_SECRET_ACCESS_KEY": "sk"}


def test_every_top_level_value_is_commented() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if line and line[0].isalpha() and ":" in line:
            assert lines[i - 1].startswith("#"), f"values.yaml:{i + 1} {line!r} has no comment above it"


@pytest.mark.parametrize("image", ["trainer", "operator"])
def test_images_run_as_non_root(image: str) -> None:
    text = (REPO / "images" / image / "Dockerfile").read_text()
    users = [ln.split()[1] for ln in text.splitlines() if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root") and users[-1].split(":")[0].isdigit()
    entry = next(ln for ln in text.splitlines() if ln.startswith("ENTRYPOINT"))
    # The dependencies come from the image's own extra of pyproject.toml (the requirements stage);
    # tests/e2e/test_images.py checks what the built images really contain.
    extras = re.findall(r"\['optional-dependencies'\]\['(\w+)'\]", text)
    assert "pip install" in text and extras == [image]
    if image == "trainer":
        assert entry == 'ENTRYPOINT ["paris"]'
    else:
        assert entry == 'ENTRYPOINT ["kopf", "run", "-m", "paris.operator"]'


def settings_of(docs: list[dict[str, Any]]) -> OperatorSettings:
    (dep,) = by_kind(docs, "Deployment")
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    return OperatorSettings.model_validate(yaml.safe_load(env["PARIS_OPERATOR_CONFIG"]))


def env_of(pod_spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in pod_spec["containers"][0]["env"]}


def test_the_store_is_off_by_default() -> None:
    docs = render()
    assert not by_kind(docs, "StatefulSet") and not by_kind(docs, "Service") and not by_kind(docs, "Secret")
    s = settings_of(docs)
    assert (s.s3_endpoint, s.credentials_secret) == ("minio.minio.svc.cluster.local:9000", "paris-s3")


def test_one_value_installs_the_store_and_the_operator_follows_it() -> None:
    docs = render("minio.enabled=true")
    (sts,) = by_kind(docs, "StatefulSet")
    (svc,) = by_kind(docs, "Service")
    (secret,) = by_kind(docs, "Secret")
    (job,) = [d for d in by_kind(docs, "Job")]
    ns = "paris-system"

    pod = sts["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert server["image"].startswith("quay.io/minio/minio:RELEASE.")
    assert server["command"][:3] == ["minio", "server", "/data"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert {"name": "data", "mountPath": "/data"} in server["volumeMounts"]

    # The Service reaches the server's pods (and not the bucket Job's), on the S3 port.
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert sts["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    assert not svc["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert {"name": "s3", "port": 9000, "targetPort": "s3", "protocol": "TCP"} in svc["spec"]["ports"]

    # One Secret holds the root credentials MinIO starts with and the keys paris pods read.
    assert secret["metadata"]["namespace"] == ns
    keys = secret["stringData"]
    assert len(keys["AWS_ACCESS_KEY_ID"]) >= 3 and len(keys["AWS_SECRET_ACCESS_KEY"]) >= 8
    env = env_of(pod)
    for var, key in (("MINIO_ROOT_USER", "AWS_ACCESS_KEY_ID"), ("MINIO_ROOT_PASSWORD", "AWS_SECRET_ACCESS_KEY")):
        assert env[var]["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": key}

    # The bucket Job talks to that Service with those keys, after install and upgrade.
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    script = job["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    assert f"http://{svc['metadata']['name']}:9000" in script and "mc mb --ignore-existing" in script
    assert "store/paris" in script
    job_env = env_of(job["spec"]["template"]["spec"])
    assert job_env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]

    # The operator's defaults point every resource at this store.
    s = settings_of(docs)
    assert s.s3_endpoint == f"{svc['metadata']['name']}.{ns}.svc.cluster.local:9000"
    assert s.credentials_secret == secret["metadata"]["name"]


def test_the_store_can_use_a_secret_the_user_names() -> None:
    docs = render("minio.enabled=true", "minio.existingSecret=my-keys")
    assert not by_kind(docs, "Secret"), "the chart creates no Secret when one is named"
    (sts,) = by_kind(docs, "StatefulSet")
    ref = env_of(sts["spec"]["template"]["spec"])["MINIO_ROOT_USER"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == "my-keys" and settings_of(docs).credentials_secret == "my-keys"


def test_the_credentials_reach_every_namespace_named_with_the_same_keys() -> None:
    docs = render("minio.enabled=true", "storage.secretNamespaces={team-a,team-b}", "storage.accessKey=ak")
    secrets = {d["metadata"]["namespace"]: d["stringData"] for d in by_kind(docs, "Secret")}
    assert set(secrets) == {"paris-system", "team-a", "team-b"}
    assert len({tuple(sorted(v.items())) for v in secrets.values()}) == 1
    assert secrets["team-a"]["AWS_ACCESS_KEY_ID"] == "ak"


def test_helm_lint_with_the_store() -> None:
    out = helm("lint", str(CHART), "--kube-version", KUBE_VERSION, "--strict", "--set", "minio.enabled=true")
    assert "0 chart(s) failed" in out


def test_finished_jobs_are_cleaned_up_after_a_day_by_default() -> None:
    assert settings_of(render()).ttl_seconds_after_finished == 86400
    assert settings_of(render("ttlSecondsAfterFinished=600")).ttl_seconds_after_finished == 600
    assert settings_of(render("ttlSecondsAfterFinished=null")).ttl_seconds_after_finished is None


def test_no_network_policy_unless_asked() -> None:
    assert not by_kind(render(), "NetworkPolicy")


def test_the_network_policy_admits_only_the_operators_namespace_and_the_listed_clients() -> None:
    docs = render("networkPolicy.enabled=true", "networkPolicy.namespaces={team-a,team-b}",
                  "networkPolicy.clients[0].namespaceSelector.matchLabels.team=web",
                  "networkPolicy.clients[1].ipBlock.cidr=10.1.0.0/16")
    policies = {d["metadata"]["namespace"]: d["spec"] for d in by_kind(docs, "NetworkPolicy")}
    assert set(policies) == {"team-a", "team-b"}
    spec = policies["team-a"]
    assert spec["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "paris",
                                                  "app.kubernetes.io/component": "serve",
                                                  "app.kubernetes.io/managed-by": "paris-operator"}
    assert spec["policyTypes"] == ["Ingress"] and len(spec["ingress"]) == 1
    rule = spec["ingress"][0]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "paris-system"}}},
        {"namespaceSelector": {"matchLabels": {"team": "web"}}},
        {"ipBlock": {"cidr": "10.1.0.0/16"}},
    ]
    assert rule["ports"] == [{"protocol": "TCP", "port": "http"}]
    (default,) = by_kind(render("networkPolicy.enabled=true"), "NetworkPolicy")
    assert default["metadata"]["namespace"] == "paris-system"


def test_serve_pods_can_get_a_read_only_credential_by_default() -> None:
    assert settings_of(render()).serve_credentials_secret is None
    settings = settings_of(render("storage.serveCredentialsSecret=paris-s3-read"))
    assert settings.serve_credentials_secret == "paris-s3-read"
