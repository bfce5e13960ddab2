"""The reconcile loops against an in-memory API: create-or-get makes re-running harmless
(the restart case), a missing Secret creates nothing, a new spec generation replaces the Job
(in the foreground: the successor waits until the old one is gone), objects of someone else
are left alone, duplicates are refused, and the router trains over exactly its experts."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from paris.operator import builders, handlers
from paris.operator.claims import Claim, claim_of
from paris.operator.progress import ExpertProgress

from .conftest import expert_body, router_body


class FakeKube:
    """Just the calls handlers make; objects are dicts keyed by (kind, namespace, name)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        self.experts: list[dict[str, Any]] = []
        self.pods: list[dict[str, Any]] = []
        self.manifest: dict[str, Any] | None = manifest()
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
        stored["metadata"]["uid"] = f"uid-{len(self.created)}-{obj['metadata']['name']}"
        self.objects[key] = stored
        self.created.append(f"{obj['kind']}/{obj['metadata']['name']}")
        return copy.deepcopy(stored), True

    def replace(self, obj: dict[str, Any], resource_version: str) -> dict[str, Any]:
        stored = copy.deepcopy(obj)
        stored["metadata"]["resourceVersion"] = str(int(resource_version) + 1)
        self.objects[(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])] = stored
        return copy.deepcopy(stored)

    def delete(self, kind: str, ns: str, name: str, uid: str) -> None:
        """Foreground deletion: the object stays, marked, until gc() (its pods going) removes it."""
        obj = self.objects.get((kind, ns, name))
        if obj is None or obj["metadata"].get("uid") != uid:
            return  # gone, or a namesake: the uid precondition protects it
        obj["metadata"]["deletionTimestamp"] = "now"
        self.deleted.append(f"{kind}/{name}")

    def gc(self) -> None:
        for key in [k for k, o in self.objects.items() if o["metadata"].get("deletionTimestamp")]:
            del self.objects[key]

    def read_secret_keys(self, ns: str, name: str, keys: tuple[str, ...]) -> tuple[dict[str, str] | None, str | None]:
        data = self.secrets.get((ns, name))
        if data is None:
            return None, f"Secret {ns}/{name} not found"
        return {k: data[k] for k in keys}, None

    def list_pods(self, ns: str, selector: str) -> list[dict[str, Any]]:
        return [p for p in self.pods if _matches(p, selector)]

    def list_jobs(self, ns: str, selector: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (k, _, _), o in self.objects.items() if k == "Job" and _matches(o, selector)]

    def list_experts(self, ns: str, selector: str | None = None) -> list[dict[str, Any]]:
        return self.experts

    def get_dataset(self, ns: str, name: str) -> dict[str, Any] | None:
        return self.get("ParisDataset", ns, name)


def manifest(again: bool = False) -> dict[str, Any]:
    """A prepared dataset's manifest: 8 clusters, one part each."""
    sha = "b" if again else "a"
    clusters = [{"id": k, "size": 10, "shards": [{"key": f"p{k}", "sha256": sha * 64}]} for k in range(8)]
    return {"name": "digits", "num_clusters": 8, "latent": {"size": 8}, "text": {"dim": 384}, "clusters": clusters}


def _matches(obj: dict[str, Any], selector: str) -> bool:
    have = obj["metadata"].get("labels") or {}
    return all(have.get(k) == v for k, _, v in (term.partition("=") for term in selector.split(",")))


def ready_expert(i: int, phase: str = "Succeeded", **spec: Any) -> dict[str, Any]:
    """ParisExpert e<i> for cluster i, with the status the operator gave it."""
    body = expert_body(name=f"e{i}", cluster=i, storage={"uri": "s3://paris", "secretName": "paris-s3"}, **spec)
    body["status"] = {"phase": phase, "observedGeneration": 1, "message": "it broke" if phase == "Failed" else ""}
    return body


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch) -> FakeKube:
    fake = FakeKube()
    monkeypatch.setattr(handlers, "kube", fake)
    monkeypatch.setattr(
        handlers, "expert_progress", lambda *a, **k: ExpertProgress({"step": 3, "total": 30, "loss": 0.5})
    )
    # The prepared dataset every resource trains on (its checksum versions the prefixes).
    monkeypatch.setattr(handlers, "dataset_manifest", lambda *a, **k: fake.manifest)
    events: list[tuple[str, str]] = []
    monkeypatch.setattr(kopf, "event", lambda body, type, reason, message="": events.append((type, reason)))
    fake.messages = []  # type: ignore[attr-defined]
    fake.events = events  # type: ignore[attr-defined]
    return fake


