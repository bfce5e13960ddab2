"""The reconcile loops against an in-memory API: create-or-get makes re-running harmless
(the restart case), a missing Secret creates nothing, a new spec generation replaces the Job,
the router waits for its experts and then creates its children once."""

from __future__ import annotations

import copy
from typing import Any

import kopf
import pytest
import yaml

from paris.operator import builders, handlers

from .conftest import expert_body, router_body


class FakeKube:
    """Just the calls handlers make; objects are dicts keyed by (kind, namespace, name)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        self.experts: list[dict[str, Any]] = []
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.conflicts = 0

    def get(self, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((kind, ns, name))
        return copy.deepcopy(obj) if obj else None

    def create_or_get(self, obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        if key in self.objects:
            self.conflicts += 1  # what a 409 would be
            return copy.deepcopy(self.objects[key]), False
        stored = copy.deepcopy(obj)
        stored["metadata"]["resourceVersion"] = "1"
        self.objects[key] = stored
        self.created.append(f"{obj['kind']}/{obj['metadata']['name']}")
        return copy.deepcopy(stored), True

    def replace(self, obj: dict[str, Any], resource_version: str) -> dict[str, Any]:
        stored = copy.deepcopy(obj)
        stored["metadata"]["resourceVersion"] = str(int(resource_version) + 1)
        self.objects[(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])] = stored
        return copy.deepcopy(stored)

    def delete(self, kind: str, ns: str, name: str) -> None:
        self.objects.pop((kind, ns, name), None)
        self.deleted.append(f"{kind}/{name}")

    def read_secret_keys(self, ns: str, name: str, keys: tuple[str, ...]) -> tuple[dict[str, str] | None, str | None]:
        data = self.secrets.get((ns, name))
        if data is None:
            return None, f"Secret {ns}/{name} not found"
        return {k: data[k] for k in keys}, None

    def list_pods(self, ns: str, selector: str) -> list[dict[str, Any]]:
        return []

    def list_jobs(self, ns: str, selector: str) -> list[dict[str, Any]]:
        key, _, value = selector.partition("=")
        return [o for (k, n, _), o in self.objects.items() if k == "Job" and o["metadata"]["labels"].get(key) == value]

    def list_experts(self, ns: str, selector: str | None = None) -> list[dict[str, Any]]:
        return self.experts


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch) -> FakeKube:
    fake = FakeKube()
    monkeypatch.setattr(handlers, "kube", fake)
    monkeypatch.setattr(handlers, "expert_progress", lambda *a, **k: ({"step": 3, "total": 30, "loss": 0.5}, None))
    events: list[tuple[str, str]] = []
    monkeypatch.setattr(kopf, "event", lambda body, type, reason, message="": events.append((type, reason)))
    fake.events = events  # type: ignore[attr-defined]
    return fake


def reconcile(fn: Any, body: dict[str, Any]) -> dict[str, Any]:
    """Run one reconcile and apply its status patch to the body, as the API would."""
    patch = kopf.Patch()
    fn(body, patch)
    body.setdefault("status", {}).update(patch.get("status", {}))
    return body["status"]


def test_expert_job_is_created_once(kube: FakeKube) -> None:
    kube.secrets[("ns1", "paris-s3")] = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s"}
    body = expert_body()
    st = reconcile(handlers.reconcile_expert, body)
    assert kube.created == ["Job/digits-expert-3-train"]
    assert st["jobName"] == "digits-expert-3-train" and st["step"] == 3
    # A restarted operator reconciles the same resource again: nothing new.
    for _ in range(3):
        reconcile(handlers.reconcile_expert, copy.deepcopy(body))
    assert kube.created == ["Job/digits-expert-3-train"] and kube.deleted == []


def test_missing_secret_creates_nothing(kube: FakeKube) -> None:
    body = expert_body()
    st = reconcile(handlers.reconcile_expert, body)
    assert kube.created == [] and st["reason"] == "SecretNotReady"
    assert ("Warning", "SecretNotReady") in kube.events  # type: ignore[attr-defined]
    kube.secrets[("ns1", "paris-s3")] = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s"}
    reconcile(handlers.reconcile_expert, body)
    assert kube.created == ["Job/digits-expert-3-train"]


def test_new_generation_replaces_the_job(kube: FakeKube) -> None:
    kube.secrets[("ns1", "paris-s3")] = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s"}
    body = expert_body()
    reconcile(handlers.reconcile_expert, body)
    body["spec"]["train"]["steps"] = 60
    body["metadata"]["generation"] = 2
    reconcile(handlers.reconcile_expert, body)
    assert kube.deleted == ["Job/digits-expert-3-train"], "the old Job goes first"
    st = reconcile(handlers.reconcile_expert, body)
    job = kube.get("Job", "ns1", "digits-expert-3-train")
    assert job is not None and job["metadata"]["annotations"][builders.GENERATION] == "2"
    assert "steps: 60" in job["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"]
    assert st["observedGeneration"] == 2 and st["totalSteps"] == 60
    reconcile(handlers.reconcile_expert, body)
    assert len(kube.deleted) == 1


def test_invalid_spec_is_reported(kube: FakeKube) -> None:
    body = expert_body()
    del body["spec"]["cluster"]
    st = reconcile(handlers.reconcile_expert, body)
    assert st["phase"] == "Failed" and st["reason"] == "InvalidSpec" and "cluster" in st["message"]
    assert kube.created == []


def test_router_waits_trains_then_serves(kube: FakeKube) -> None:
    kube.secrets[("ns1", "paris-s3")] = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s"}
    body = router_body(storage={"uri": "s3://paris", "secretName": "paris-s3"})
    kube.experts = [{"metadata": {"name": f"e{i}"}, "status": {"phase": "Training"}} for i in range(8)]
    st = reconcile(handlers.reconcile_router, body)
    assert st["phase"] == "Pending" and st["expertsReady"] == "0/8" and kube.created == []

    for e in kube.experts:
        e["status"]["phase"] = "Succeeded"
    st = reconcile(handlers.reconcile_router, body)
    (job_name,) = [c.removeprefix("Job/") for c in kube.created]
    assert st["phase"] == "Training" and st["trainJob"] == job_name

    kube.objects[("Job", "ns1", job_name)]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    st = reconcile(handlers.reconcile_router, body)
    assert kube.created[1:] == ["Service/digits-serve", "Deployment/digits-serve"]
    assert st["phase"] == "Deploying" and st["endpoint"].startswith("http://digits-serve.ns1.svc")

    dep = kube.objects[("Deployment", "ns1", "digits-serve")]
    dep["status"] = {"replicas": 1, "updatedReplicas": 1, "readyReplicas": 1}
    st = reconcile(handlers.reconcile_router, body)
    assert st["phase"] == "Ready"

    # Inference-only change: same training Job, the Deployment is replaced in place.
    body["spec"]["inference"]["routing"] = "full"
    body["metadata"]["generation"] = 2
    reconcile(handlers.reconcile_router, body)
    dep = kube.objects[("Deployment", "ns1", "digits-serve")]
    assert "- full" in dep["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"]
    assert [c for c in kube.created if c.startswith("Job/")] == [f"Job/{job_name}"]

    # Router-config change: a new training Job; the old one is removed once the new one is done.
    body["spec"]["router"]["train"]["steps"] = 60
    body["metadata"]["generation"] = 3
    st = reconcile(handlers.reconcile_router, body)
    jobs = [c for c in kube.created if c.startswith("Job/")]
    assert len(jobs) == 2 and st["phase"] == "Training" and st["observedGeneration"] == 3
    new = jobs[1].removeprefix("Job/")
    kube.objects[("Job", "ns1", new)]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    reconcile(handlers.reconcile_router, body)
    assert f"Job/{job_name}" in kube.deleted
    pipeline = kube.objects[("Deployment", "ns1", "digits-serve")]["spec"]["template"]["metadata"]["annotations"]
    assert pipeline[f"{builders.API_GROUP}/pipeline"] == new


def test_progress_is_read_with_the_storage_config_the_builders_make(
    kube: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One StorageConfig per resource: the one builders.storage_config makes for the pod's
    PARIS_CONFIG is the one the operator reads progress.json with."""
    made: list[Any] = []
    real = builders.storage_config

    def spy(*args: Any) -> Any:
        made.append(real(*args))
        return made[-1]

    read: list[Any] = []

    def progress(cfg: Any, *args: Any) -> tuple[None, None]:
        read.append(cfg)
        return None, None

    monkeypatch.setattr(builders, "storage_config", spy)
    monkeypatch.setattr(handlers, "expert_progress", progress)
    kube.secrets[("ns1", "paris-s3")] = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s"}
    reconcile(handlers.reconcile_expert, expert_body())
    assert read and any(cfg is m for cfg in read for m in made)
    job = kube.get("Job", "ns1", "digits-expert-3-train")
    assert job is not None
    pod_cfg = yaml.safe_load(job["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"])
    assert read[0].model_dump(mode="json") == pod_cfg["storage"]


