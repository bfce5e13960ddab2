"""kopf handlers: thin. Each reconcile gathers facts, asks builders.py what should exist and
status.py what the status is, creates what is missing (create-or-get by name) and patches
the status. Create/resume/update handlers react at once; a timer keeps polling the Job and
the store so that progress and transitions show without any event to trigger them.

Every reconcile is idempotent and level-based: it looks at the world, not at what the last
run of the operator did, so an operator killed at any point converges when it restarts.

The operator changes or deletes only objects it controls (builders.owns): a namesake someone
else made is reported in the status and left alone. A Job it replaces is deleted in the
foreground, and its successor starts only once the old Job and its pods are gone, so two
trainers never write one store prefix at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
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
from paris.fingerprint import Fingerprint

from . import builders, kube
from .claims import Claim, ClaimKey, claim_key, claim_of, describe, judge
from .ensemble import Ensemble, ensemble
from .progress import ExpertProgress, dataset_manifest, expert_progress
from .status import (
    FAILED,
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
    last_words,
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
# Conditions that only appear when something is wrong: a Warning event when one turns True.
PROBLEMS = ("Duplicate", "ChildConflict", "ProgressMalformed", "InvalidSelection", "Degraded")

Claims = Mapping[ClaimKey, Iterable[Claim]]


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
    # resource goes (README, "Deleting resources"). Children need no cleanup of ours: owner
    # references cascade the deletion. While the operator is down a deleted resource waits in
    # Terminating; the operator removes the finalizer as soon as it is back.
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    # A deleted resource whose timer is mid-reconcile keeps that finalizer until kopf looks
    # again: every 60 s by default, so `kubectl delete` of a busy expert took a minute.
    settings.background.cancellation_polling = 2
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
    before = {c["type"]: c for c in (body.get("status") or {}).get("conditions") or []}
    for c in computed.status.get("conditions") or []:
        prev = before.get(c["type"]) or {}
        new = prev.get("status") != "True" or prev.get("message") != c["message"]
        if c["type"] in PROBLEMS and c["status"] == "True" and new:
            kopf.event(body, type="Warning", reason=c["reason"], message=c["message"][:1000])


def _pod_problem(namespace: str, job_name: str) -> str | None:
    for pod in kube.list_pods(namespace, f"job-name={job_name}"):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK:
                return f"pod {pod['metadata']['name']}: {waiting['reason']}: {waiting.get('message', '')}".strip()
    return None


def _pod_message(namespace: str, job_name: str) -> str | None:
    """What the last failed trainer of a Job said: its termination message (the log tail,
    terminationMessagePolicy FallbackToLogsOnError), reduced to its `error:` line."""
    said: list[tuple[str, str]] = []
    for pod in kube.list_pods(namespace, f"job-name={job_name}"):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if term.get("exitCode") and term.get("message"):
                said.append((str(term.get("finishedAt") or ""), term["message"]))
    return last_words(max(said)[1]) if said else None


def _replace(body: Mapping[str, Any], job: Mapping[str, Any], why: str) -> str:
    """Delete a Job of ours in the foreground; the status says what the successor waits for."""
    meta = job["metadata"]
    kube.delete("Job", meta["namespace"], meta["name"], meta["uid"])
    kopf.event(body, type="Normal", reason="ReplacingJob", message=f"deleting Job {meta['name']}: {why}")
    return f"waiting for Job {meta['name']} and its pods to go ({why})"


def _live_pods(namespace: str, selector: str) -> list[dict[str, Any]]:
    """Pods that may still run a trainer: not yet Succeeded or Failed (a finished pod of an
    earlier training writes nothing any more)."""
    pods = kube.list_pods(namespace, selector)
    return [p for p in pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]


def _fingerprint_event(
    body: Mapping[str, Any], old: Mapping[str, Any], fp: Fingerprint, store: str, prefix: str
) -> None:
    """Say once, when the spec's fingerprint changes, what changed and where it trains now."""
    before = old.get("fingerprint") or {}
    if before.get("digest") and before["digest"] != fp.digest:
        changes = "; ".join(fp.changes(before.get("fields") or {})) or "fingerprint changed"
        message = f"{changes}: training into {store.rstrip('/')}/{prefix}, a new version"
        kopf.event(body, type="Normal", reason="FingerprintChanged", message=message[:1000])


def _owned(body: Mapping[str, Any], obj: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str | None]:
    """(obj, None) for an object of ours or none; (None, why) for a namesake of someone else's."""
    if obj is None or builders.owns(body, obj):
        return obj, None
    return None, builders.not_owned(body, obj)