def reconcile(fn: Any, body: dict[str, Any], *args: Any) -> dict[str, Any]:
    """Run one reconcile and apply its status patch to the body, as the API would. An expert
    is reconciled with the claims index holding it alone unless `args` say otherwise."""
    patch = kopf.Patch()
    if fn is handlers.reconcile_expert and not args:
        args = (claims(body),)
    fn(body, patch, *args)
    body.setdefault("status", {}).update(patch.get("status", {}))
    return body["status"]


def claims(*bodies: dict[str, Any]) -> dict[Any, list[Claim]]:
    """What kopf's index of ParisExperts would hold for these bodies."""
    index: dict[Any, list[Claim]] = {}
    for b in bodies:
        for key, claim in (claim_of(b, handlers.SETTINGS) or {}).items():
            index.setdefault(key, []).append(claim)
    return index


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
    st = reconcile(handlers.reconcile_expert, body)
    assert kube.deleted == ["Job/digits-expert-3-train"], "the old Job goes first"
    assert st["reason"] == "ReplacingJob"
    # Deleted in the foreground: while the old Job (or a pod of it) is still there, no successor.
    st = reconcile(handlers.reconcile_expert, body)
    assert (st["phase"], st["reason"]) == ("Pending", "ReplacingJob") and kube.created == ["Job/digits-expert-3-train"]
    kube.gc()
    kube.pods = [{"metadata": {"name": "old-pod", "labels": {"job-name": "digits-expert-3-train"}}}]
    st = reconcile(handlers.reconcile_expert, body)
    assert st["reason"] == "ReplacingJob" and "1 pod(s)" in st["message"] and len(kube.created) == 1
    kube.pods = []
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
    kube.experts = [ready_expert(i, "Training") for i in range(8)]
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

    def progress(cfg: Any, *args: Any) -> ExpertProgress:
        read.append(cfg)
        return ExpertProgress()

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
        "Succeeded",
        "digits-expert-3-train",
        "T9",
        0.5,
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
    monkeypatch.setattr(handlers, "expert_progress", lambda *a, **k: ExpertProgress(done, "s3://paris/ck"))
    st = reconcile(handlers.reconcile_expert, expert_body())
    assert kube.created == [] and (st["phase"], st["reason"]) == ("Succeeded", "TrainingDone")
    assert st["checkpoint"] == "s3://paris/ck" and st["loss"] == 0.25


def test_a_router_keeps_serving_after_its_training_job_is_cleaned_up(kube: FakeKube) -> None:
    kube.secrets[("ns1", "paris-s3")] = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s"}
    body = router_body(storage={"uri": "s3://paris", "secretName": "paris-s3"}, queueName="team-a")
    kube.experts = [ready_expert(i) for i in range(8)]
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
        "replicas": 1,
        "updatedReplicas": 1,
        "readyReplicas": 1,
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


def _creds(kube: FakeKube) -> None:
    kube.secrets[("ns1", "paris-s3")] = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s"}


def test_a_foreign_object_with_a_childs_name_is_left_alone(kube: FakeKube) -> None:
    _creds(kube)
    foreign = {"kind": "Job", "metadata": {"name": "digits-expert-3-train", "namespace": "ns1", "uid": "theirs"}}
    kube.objects[("Job", "ns1", "digits-expert-3-train")] = copy.deepcopy(foreign)
    body = expert_body()
    body["metadata"]["generation"] = 2  # even a new spec does not make it ours to replace
    for _ in range(3):
        st = reconcile(handlers.reconcile_expert, body)
    assert (st["phase"], st["reason"]) == ("Pending", "ChildConflict") and "left alone" in st["message"]
    assert kube.objects[("Job", "ns1", "digits-expert-3-train")] == foreign
    assert kube.created == [] and kube.deleted == []
    assert kube.events.count(("Warning", "ChildConflict")) == 1  # type: ignore[attr-defined]

    # A router named digits meets someone's Deployment digits-serve: trains, serves nothing over it.
    router = router_body(storage={"uri": "s3://paris", "secretName": "paris-s3"})
    kube.experts = [ready_expert(i) for i in range(8)]
    their_dep = {"kind": "Deployment", "metadata": {"name": "digits-serve", "namespace": "ns1", "uid": "x"}, "spec": {}}
    kube.objects[("Deployment", "ns1", "digits-serve")] = copy.deepcopy(their_dep)
    reconcile(handlers.reconcile_router, router)
    (job,) = [k for k in kube.objects if k[0] == "Job" and k[2].startswith("digits-train-")]
    kube.objects[job]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    st = reconcile(handlers.reconcile_router, router)
    assert kube.objects[("Deployment", "ns1", "digits-serve")] == their_dep, "not replaced, not adopted"
    assert st["reason"] == "ChildConflict" and "Deployment ns1/digits-serve" in st["message"]
    assert next(c for c in st["conditions"] if c["type"] == "ChildConflict")["status"] == "True"
    # The user deletes it: the router's own Deployment follows.
    del kube.objects[("Deployment", "ns1", "digits-serve")]
    reconcile(handlers.reconcile_router, router)
    assert builders.owns(router, kube.objects[("Deployment", "ns1", "digits-serve")])