def test_a_job_cleaned_up_after_it_finished_is_not_run_again(kube: FakeKube) -> None:
    kube.secrets[("ns1", "paris-s3")] = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s"}
    body = expert_body(ttlSecondsAfterFinished=60)
    reconcile(handlers.reconcile_expert, body)
    key = ("Job", "ns1", "digits-expert-3-train")
    kube.objects[key]["status"] = {"conditions": [{"type": "Complete", "status": "True"}], "completionTime": "T9"}
    st = reconcile(handlers.reconcile_expert, body)
    assert st["phase"] == "Succeeded" and st["loss"] == 0.5
    del kube.objects[key]  # the TTL controller's doing
    for _ in range(3):
        st = reconcile(handlers.reconcile_expert, body)
    assert kube.created == ["Job/digits-expert-3-train"], "no second Job for the same spec"
    assert (st["phase"], st["jobName"], st["completionTime"], st["loss"]) == (
        "Succeeded", "digits-expert-3-train", "T9", 0.5
    )
    # A new spec is new work: a new Job.
    body["spec"]["train"]["steps"] = 60
    body["metadata"]["generation"] = 2
    reconcile(handlers.reconcile_expert, body)
    assert kube.created == ["Job/digits-expert-3-train"] * 2


def test_a_finished_training_whose_job_nobody_saw_is_not_run_again(
    kube: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator was away while the Job ended and was deleted: progress.json decides."""
    kube.secrets[("ns1", "paris-s3")] = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s"}
    done = {"step": 30, "total": 30, "loss": 0.25, "state": "done"}
    monkeypatch.setattr(handlers, "expert_progress", lambda *a, **k: (done, "s3://paris/ck"))
    st = reconcile(handlers.reconcile_expert, expert_body())
    assert kube.created == [] and (st["phase"], st["reason"]) == ("Succeeded", "TrainingDone")
    assert st["checkpoint"] == "s3://paris/ck" and st["loss"] == 0.25


def test_a_router_keeps_serving_after_its_training_job_is_cleaned_up(kube: FakeKube) -> None:
    kube.secrets[("ns1", "paris-s3")] = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s"}
    body = router_body(storage={"uri": "s3://paris", "secretName": "paris-s3"}, queueName="team-a")
    kube.experts = [{"metadata": {"name": f"e{i}"}, "status": {"phase": "Succeeded"}} for i in range(8)]
    st = reconcile(handlers.reconcile_router, body)
    (job_name,) = [c.removeprefix("Job/") for c in kube.created]
    job = kube.objects[("Job", "ns1", job_name)]
    assert job["spec"]["suspend"] is True and st["phase"] == "Queued"
    job["spec"]["suspend"] = False  # Kueue admits it
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    st = reconcile(handlers.reconcile_router, body)
    assert st["phase"] == "Deploying" and st["finishedJob"]["name"] == job_name
    del kube.objects[("Job", "ns1", job_name)]
    kube.objects[("Deployment", "ns1", "digits-serve")]["status"] = {
        "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1
    }
    st = reconcile(handlers.reconcile_router, body)
    assert st["phase"] == "Ready" and st["trainJob"] == job_name
    assert [c for c in kube.created if c.startswith("Job/")] == [f"Job/{job_name}"], "not trained again"
    # An inference change still rolls out without the Job.
    body["spec"]["inference"]["routing"] = "full"
    body["metadata"]["generation"] = 2
    reconcile(handlers.reconcile_router, body)
    dep = kube.objects[("Deployment", "ns1", "digits-serve")]
    assert "- full" in dep["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"]