def _going(job: Mapping[str, Any]) -> bool:
    return bool(job["metadata"].get("deletionTimestamp"))


# ---- ParisExpert ------------------------------------------------------------------------------


@kopf.index(*EXPERTS)
def expert_claims(body: kopf.Body, **_: Any) -> dict[ClaimKey, Claim] | None:
    """The store prefix each ParisExpert claims, kept in memory by kopf from its watch."""
    return claim_of(body, SETTINGS)


def reconcile_expert(body: Mapping[str, Any], patch: kopf.Patch, claims: Claims) -> None:
    meta = body["metadata"]
    ns, name, generation = meta["namespace"], meta["name"], builders.generation(body)
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
    verdict = judge(name, claims.get(claim_key(ns, spec, SETTINGS), ()))
    refused = verdict is not None and verdict.refused(name)
    st = spec.storage
    creds, secret_problem = kube.read_secret_keys(
        ns, builders.secret_name(st, SETTINGS), (st.access_key_key, st.secret_key_key)
    )
    # The version the spec trains into: its fingerprint needs the dataset's manifest.
    old = body.get("status") or {}
    storage_problem = fp = None
    prefix = None
    if creds is not None and problem is None:
        cfg = builders.storage_config(st, SETTINGS)
        try:
            manifest = dataset_manifest(cfg, creds[st.access_key_key], creds[st.secret_key_key], spec.data.name)
        except Exception as err:  # the store being down must not stop the Job's status
            storage_problem = f"cannot read the dataset from {cfg.endpoint or 'the store'}: {type(err).__name__}"
            prefix = old.get("prefix")  # keep what runs; decide again once the store answers
        else:
            if manifest is None:
                problem = ("DatasetNotPrepared", f"dataset {spec.data.name!r} is not in {st.uri} yet: run "
                           "`paris data prepare` (or name a ParisDataset in spec.dataset)")
            elif not 0 <= spec.cluster < int(manifest.get("num_clusters") or 0):
                problem = ("ClusterNotInDataset", f"dataset {spec.data.name!r} has clusters 0.."
                           f"{int(manifest.get('num_clusters') or 0) - 1}, not {spec.cluster} (yet: `paris data add`)")
            else:
                fp, prefix = builders.expert_version(spec, manifest)
                _fingerprint_event(body, old, fp, builders.storage_config(st, SETTINGS).uri, prefix)
    desired = builders.build_expert_job(body, spec, SETTINGS, prefix)
    job_name, want = desired["metadata"]["name"], desired["metadata"]["annotations"][builders.SPEC_HASH]
    job, conflict = _owned(body, kube.get("Job", ns, job_name))
    replacing = None
    if job is not None and _going(job):
        replacing, job = f"waiting for the replaced Job {job_name} and its pods to go", None
    elif job is not None and refused:
        replacing, job = _replace(body, job, "another ParisExpert owns this store prefix"), None
    elif job is not None and fp is not None:  # (a decision needs the version: not during an outage)
        ann = job["metadata"].get("annotations") or {}
        outdated = int(ann.get(builders.GENERATION, "0")) < generation
        if outdated and ann.get(builders.SPEC_HASH) != want:
            # A Job's pod template is immutable: a new spec means a new Job (same name), whose
            # pod resumes from latest.json. Artifacts in the store are never touched.
            log.info("expert %s/%s: spec generation %d, replacing Job %s", ns, name, generation, job_name)
            replacing, job = _replace(body, job, f"spec generation {generation}"), None
    if job is None and conflict is None and replacing is None and (pods := _live_pods(ns, f"job-name={job_name}")):
        replacing = f"waiting for {len(pods)} pod(s) of the replaced Job {job_name} to go"
    if job is None and replacing is None and verdict is not None and not refused:
        # The owner of a contested prefix starts only once no refused claimant trains into it.
        for other in verdict.others:
            theirs = kube.get("Job", ns, builders.expert_job_name(other.name))
            if theirs is not None and builders.controller_uid(theirs) == other.uid:
                replacing = f"waiting for Job {theirs['metadata']['name']} of the refused duplicate {other.name} to go"

    read = ExpertProgress()
    pod_problem = pod_message = None
    if creds is not None and not refused and prefix is not None and storage_problem is None:
        cfg = builders.storage_config(st, SETTINGS)
        try:
            read = expert_progress(cfg, creds[st.access_key_key], creds[st.secret_key_key], prefix)
        except Exception as err:  # the store being down must not stop the Job's status
            storage_problem = f"cannot read progress from {cfg.endpoint or 'the store'}: {type(err).__name__}"

    # No Job, but this spec's Job finished (and was cleaned up, e.g. by its TTL): nothing to run.
    finished = None
    idle = job is None and conflict is None and replacing is None and not refused
    if idle:
        finished = recorded_finish(body.get("status"), job_name, want) or trained_record(
            job_name, want, read.progress, spec.train.steps
        )
    created = False
    if idle and finished is None and secret_problem is None and problem is None and fp is not None:
        job, created = kube.create_or_get(desired)
        job, conflict = _owned(body, job)  # a namesake may have appeared between our get and create
        if job is not None and created:
            kopf.event(body, type="Normal", reason="JobCreated", message=f"created Job {job_name}")
    if job is not None and not created and job_outcome(job)[0] == PENDING:  # a Job just made has no pod yet
        pod_problem = _pod_problem(ns, job_name)
    if job is not None and job_outcome(job)[0] == FAILED:
        pod_message = _pod_message(ns, job_name)
    facts = ExpertFacts(
        generation=generation,
        job=job,
        secret_problem=secret_problem,
        progress=read.progress,
        checkpoint=read.checkpoint,
        total_steps=spec.train.steps,
        storage_problem=storage_problem,
        pod_problem=pod_problem,
        finished=finished,
        duplicate=describe(verdict, name, spec.model, spec.cluster) if verdict is not None else None,
        refused=refused,
        conflict=conflict,
        replacing=replacing,
        malformed=read.malformed,
        pod_message=pod_message,
        dataset_problem=problem,
        dataset=spec.dataset,
        prefix=prefix,
        fingerprint=fp.record() if fp is not None else old.get("fingerprint"),
    )
    _apply(body, patch, expert_status(body.get("status"), facts))