def test_a_malformed_progress_file_is_ignored_and_reported(kube: FakeKube, monkeypatch: pytest.MonkeyPatch) -> None:
    from paris.operator import progress
    from paris.storage import LocalStore

    _creds(kube)
    store = LocalStore(Path(tempfile.mkdtemp()))
    monkeypatch.setattr(progress, "progress_store", lambda *a: store)
    monkeypatch.setattr(handlers, "expert_progress", progress.expert_progress)
    body = expert_body()
    prefix = reconcile(handlers.reconcile_expert, body)["prefix"]
    for bad in (b"{not json", b'{"step": "many"}', b"[1, 2]"):
        store.put_bytes(f"{prefix}/progress.json", bad)
        st = reconcile(handlers.reconcile_expert, body)
        assert st["phase"] == "Pending" and st["step"] == 0, "the status goes on"
        problem = next(c for c in st["conditions"] if c["type"] == "ProgressMalformed")
        assert problem["status"] == "True" and "progress.json" in problem["message"] and "ignored" in problem["message"]
    store.put_json(f"{prefix}/progress.json", {"step": 7, "total": 30, "loss": 0.25})
    st = reconcile(handlers.reconcile_expert, body)
    assert st["step"] == 7 and st["loss"] == 0.25
    assert next(c for c in st["conditions"] if c["type"] == "ProgressMalformed")["status"] == "False"
    assert kube.events.count(("Warning", "MalformedProgress")) == 3  # type: ignore[attr-defined]


def test_a_duplicate_expert_is_refused_with_a_condition_on_both(kube: FakeKube) -> None:
    _creds(kube)
    first = expert_body(name="first")
    first["metadata"].update(creationTimestamp="2025-01-01T00:00:00Z", uid="u1")
    second = expert_body(name="second")
    second["metadata"].update(creationTimestamp="2025-01-02T00:00:00Z", uid="u2")
    index = claims(first, second)
    a = reconcile(handlers.reconcile_expert, first, index)
    b = reconcile(handlers.reconcile_expert, second, index)
    assert kube.created == ["Job/first-train"], "only the oldest trains into models/digits/experts/3"
    assert (b["phase"], b["reason"]) == ("Failed", "DuplicateExpert") and "first" in b["message"]
    assert next(c for c in a["conditions"] if c["type"] == "Duplicate")["status"] == "True"
    assert "second" in next(c for c in a["conditions"] if c["type"] == "Duplicate")["message"]
    # Another cluster (or another store) is no duplicate.
    third = expert_body(name="third", cluster=4)
    assert reconcile(handlers.reconcile_expert, third, claims(first, second, third))["phase"] != "Failed"


def test_a_refused_duplicate_that_already_had_a_job_gives_it_up_before_the_owner_starts(kube: FakeKube) -> None:
    """Both were created before either was seen: the newer one ran first and made a Job."""
    _creds(kube)
    older = expert_body(name="older")
    older["metadata"].update(creationTimestamp="2025-01-01T00:00:00Z", uid="u1")
    newer = expert_body(name="newer")
    newer["metadata"].update(creationTimestamp="2025-01-02T00:00:00Z", uid="u2")
    reconcile(handlers.reconcile_expert, newer, claims(newer))
    assert kube.created == ["Job/newer-train"]
    index = claims(older, newer)
    st = reconcile(handlers.reconcile_expert, older, index)
    assert kube.created == ["Job/newer-train"] and st["reason"] == "ReplacingJob" and "newer" in st["message"]
    reconcile(handlers.reconcile_expert, newer, index)
    assert kube.deleted == ["Job/newer-train"]
    kube.gc()
    reconcile(handlers.reconcile_expert, older, index)
    assert kube.created == ["Job/newer-train", "Job/older-train"]


