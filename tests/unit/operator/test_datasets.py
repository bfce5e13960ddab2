"""ParisDataset: pure builders of its stage Jobs and its status, and the expert that waits for
it (the e2e tier runs the whole thing on the real control plane)."""

from __future__ import annotations

from typing import Any

import yaml

from paris.config import OperatorSettings, ParisDatasetSpec, ParisExpertSpec
from paris.operator import builders
from paris.operator.status import (
    FAILED,
    PENDING,
    PREPARING,
    READY,
    DatasetFacts,
    ExpertFacts,
    dataset_problem,
    dataset_status,
    expert_status,
)

from .conftest import expert_body


def dataset_body(name: str = "squares", **spec: Any) -> dict[str, Any]:
    base = {
        "storage": {"uri": "s3://paris", "secretName": "paris-s3"},
        "data": {"name": "squares", "source": "webdataset", "path": "s3://raw/squares", "clusters": 3},
        "indexes": 6,
        "parallelism": 2,
        "pool": "a40",
    }
    base.update(spec)
    return {
        "apiVersion": "paris.dev/v1alpha1",
        "kind": "ParisDataset",
        "metadata": {"name": name, "namespace": "ns1", "uid": "uid-d", "generation": 1},
        "spec": base,
    }


def _job(body: dict[str, Any], settings: OperatorSettings, stage: str) -> dict[str, Any]:
    return builders.build_dataset_job(body, ParisDatasetSpec.model_validate(body["spec"]), settings, stage)


def _env(job: dict[str, Any]) -> dict[str, Any]:
    return {
        e["name"]: e.get("value", e.get("valueFrom")) for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
    }


def test_indexed_stages_retry_an_index_alone_and_run_one_unit_per_pod(settings: OperatorSettings) -> None:
    body = dataset_body()
    job = _job(body, settings, "encode")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == 6 and spec["parallelism"] == 2
    assert spec["backoffLimitPerIndex"] == 3 and "backoffLimit" not in spec
    container = spec["template"]["spec"]["containers"][0]
    assert container["command"] == ["paris", "data", "work", "encode"]
    cfg = yaml.safe_load(_env(job)["PARIS_CONFIG"])
    assert cfg["data"]["indexes"] == 6 and cfg["data"]["path"] == "s3://raw/squares"
    assert cfg["storage"]["uri"] == "s3://paris"
    assert spec["template"]["spec"]["nodeSelector"]["pool"] == "a40"  # GPU pools usable for encoding
    assert job["metadata"]["labels"]["paris.dev/dataset"] == "squares"
    assert job["metadata"]["ownerReferences"][0]["kind"] == "ParisDataset"
    one = _job(body, settings, "cluster")["spec"]
    assert "completionMode" not in one and one["backoffLimit"] == 3


def test_stage_jobs_have_deterministic_names_that_change_with_the_data(settings: OperatorSettings) -> None:
    a, b = _job(dataset_body(), settings, "features"), _job(dataset_body(), settings, "features")
    assert a == b and a["metadata"]["name"].startswith("squares-features-")
    other = dataset_body(data={"name": "squares", "source": "webdataset", "path": "s3://raw/squares", "clusters": 4})
    assert _job(other, settings, "features")["metadata"]["name"] != a["metadata"]["name"]
    names = {_job(dataset_body(), settings, s)["metadata"]["name"] for s in builders.DATASET_STAGES}
    assert len(names) == 4


def _indexed(succeeded: int, complete: bool = False, failed: bool = False) -> dict[str, Any]:
    conditions = []
    if complete:
        conditions.append({"type": "Complete", "status": "True"})
    if failed:
        conditions.append({"type": "Failed", "status": "True", "reason": "FailedIndexes", "message": "index 2 failed"})
    return {
        "metadata": {"name": "j", "annotations": {}},
        "spec": {},
        "status": {"succeeded": succeeded, "active": 1, "conditions": conditions},
    }


def test_status_follows_the_stages_and_reports_indexes_samples_and_cluster_sizes() -> None:
    done = _indexed(6, complete=True)
    running = dataset_status(None, DatasetFacts(1, 6, {"features": _indexed(4)}, {}))
    assert running.status["phase"] == PREPARING and running.status["stage"] == "features"
    assert running.status["indexesDone"] == "4/6"
    encode = dataset_status(
        running.status, DatasetFacts(1, 6, {"features": done, "cluster": done, "encode": _indexed(1)}, {})
    )
    assert encode.status["stage"] == "encode" and encode.status["indexesDone"] == "1/6"
    assert encode.transition is not None and encode.transition.reason == "EncodeRunning"
    manifest = {
        "num_samples": 96,
        "holdout": {"size": 18},
        "clusters": [{"size": 30}, {"size": 28}, {"size": 20}],
        "skipped": {"count": 0},
    }
    jobs = {s: done for s in builders.DATASET_STAGES}
    ready = dataset_status(encode.status, DatasetFacts(1, 6, jobs, {}, manifest=manifest))
    st = ready.status
    assert st["phase"] == READY and st["samples"] == 96 and st["clusterSizes"] == [30, 28, 20]
    assert {c["type"]: c["status"] for c in st["conditions"]}["Ready"] == "True"
    failed = dataset_status(
        None, DatasetFacts(1, 6, {"features": done, "cluster": done, "encode": _indexed(5, failed=True)}, {})
    )
    assert failed.status["phase"] == FAILED and failed.status["reason"] == "EncodeFailed"
    assert "index 2 failed" in failed.status["message"]


def test_a_stage_recorded_as_finished_is_not_run_again_after_its_job_is_gone() -> None:
    record = {"name": "j", "specHash": "h", "phase": "Succeeded", "reason": "JobComplete", "message": ""}
    st = dataset_status(None, DatasetFacts(1, 6, {"features": None, "cluster": None}, {"features": record})).status
    assert st["stage"] == "cluster" and st["stages"]["features"]["phase"] == "Succeeded"


def test_an_expert_naming_a_missing_dataset_waits_with_the_reason_and_no_job() -> None:
    problem = dataset_problem(None, "squares")
    facts = ExpertFacts(1, None, total_steps=30, dataset_problem=problem, dataset="squares")
    st = expert_status(None, facts).status
    conds = {c["type"]: c for c in st["conditions"]}
    assert st["phase"] == PENDING and st["reason"] == "DatasetNotFound"
    assert conds["DatasetReady"]["status"] == "False" and "does not exist" in conds["DatasetReady"]["message"]
    assert conds["Created"]["status"] == "False"
    preparing = dataset_problem({"status": {"phase": "Preparing", "stage": "encode"}}, "squares")
    assert preparing == ("DatasetNotReady", "ParisDataset squares is Preparing (stage encode)")
    assert dataset_problem({"status": {"phase": "Ready"}}, "squares") is None


def test_an_expert_trains_on_its_datasets_data(settings: OperatorSettings) -> None:
    body = expert_body(dataset="squares")
    spec = ParisExpertSpec.model_validate(body["spec"])
    data = builders.expert_data(spec, dataset_body())
    job = builders.build_expert_job(body, spec.model_copy(update={"data": data}), settings)
    cfg = yaml.safe_load(_env(job)["PARIS_CONFIG"])
    assert cfg["data"]["name"] == "squares" and cfg["data"]["clusters"] == 3 and cfg["data"]["indexes"] == 6
