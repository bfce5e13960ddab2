"""kopf handlers: thin. Each reconcile gathers facts, asks builders.py what should exist and
status.py what the status is, creates what is missing (create-or-get by name) and patches
the status. Create/resume/update handlers react at once; a timer keeps polling the Job and
the store so that progress and transitions show without any event to trigger them.

Every reconcile is idempotent and level-based: it looks at the world, not at what the last
run of the operator did, so an operator killed at any point converges when it restarts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from paris.config import (
    API_GROUP,
    API_VERSION,
    OperatorSettings,
    ParisDatasetSpec,
    ParisExpertSpec,
    ParisRouterSpec,
    describe_errors,
)

from . import builders, kube
from .progress import dataset_manifest, expert_progress
from .status import (
    PENDING,
    SUCCEEDED,
    Computed,
    DatasetFacts,
    ExpertFacts,
    RouterFacts,
    changed,
    dataset_problem,
    dataset_status,
    expert_status,
    job_outcome,
    recorded_finish,
    router_status,
    trained_record,
)

SETTINGS = OperatorSettings.from_env()
EXPERTS = (API_GROUP, API_VERSION, "parisexperts")
ROUTERS = (API_GROUP, API_VERSION, "parisrouters")
DATASETS = (API_GROUP, API_VERSION, "parisdatasets")
log = logging.getLogger("paris.operator")

# Pod waiting reasons that mean "will not start until someone fixes something".
STUCK = {"CreateContainerConfigError", "CreateContainerError", "ErrImagePull", "ImagePullBackOff", "InvalidImageName"}


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Events only for what the user should see (our transitions, warnings), not every handler run.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    # The handlers are synchronous and wait on the API and the store, not on the CPU: with the
    # default pool (CPU count + 4 threads) 200 new ParisExperts queued behind 6 threads
    # (bench/operator_scale.py, bench/README.md).
    settings.execution.max_workers = kube.CONNECTIONS
    # kopf puts this finalizer on every resource with a timer, to stop the timer before the
    # resource goes. Children need no cleanup of ours: owner references cascade the deletion.
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    kube.login()


def _apply(body: Mapping[str, Any], patch: kopf.Patch, computed: Computed) -> None:
    delta = changed(body.get("status"), computed.status)
    if delta:
        patch.status.update(delta)
    t = computed.transition
    if t is not None:
        kopf.event(
            body,
            type="Warning" if t.warning else "Normal",
            reason=t.reason,
            message=f"{t.old or 'New'} -> {t.new}: {t.message}"[:1000],
        )


def _pod_problem(namespace: str, job_name: str) -> str | None:
    for pod in kube.list_pods(namespace, f"job-name={job_name}"):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK:
                return f"pod {pod['metadata']['name']}: {waiting['reason']}: {waiting.get('message', '')}".strip()
    return None


# ---- ParisExpert ------------------------------------------------------------------------------


def reconcile_expert(body: Mapping[str, Any], patch: kopf.Patch) -> None:
    meta = body["metadata"]
    ns, generation = meta["namespace"], builders.generation(body)
    try:
        spec = ParisExpertSpec.model_validate(dict(body["spec"]))
    except ValidationError as err:
        facts = ExpertFacts(generation, None, invalid_spec=describe_errors(err, "spec"))
        _apply(body, patch, expert_status(body.get("status"), facts))
        return

    problem = None
    if spec.dataset is not None:
        # A named ParisDataset: no Job until it is Ready; then its data is what we train on.
        dataset = kube.get_dataset(ns, spec.dataset)
        problem = dataset_problem(dataset, spec.dataset)
        spec = spec.model_copy(update={"data": builders.expert_data(spec, dataset)})
    st = spec.storage
    creds, secret_problem = kube.read_secret_keys(
        ns, builders.secret_name(st, SETTINGS), (st.access_key_key, st.secret_key_key)
    )
    desired = builders.build_expert_job(body, spec, SETTINGS)
    name, want = desired["metadata"]["name"], desired["metadata"]["annotations"][builders.SPEC_HASH]
    job = kube.get("Job", ns, name)
    replaced = False
    if job is not None:
        ann = job["metadata"].get("annotations") or {}
        outdated = int(ann.get(builders.GENERATION, "0")) < generation
        if outdated and ann.get(builders.SPEC_HASH) != want:
            # A Job's pod template is immutable: a new spec means a new Job (same name), whose
            # pod resumes from latest.json. Artifacts in the store are never touched.
            log.info("expert %s/%s: spec generation %d, replacing Job %s", ns, meta["name"], generation, name)
            kube.delete("Job", ns, name)
            kopf.event(body, type="Normal", reason="SpecChanged", message=f"replacing Job {name}")
            job, replaced = None, True

    progress = checkpoint = storage_problem = pod_problem = None
    if creds is not None:
        cfg = builders.storage_config(st, SETTINGS)
        try:
            progress, checkpoint = expert_progress(
                cfg, creds[st.access_key_key], creds[st.secret_key_key], spec.model, spec.cluster
            )
        except Exception as err:  # the store being down must not stop the Job's status
            storage_problem = f"cannot read progress from {cfg.endpoint or 'the store'}: {type(err).__name__}"

    # No Job, but this spec's Job finished (and was cleaned up, e.g. by its TTL): nothing to run.
    finished = None
    if job is None and not replaced:
        finished = recorded_finish(body.get("status"), name, want) or trained_record(
            name, want, progress, spec.train.steps
        )
    created = False
    if job is None and finished is None and secret_problem is None and problem is None and not replaced:
        # (a replaced Job is recreated next round, once the old one is gone)
        job, created = kube.create_or_get(desired)
        if created:
            kopf.event(body, type="Normal", reason="JobCreated", message=f"created Job {name}")
    if job is not None and not created and job_outcome(job)[0] == PENDING:  # a Job just made has no pod yet
        pod_problem = _pod_problem(ns, name)
    facts = ExpertFacts(
        generation=generation,
        job=job,
        secret_problem=secret_problem,
        progress=progress,
        checkpoint=checkpoint,
        total_steps=spec.train.steps,
        storage_problem=storage_problem,
        pod_problem=pod_problem,
        finished=finished,
        dataset_problem=problem,
        dataset=spec.dataset,
    )
    _apply(body, patch, expert_status(body.get("status"), facts))


@kopf.on.resume(*EXPERTS)
@kopf.on.create(*EXPERTS)
@kopf.on.update(*EXPERTS)
def expert_changed(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    reconcile_expert(body, patch)


@kopf.timer(*EXPERTS, interval=SETTINGS.poll_seconds, initial_delay=SETTINGS.poll_seconds)
def expert_poll(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    reconcile_expert(body, patch)


# ---- ParisRouter ------------------------------------------------------------------------------


def _selected_experts(ns: str, spec: ParisRouterSpec) -> tuple[list[dict[str, Any]], int]:
    sel = spec.experts
    if sel.names is not None:
        wanted = set(sel.names)
        experts = [e for e in kube.list_experts(ns) if e["metadata"]["name"] in wanted]
        return experts, sel.count or len(wanted)
    selector = ",".join(f"{k}={v}" for k, v in sorted((sel.match_labels or {}).items()))
    experts = kube.list_experts(ns, selector)
    return experts, sel.count or len(experts)


def reconcile_router(body: Mapping[str, Any], patch: kopf.Patch) -> None:
    meta = body["metadata"]
    ns, generation = meta["namespace"], builders.generation(body)
    try:
        spec = ParisRouterSpec.model_validate(dict(body["spec"]))
    except ValidationError as err:
        facts = RouterFacts(generation, [], 1, invalid_spec=describe_errors(err, "spec"))
        _apply(body, patch, router_status(body.get("status"), facts))
        return
    experts, needed = _selected_experts(ns, spec)
    ready = sum((e.get("status") or {}).get("phase") == SUCCEEDED for e in experts)
    st = spec.storage
    _, secret_problem = kube.read_secret_keys(
        ns, builders.secret_name(st, SETTINGS), (st.access_key_key, st.secret_key_key)
    )
    desired_job = builders.build_router_job(body, spec, SETTINGS)
    job_name = desired_job["metadata"]["name"]
    job = kube.get("Job", ns, job_name)
    # A training Job that finished and was cleaned up (TTL) is not trained again.
    want = desired_job["metadata"]["annotations"][builders.SPEC_HASH]
    finished = recorded_finish(body.get("status"), job_name, want) if job is None else None
    if job is None and finished is None and experts and ready >= needed and secret_problem is None:
        job, created = kube.create_or_get(desired_job)
        if created:
            kopf.event(body, type="Normal", reason="RouterTraining", message=f"created Job {job_name}")

    deployment = service = None
    trained = job_outcome(job)[0] if job is not None else (finished or {}).get("phase")
    if trained == SUCCEEDED:
        service, _ = kube.create_or_get(builders.build_serve_service(body, spec))
        want = builders.build_serve_deployment(body, spec, SETTINGS, pipeline=job_name)
        deployment, created = kube.create_or_get(want)
        have_hash = (deployment["metadata"].get("annotations") or {}).get(builders.SPEC_HASH)
        if not created and have_hash != want["metadata"]["annotations"][builders.SPEC_HASH]:
            deployment = kube.replace(want, deployment["metadata"]["resourceVersion"])
            kopf.event(body, type="Normal", reason="RollingOut", message=f"new spec for {want['metadata']['name']}")
        # Older training Jobs of this router (earlier generations) are done with.
        for old in kube.list_jobs(ns, f"{API_GROUP}/router={meta['name']}"):
            if old["metadata"]["name"] != job_name:
                kube.delete("Job", ns, old["metadata"]["name"])

    facts = RouterFacts(
        generation=generation,
        experts=experts,
        needed=needed,
        secret_problem=secret_problem,
        job=job,
        deployment=deployment,
        endpoint=builders.endpoint_url(service) if service else None,
        replicas=spec.inference.replicas,
        finished=finished,
    )
    _apply(body, patch, router_status(body.get("status"), facts))


@kopf.on.resume(*ROUTERS)
@kopf.on.create(*ROUTERS)
@kopf.on.update(*ROUTERS)
def router_changed(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    reconcile_router(body, patch)


@kopf.timer(*ROUTERS, interval=SETTINGS.poll_seconds, initial_delay=SETTINGS.poll_seconds)
def router_poll(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    reconcile_router(body, patch)


# ---- ParisDataset -----------------------------------------------------------------------------


def reconcile_dataset(body: Mapping[str, Any], patch: kopf.Patch) -> None:
    """Stage by stage: the first stage whose Job has not succeeded is the one that runs."""
    meta = body["metadata"]
    ns, generation = meta["namespace"], builders.generation(body)
    old = body.get("status") or {}
    try:
        spec = ParisDatasetSpec.model_validate(dict(body["spec"]))
    except ValidationError as err:
        facts = DatasetFacts(generation, 1, {}, {}, invalid_spec=describe_errors(err, "spec"))
        _apply(body, patch, dataset_status(old, facts))
        return
    st = spec.storage
    creds, secret_problem = kube.read_secret_keys(
        ns, builders.secret_name(st, SETTINGS), (st.access_key_key, st.secret_key_key)
    )
    jobs: dict[str, Any] = {}
    finished: dict[str, Any] = {}
    for stage in builders.DATASET_STAGES:
        desired = builders.build_dataset_job(body, spec, SETTINGS, stage)
        name, want = desired["metadata"]["name"], desired["metadata"]["annotations"][builders.SPEC_HASH]
        job = kube.get("Job", ns, name)
        record = ((old.get("stages") or {}).get(stage)) if job is None else None
        if record is not None and recorded_finish({"finishedJob": record}, name, want) is not None:
            finished[stage] = record  # finished earlier, its Job since cleaned up (TTL)
        elif job is None and secret_problem is None:
            job, created = kube.create_or_get(desired)
            if created:
                kopf.event(body, type="Normal", reason="StageStarted", message=f"{stage}: created Job {name}")
        jobs[stage] = job
        done = job_outcome(job)[0] if job is not None else (finished.get(stage) or {}).get("phase")
        if done != SUCCEEDED:
            break
    manifest = storage_problem = None
    final = jobs.get("finalize")
    prepared = (
        job_outcome(final)[0] if final is not None else (finished.get("finalize") or {}).get("phase")
    ) == SUCCEEDED
    if prepared and creds is not None:
        cfg = builders.storage_config(st, SETTINGS)
        try:
            manifest = dataset_manifest(cfg, creds[st.access_key_key], creds[st.secret_key_key], spec.data.name)
        except Exception as err:  # the store being down must not stop the status
            storage_problem = f"cannot read the manifest from {cfg.endpoint or 'the store'}: {type(err).__name__}"
    facts = DatasetFacts(
        generation=generation,
        indexes=spec.indexes,
        jobs=jobs,
        finished=finished,
        secret_problem=secret_problem,
        manifest=manifest,
        storage_problem=storage_problem,
    )
    _apply(body, patch, dataset_status(old, facts))


@kopf.on.resume(*DATASETS)
@kopf.on.create(*DATASETS)
@kopf.on.update(*DATASETS)
def dataset_changed(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    reconcile_dataset(body, patch)


@kopf.timer(*DATASETS, interval=SETTINGS.poll_seconds, initial_delay=SETTINGS.poll_seconds)
def dataset_poll(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    reconcile_dataset(body, patch)