def test_the_router_trains_over_exactly_its_selected_experts(kube: FakeKube) -> None:
    _creds(kube)
    body = router_body(storage={"uri": "s3://paris", "secretName": "paris-s3"}, experts={"names": ["e1", "e4"]})
    kube.experts = [ready_expert(i) for i in range(8)]
    st = reconcile(handlers.reconcile_router, body)
    (job,) = [o for (k, _, _), o in kube.objects.items() if k == "Job"]
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[3:7] == ["--expert", "1=models/digits/experts/1", "--expert", "4=models/digits/experts/4"]
    assert (
        command[7] == "--prefix" and command[8] == st["prefix"] and st["prefix"].startswith("models/digits/router/fp-")
    )
    assert st["expertsReady"] == "2/2"


def test_a_selection_mixing_models_or_repeating_a_cluster_trains_nothing(kube: FakeKube) -> None:
    _creds(kube)
    body = router_body(storage={"uri": "s3://paris", "secretName": "paris-s3"}, experts={"names": ["e0", "e1", "x"]})
    twin = ready_expert(1)
    twin["metadata"]["name"] = "x"
    kube.experts = [ready_expert(0), ready_expert(1), twin]
    st = reconcile(handlers.reconcile_router, body)
    assert (st["phase"], st["reason"]) == ("Failed", "InvalidSelection") and "cover cluster 1" in st["message"]
    other = ready_expert(2, model="other")
    other["metadata"]["name"] = "x"
    kube.experts = [ready_expert(0), ready_expert(1), other]
    st = reconcile(handlers.reconcile_router, body)
    assert st["reason"] == "InvalidSelection" and "model other" in st["message"]
    assert not [k for k in kube.objects if k[0] == "Job"]


def test_experts_that_name_a_dataset_are_judged_by_that_datasets_data(kube: FakeKube) -> None:
    """An expert naming a ParisDataset trains on its data (the expert's own data section, left
    at its default, is replaced), so the router compares the dataset's data name."""
    _creds(kube)
    for name, data in (("sq", "squares"), ("other", "circles")):
        spec = {"storage": {"uri": "s3://paris"}, "data": {"name": data, "source": "webdataset", "path": "s3://paris/x"}}
        kube.objects[("ParisDataset", "ns1", name)] = {"metadata": {"name": name, "namespace": "ns1"}, "spec": spec}
    store = {"uri": "s3://paris", "secretName": "paris-s3"}
    body = router_body(storage=store, experts={"names": ["e0", "e1"]}, data={"name": "squares"})
    kube.experts = [ready_expert(0, dataset="sq"), ready_expert(1, dataset="sq")]
    st = reconcile(handlers.reconcile_router, body)
    assert st.get("reason") != "InvalidSelection", st.get("message")
    assert st["expertsReady"] == "2/2" and [k for k in kube.objects if k[0] == "Job"]

    kube.experts = [ready_expert(0, dataset="sq"), ready_expert(1, dataset="other")]
    body = router_body(storage=store, experts={"names": ["e0", "e1"]}, data={"name": "squares"})
    st = reconcile(handlers.reconcile_router, body)
    assert st["reason"] == "InvalidSelection" and "e1 trains on dataset circles" in st["message"]