@kopf.on.resume(*EXPERTS)
@kopf.on.create(*EXPERTS)
@kopf.on.update(*EXPERTS)
def expert_changed(body: kopf.Body, patch: kopf.Patch, expert_claims: kopf.Index, **_: Any) -> None:
    reconcile_expert(body, patch, expert_claims)


@kopf.timer(*EXPERTS, interval=SETTINGS.poll_seconds, initial_delay=SETTINGS.poll_seconds)
def expert_poll(body: kopf.Body, patch: kopf.Patch, expert_claims: kopf.Index, **_: Any) -> None:
    reconcile_expert(body, patch, expert_claims)


# ---- ParisRouter ------------------------------------------------------------------------------


def _selected_experts(ns: str, spec: ParisRouterSpec) -> list[dict[str, Any]]:
    sel = spec.experts
    if sel.names is not None:
        wanted = set(sel.names)
        return [e for e in kube.list_experts(ns) if e["metadata"]["name"] in wanted]
    selector = ",".join(f"{k}={v}" for k, v in sorted((sel.match_labels or {}).items()))
    return kube.list_experts(ns, selector)


def reconcile_router(body: Mapping[str, Any], patch: kopf.Patch) -> None:
    meta = body["metadata"]
    ns, name, generation = meta["namespace"], meta["name"], builders.generation(body)
    try:
        spec = ParisRouterSpec.model_validate(dict(body["spec"]))
    except ValidationError as err:
        facts = RouterFacts(generation, Ensemble([], 1), invalid_spec=describe_errors(err, "spec"))
        _apply(body, patch, router_status(body.get("status"), facts))
        return
    experts = _selected_experts(ns, spec)
    named = sorted({str(e["spec"]["dataset"]) for e in experts if (e.get("spec") or {}).get("dataset")})
    ens = ensemble(spec, experts, {d: kube.get_dataset(ns, d) for d in named})
    use = ens.use()
    st = spec.storage
    creds, secret_problem = kube.read_secret_keys(
        ns, builders.secret_name(st, SETTINGS), (st.access_key_key, st.secret_key_key)
    )
    old_status = body.get("status") or {}
    job = finished = conflict = replacing = version = None
    job_name = prefix = fp = storage_problem = None
    service_name = builders.serve_name(name)
    deployment, dep_conflict = _owned(body, kube.get("Deployment", ns, service_name))
    served = builders.served_router(deployment)
    if use is not None and creds is not None:
        cfg = builders.storage_config(st, SETTINGS)
        try:
            manifest = dataset_manifest(cfg, creds[st.access_key_key], creds[st.secret_key_key], spec.data.name)
        except Exception as err:  # keep serving; decide once the store answers
            storage_problem = f"cannot read the dataset from {cfg.endpoint or 'the store'}: {type(err).__name__}"
        else:
            if manifest is not None:
                # What is served decides whether new experts grow that router or train a new one.
                version = builders.router_version(spec, manifest, use, served)
                fp, prefix = version.fingerprint, version.prefix
                _fingerprint_event(body, old_status, fp, cfg.uri, prefix)
    ours = [j for j in kube.list_jobs(ns, f"{API_GROUP}/router={name}") if builders.owns(body, j)]
    if use is not None and version is not None:
        desired_job = builders.build_router_job(body, spec, SETTINGS, use, version.prefix, version.grow_from)
        job_name = desired_job["metadata"]["name"]
        job, conflict = _owned(body, kube.get("Job", ns, job_name))
        # A training Job that finished and was cleaned up (TTL) is not trained again.
        want = desired_job["metadata"]["annotations"][builders.SPEC_HASH]
        finished = recorded_finish(body.get("status"), job_name, want) if job is None else None
        if job is None and finished is None and conflict is None:
            # Older trainings of this router write the same router prefix: they go first.
            for old in ours:
                if old["metadata"]["name"] == job_name:
                    continue
                if _going(old):
                    replacing = f"waiting for the replaced Job {old['metadata']['name']} and its pods to go"
                elif job_outcome(old)[0] not in (SUCCEEDED, FAILED):
                    replacing = _replace(body, old, "the router's experts or settings changed")
            selector = f"{API_GROUP}/router={name},app.kubernetes.io/component=router-train"
            if replacing is None and _live_pods(ns, selector):
                replacing = "waiting for the pods of an earlier router training to go"
        if job is None and finished is None and conflict is None and replacing is None and secret_problem is None:
            job, created = kube.create_or_get(desired_job)
            job, conflict = _owned(body, job)
            if created:
                used = ", ".join(f"{n} (cluster {ens.succeeded[n][0]})" for n in ens.names_of(use))
                grows = version.grow_from and (served is None or served.prefix != version.prefix)
                how = f"; growing the router at {version.grow_from}" if grows else ""
                kopf.event(
                    body, type="Normal", reason="RouterTraining", message=f"created Job {job_name} over {used}{how}"
                )

    service, svc_conflict = _owned(body, kube.get("Service", ns, service_name))
    trained = job_outcome(job)[0] if job is not None else (finished or {}).get("phase")
    if use is not None and trained == SUCCEEDED and job_name is not None:
        if service is None and svc_conflict is None:
            service, svc_conflict = _owned(body, kube.create_or_get(builders.build_serve_service(body, spec))[0])
        want_dep = builders.build_serve_deployment(body, spec, SETTINGS, job_name, ens.names_of(use), version)
        if deployment is None and dep_conflict is None:
            deployment, created = kube.create_or_get(want_dep)
            deployment, dep_conflict = _owned(body, deployment)
        elif deployment is not None:
            have_hash = (deployment["metadata"].get("annotations") or {}).get(builders.SPEC_HASH)
            if have_hash != want_dep["metadata"]["annotations"][builders.SPEC_HASH]:
                deployment = kube.replace(want_dep, deployment["metadata"]["resourceVersion"])
                kopf.event(body, type="Normal", reason="RollingOut", message=f"new spec for {service_name}")
        # Older training Jobs of this router (earlier generations or expert sets) are done with.
        for old in ours:
            if old["metadata"]["name"] != job_name and not _going(old):
                kube.delete("Job", ns, old["metadata"]["name"], old["metadata"]["uid"])

    facts = RouterFacts(
        generation=generation,
        ensemble=ens,
        secret_problem=secret_problem,
        job=job,
        deployment=deployment,
        endpoint=builders.endpoint_url(service) if service else None,
        replicas=spec.inference.replicas,
        finished=finished,
        # A namesake of the serving children matters once there is something to serve.
        conflict=conflict or (dep_conflict or svc_conflict if trained == SUCCEEDED else None),
        replacing=replacing,
        storage_problem=storage_problem,
        pod_message=_pod_message(ns, job_name) if job is not None and job_name and trained == FAILED else None,
        prefix=prefix or old_status.get("prefix"),
        fingerprint=fp.record() if fp is not None else old_status.get("fingerprint"),
        grown_from=version.grow_from if version is not None else old_status.get("grownFrom"),
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