def test_a_degraded_router_serves_what_it_has_then_rolls_forward(kube: FakeKube) -> None:
    _creds(kube)
    body = router_body(
        storage={"uri": "s3://paris", "secretName": "paris-s3"}, experts={"matchLabels": {"a": "b"}, "count": 3}
    )
    kube.experts = [ready_expert(i) for i in range(3)] + [ready_expert(3, "Training")]
    st = reconcile(handlers.reconcile_router, body)
    assert st["reason"] == "WaitingForExperts" and kube.created == [], "one expert still on its way"
    kube.experts[3]["status"].update(phase="Failed", message="it broke")
    st = reconcile(handlers.reconcile_router, body)
    (job3,) = [c.removeprefix("Job/") for c in kube.created]
    assert "--expert" in kube.objects[("Job", "ns1", job3)]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert (
        "3=models/digits/experts/3"
        not in kube.objects[("Job", "ns1", job3)]["spec"]["template"]["spec"]["containers"][0]["command"]
    )
    kube.objects[("Job", "ns1", job3)]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    reconcile(handlers.reconcile_router, body)
    dep = kube.objects[("Deployment", "ns1", "digits-serve")]
    dep["status"] = {"replicas": 1, "updatedReplicas": 1, "readyReplicas": 1}
    st = reconcile(handlers.reconcile_router, body)
    assert (st["phase"], st["servedExperts"]) == ("Degraded", ["e0", "e1", "e2"])
    assert st["missingExperts"] == ["e3 (Failed: it broke)"]
    assert ("Warning", "Degraded") in kube.events  # type: ignore[attr-defined]

    # The user fixes e3; while it retrains, the three keep being served.
    kube.experts[3]["status"].update(phase="Training")
    st = reconcile(handlers.reconcile_router, body)
    assert st["phase"] == "Degraded" and len([c for c in kube.created if c.startswith("Job/")]) == 1
    degraded_prefix = st["prefix"]
    kube.experts[3]["status"].update(phase="Succeeded")
    st = reconcile(handlers.reconcile_router, body)
    job4 = [c.removeprefix("Job/") for c in kube.created if c.startswith("Job/")][-1]
    assert job4 != job3 and st["phase"] == "Training"
    # It grows the degraded router (still served meanwhile) by e3's cluster, into a new version.
    command = kube.objects[("Job", "ns1", job4)]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[-2:] == ["--grow-from", degraded_prefix] and st["grownFrom"] == degraded_prefix
    assert st["prefix"] != degraded_prefix and st["fingerprint"]["fields"]["router.grown_from"]
    kube.objects[("Job", "ns1", job4)]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    reconcile(handlers.reconcile_router, body)
    dep = kube.objects[("Deployment", "ns1", "digits-serve")]
    assert dep["metadata"]["annotations"]["paris.dev/experts"] == "e0,e1,e2,e3", "rolled forward"
    assert dep["metadata"]["annotations"][builders.SERVED_ROUTER] == st["prefix"]
    dep["status"] = {"replicas": 1, "updatedReplicas": 1, "readyReplicas": 1}
    st = reconcile(handlers.reconcile_router, body)
    assert (st["phase"], st["missingExperts"]) == ("Ready", [])
    assert f"Job/{job3}" in kube.deleted
    # The grown router served is the one wanted: nothing trains again.
    reconcile(handlers.reconcile_router, body)
    assert len([c for c in kube.created if c.startswith("Job/")]) == 2


def test_a_router_training_for_an_older_expert_set_stops_before_the_new_one_starts(kube: FakeKube) -> None:
    _creds(kube)
    body = router_body(storage={"uri": "s3://paris", "secretName": "paris-s3"}, experts={"matchLabels": {"a": "b"}})
    kube.experts = [ready_expert(i) for i in range(2)]
    reconcile(handlers.reconcile_router, body)
    (old,) = [c.removeprefix("Job/") for c in kube.created]
    kube.experts.append(ready_expert(2))  # a third expert joins while the first training runs
    st = reconcile(handlers.reconcile_router, body)
    assert kube.deleted == [f"Job/{old}"] and len(kube.created) == 1 and st["reason"] == "ReplacingJob"
    kube.gc()
    kube.pods = [
        {
            "metadata": {
                "name": "p",
                "labels": {"paris.dev/router": "digits", "app.kubernetes.io/component": "router-train"},
            }
        }
    ]
    st = reconcile(handlers.reconcile_router, body)
    assert len(kube.created) == 1 and st["reason"] == "ReplacingJob"
    kube.pods = []
    reconcile(handlers.reconcile_router, body)
    assert len(kube.created) == 2


def test_a_failed_trainers_error_line_reaches_the_status(kube: FakeKube) -> None:
    _creds(kube)
    body = expert_body()
    reconcile(handlers.reconcile_expert, body)
    kube.objects[("Job", "ns1", "digits-expert-3-train")]["status"] = {
        "failed": 1,
        "conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "exit code 2"}],
    }
    log_tail = "expert 3: loading\nerror: dataset 'nope' not found: run `paris data prepare` first\n"
    kube.pods = [
        {
            "metadata": {"name": "p1", "labels": {"job-name": "digits-expert-3-train"}},
            "status": {"containerStatuses": [{"state": {"terminated": {"exitCode": 2, "message": log_tail}}}]},
        }
    ]
    st = reconcile(handlers.reconcile_expert, body)
    assert (st["phase"], st["reason"]) == ("Failed", "PodFailurePolicy")
    assert st["message"] == "exit code 2: error: dataset 'nope' not found: run `paris data prepare` first"


def test_finished_pods_of_an_earlier_training_do_not_hold_up_the_next(kube: FakeKube) -> None:
    _creds(kube)
    body = router_body(storage={"uri": "s3://paris", "secretName": "paris-s3"}, experts={"matchLabels": {"a": "b"}})
    kube.experts = [ready_expert(i) for i in range(2)]
    reconcile(handlers.reconcile_router, body)
    (old,) = [c.removeprefix("Job/") for c in kube.created]
    kube.objects[("Job", "ns1", old)]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    labels = {"paris.dev/router": "digits", "app.kubernetes.io/component": "router-train", "job-name": old}
    kube.pods = [{"metadata": {"name": "done", "labels": labels}, "status": {"phase": "Succeeded"}}]
    kube.experts.append(ready_expert(2))
    reconcile(handlers.reconcile_router, body)
    assert len([c for c in kube.created if c.startswith("Job/")]) == 2, "a finished pod trains nothing"


def test_a_spec_change_that_alters_the_weights_trains_into_a_new_version_and_says_so(kube: FakeKube) -> None:
    _creds(kube)
    body = expert_body()
    st = reconcile(handlers.reconcile_expert, body)
    first = st["prefix"]
    assert first.startswith("models/digits/experts/3/fp-") and st["fingerprint"]["digest"][:12] in first
    job = kube.get("Job", "ns1", "digits-expert-3-train")
    assert job is not None and job["spec"]["template"]["spec"]["containers"][0]["command"][-2:] == ["--prefix", first]

    # More steps: the same version (the new Job resumes it).
    body["spec"]["train"]["steps"] = 60
    body["metadata"]["generation"] = 2
    st = reconcile(handlers.reconcile_expert, body)
    assert st["prefix"] == first and ("Normal", "FingerprintChanged") not in kube.events  # type: ignore[attr-defined]
    kube.gc()
    reconcile(handlers.reconcile_expert, body)

    # Another learning rate: another version, and an event naming the change.
    body["spec"]["train"]["lr"] = 0.002
    body["metadata"]["generation"] = 3
    st = reconcile(handlers.reconcile_expert, body)
    assert st["prefix"] != first and st["prefix"].startswith("models/digits/experts/3/fp-")
    assert ("Normal", "FingerprintChanged") in kube.events  # type: ignore[attr-defined]
    # A dataset prepared again is another dataset: another version too.
    second = st["prefix"]
    kube.manifest = manifest(again=True)
    assert reconcile(handlers.reconcile_expert, body)["prefix"] not in (first, second)


def test_an_unprepared_dataset_creates_no_job_and_an_outage_keeps_the_running_one(
    kube: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    _creds(kube)
    kube.manifest = None
    st = reconcile(handlers.reconcile_expert, expert_body())
    assert (st["phase"], st["reason"]) == ("Pending", "DatasetNotPrepared") and kube.created == []
    kube.manifest = manifest()
    st = reconcile(handlers.reconcile_expert, expert_body(cluster=9))
    assert (st["phase"], st["reason"]) == ("Pending", "ClusterNotInDataset") and "0..7, not 9" in st["message"]
    body = expert_body()
    st = reconcile(handlers.reconcile_expert, body)
    assert kube.created == ["Job/digits-expert-3-train"]

    def down(*a: Any, **k: Any) -> None:
        raise ConnectionError("store down")

    monkeypatch.setattr(handlers, "dataset_manifest", down)
    body["spec"]["train"]["lr"] = 0.5
    body["metadata"]["generation"] = 2
    st = reconcile(handlers.reconcile_expert, body)
    assert kube.deleted == [] and st["prefix"], "no decision on a spec change while the store is unreachable"
    assert next(c for c in st["conditions"] if c["type"] == "StorageReachable")["status"] == "False"
