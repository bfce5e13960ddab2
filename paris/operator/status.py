"""Status as a pure function of what the operator observed (KubeRay/Kubeflow conventions).

Each reconcile gathers facts (the Job, the Secret, progress.json, latest.json, the experts,
the Deployment) and calls one of these functions; they return the complete new status and
the phase transition, if any, so that events are posted once per transition and a restarted
operator computes the same status from the same facts.

Conditions: `type`, `status` ("True"/"False"/"Unknown"), `reason` (CamelCase), `message`,
`lastTransitionTime` (changes only when `status` flips).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from paris.config import KUEUE_QUEUE_LABEL

from .builders import SERVED_EXPERTS, SPEC_HASH
from .ensemble import Ensemble

PENDING, QUEUED, TRAINING, SUCCEEDED, FAILED = "Pending", "Queued", "Training", "Succeeded", "Failed"
DEPLOYING, READY, DEGRADED = "Deploying", "Ready", "Degraded"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(type_: str, status: bool | None, reason: str, message: str = "", at: str | None = None) -> dict:
    return {
        "type": type_,
        "status": "Unknown" if status is None else "True" if status else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": at or now(),
    }


def merge_conditions(old: Sequence[Mapping[str, Any]] | None, new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """New conditions replace old ones of the same type, but keep the old transition time when
    the status did not flip (so the time says when it *became* so)."""
    before = {c["type"]: c for c in old or []}
    out = []
    for c in new:
        prev = before.get(c["type"])
        if prev is not None and prev.get("status") == c["status"]:
            c = {**c, "lastTransitionTime": prev.get("lastTransitionTime", c["lastTransitionTime"])}
        out.append(c)
    kept = {c["type"] for c in new}
    return out + [dict(c) for t, c in before.items() if t not in kept]


@dataclass
class Transition:
    """A phase change, posted as a Kubernetes Event on the resource."""

    old: str | None
    new: str
    reason: str
    message: str
    warning: bool = False


@dataclass
class ExpertFacts:
    generation: int
    job: Mapping[str, Any] | None  # batch/v1 Job as a dict (camelCase), None if absent
    secret_problem: str | None = None  # why the credentials are unusable, if they are
    progress: Mapping[str, Any] | None = None  # progress.json
    checkpoint: str | None = None  # URI of the checkpoint latest.json points at
    total_steps: int = 0
    invalid_spec: str | None = None
    storage_problem: str | None = None
    pod_problem: str | None = None  # e.g. CreateContainerConfigError of the current pod
    # Why the named ParisDataset cannot be trained on yet (missing, not Ready); None when the
    # expert names none or it is Ready. `dataset` is the name, when one is named.
    dataset_problem: tuple[str, str] | None = None  # (reason, message)
    dataset: str | None = None
    # The status's record of this spec's Job once it finished (see finished_record): all that
    # is left of the Job after the TTL controller deleted it.
    finished: Mapping[str, Any] | None = None
    duplicate: str | None = None  # another ParisExpert claims the same store prefix (claims.py)
    refused: bool = False  # ... and keeps it: this one gets no Job
    conflict: str | None = None  # an object with a child's name that this resource does not own
    replacing: str | None = None  # a replaced Job (or its pods) still going away
    malformed: Sequence[str] = ()  # progress.json / latest.json ignored, and why
    pod_message: str | None = None  # what the failed trainer said (its termination message)
    prefix: str | None = None  # the store prefix it trains into (its fingerprint's version)
    fingerprint: Mapping[str, Any] | None = None  # paris.fingerprint record of that version


@dataclass
class Computed:
    status: dict[str, Any]
    transition: Transition | None = None


def _job_condition(job: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return c
    return None


def queue_of(job: Mapping[str, Any] | None) -> str | None:
    """The Kueue queue a Job waits in (its queue label), if any."""
    return ((job or {}).get("metadata", {}).get("labels") or {}).get(KUEUE_QUEUE_LABEL)


def job_outcome(job: Mapping[str, Any] | None) -> tuple[str, str, str]:
    """(phase, reason, message) of a Job: Pending / Queued (suspended, e.g. until Kueue admits
    it) / Training (a pod is ready) / Succeeded / Failed."""
    if job is None:
        return PENDING, "JobNotCreated", "the training Job does not exist yet"
    if c := _job_condition(job, "Complete"):
        return SUCCEEDED, "JobComplete", c.get("message") or "the training Job completed"
    if c := _job_condition(job, "Failed"):
        return FAILED, c.get("reason") or "JobFailed", c.get("message") or "the training Job failed"
    if (job.get("spec") or {}).get("suspend"):
        queue = queue_of(job)
        return QUEUED, "Queued", f"waiting for Kueue to admit it from queue {queue}" if queue else "Job suspended"
    st = job.get("status") or {}
    if st.get("ready") or 0:
        return TRAINING, "PodRunning", "the trainer pod is running"
    if st.get("active") or 0:
        return PENDING, "PodStarting", "waiting for the trainer pod to start"
    return PENDING, "JobCreated", "waiting for the Job controller"


def admission(job: Mapping[str, Any] | None, t: str) -> dict[str, Any] | None:
    """The `Admitted` condition of a Job in a Kueue queue, read from the Job itself: Kueue
    admits a Job by unsuspending it, and the Job controller's `Suspended` condition says since
    when it waits or runs. None for a Job in no queue."""
    queue = queue_of(job)
    if job is None or not queue:
        return None
    conditions = (job.get("status") or {}).get("conditions") or []
    since = next((c.get("lastTransitionTime") for c in conditions if c.get("type") == "Suspended"), None)
    if (job.get("spec") or {}).get("suspend"):
        return condition("Admitted", False, "Queued", f"waiting in Kueue queue {queue}", since or t)
    return condition("Admitted", True, "Admitted", f"admitted by Kueue from queue {queue}", since or t)


def finished_record(job: Mapping[str, Any] | None, pod_message: str | None = None) -> dict[str, Any] | None:
    """What the status keeps of a finished Job, so the outcome outlives the Job (TTL cleanup):
    its name, the spec hash it ran, and its phase, reason, message (with what the failed
    trainer said) and end time."""
    phase, reason, message = _outcome(job, None, pod_message)
    if job is None or phase not in (SUCCEEDED, FAILED):
        return None
    end = _job_condition(job, "Complete" if phase == SUCCEEDED else "Failed") or {}
    return {
        "name": job["metadata"]["name"],
        "specHash": (job["metadata"].get("annotations") or {}).get(SPEC_HASH),
        "phase": phase,
        "reason": reason,
        "message": message,
        "completionTime": (job.get("status") or {}).get("completionTime") or end.get("lastTransitionTime"),
    }


def recorded_finish(old: Mapping[str, Any] | None, name: str, spec_hash: str) -> Mapping[str, Any] | None:
    """The status's record of the Job `name` running `spec_hash`, if it finished: then a
    missing Job is one that was cleaned up, not one to create."""
    rec = (old or {}).get("finishedJob")
    if isinstance(rec, Mapping) and rec.get("name") == name and rec.get("specHash") == spec_hash:
        return rec
    return None


def trained_record(name: str, spec_hash: str, progress: Mapping[str, Any] | None, steps: int) -> dict[str, Any] | None:
    """A record for a Job nobody saw finish (the operator was away while it ended and was
    cleaned up): the trainer's progress.json says it is done at the spec's step count. A new
    Job would only resume from that last checkpoint and stop at once."""
    p = progress or {}
    step = int(p.get("step") or 0)
    if p.get("state") != "done" or step < steps:
        return None
    return {
        "name": name,
        "specHash": spec_hash,
        "phase": SUCCEEDED,
        "reason": "TrainingDone",
        "message": f"the store holds the final checkpoint (step {step}); its Job is gone",
        "completionTime": None,
    }


def _outcome(
    job: Mapping[str, Any] | None, finished: Mapping[str, Any] | None, pod_message: str | None = None
) -> tuple[str, str, str]:
    if job is None and finished is not None:
        return finished["phase"], finished["reason"], finished["message"]
    phase, reason, message = job_outcome(job)
    if phase == FAILED and pod_message and pod_message not in message:
        message = f"{message}: {pod_message}"
    return phase, reason, message


def last_words(message: str | None) -> str | None:
    """The line of a trainer's termination message (its log tail, FallbackToLogsOnError) that
    says why it stopped: its `error:` line (paris.cli prints one for every user mistake), else
    the last line."""
    lines = [ln.strip() for ln in (message or "").splitlines() if ln.strip()]
    if not lines:
        return None
    said = next((ln for ln in reversed(lines) if ln.startswith("error:")), lines[-1])
    return said[:500]


def flag(
    old: Sequence[Mapping[str, Any]] | None, type_: str, problem: str | None, reason: str, t: str
) -> dict[str, Any] | None:
    """A condition that only matters while something is wrong: True with the problem, False
    once it is gone (so a stale True never lingers), absent when it never happened."""
    if problem is not None:
        return condition(type_, True, reason, problem, t)
    if any(c.get("type") == type_ for c in old or []):
        return condition(type_, False, "Resolved", "", t)
    return None


def _record(
    job: Mapping[str, Any] | None, finished: Mapping[str, Any] | None, pod_message: str | None = None
) -> dict[str, Any] | None:
    return finished_record(job, pod_message) if job is not None else (dict(finished) if finished is not None else None)


def expert_status(old: Mapping[str, Any] | None, f: ExpertFacts) -> Computed:
    """The full status of a ParisExpert from the facts of one reconcile."""
    old = old or {}
    t = now()
    if f.invalid_spec is not None:
        phase, reason, message = FAILED, "InvalidSpec", f.invalid_spec
    elif f.refused and f.duplicate is not None:
        phase, reason, message = FAILED, "DuplicateExpert", f.duplicate
    elif f.conflict is not None:
        phase, reason, message = PENDING, "ChildConflict", f.conflict
    elif f.replacing is not None:
        phase, reason, message = PENDING, "ReplacingJob", f.replacing
    elif f.job is None and f.secret_problem is not None:
        phase, reason, message = PENDING, "SecretNotReady", f.secret_problem
    elif f.job is None and f.finished is None and f.dataset_problem is not None:
        phase, (reason, message) = PENDING, f.dataset_problem
    else:
        phase, reason, message = _outcome(f.job, f.finished, f.pod_message)
        if phase == PENDING and f.secret_problem is not None:
            reason, message = "SecretNotReady", f.secret_problem
        elif phase == PENDING and f.pod_problem is not None:
            reason, message = "PodNotStarting", f.pod_problem

    p = f.progress or {}
    total = f.total_steps or int(p.get("total") or 0)
    step = int(p.get("step") or old.get("step") or 0)
    if phase == SUCCEEDED:
        step = max(step, total)
    status: dict[str, Any] = {
        "phase": phase,
        "reason": reason,
        "message": message,
        "observedGeneration": f.generation,
        "step": step,
        "totalSteps": total,
        "progress": f"{step}/{total}",
    }
    if f.prefix:
        status["prefix"] = f.prefix
    if f.fingerprint:
        status["fingerprint"] = dict(f.fingerprint)
    record = _record(f.job, f.finished, f.pod_message)
    status["jobName"] = (f.job or {}).get("metadata", {}).get("name") or (record or {}).get("name")
    status["finishedJob"] = record  # None removes a stale record (a merge patch deletes null keys)
    for key, src in (("loss", "loss"), ("samplesPerSecond", "samples_per_s"), ("device", "device")):
        value = p.get(src, old.get(key))
        if value is not None:
            status[key] = round(value, 5) if isinstance(value, float) else value
    if f.checkpoint or old.get("checkpoint"):
        status["checkpoint"] = f.checkpoint or old.get("checkpoint")
    job_status = (f.job or {}).get("status") or {}
    start = old.get("startTime") or job_status.get("startTime")
    if start:
        status["startTime"] = start
    if phase in (SUCCEEDED, FAILED):
        status["completionTime"] = old.get("completionTime") or (record or {}).get("completionTime") or t
    failures = job_status.get("failed") or (old.get("podFailures") if f.job is None else None)
    if failures:
        status["podFailures"] = failures

    conds = [
        condition(
            "SecretReady",
            f.secret_problem is None,
            "SecretFound" if f.secret_problem is None else "SecretNotReady",
            f.secret_problem or "",
            t,
        ),
        condition(
            "Created",
            f.job is not None or record is not None,
            "JobCreated" if f.job is not None or record is not None else reason,
            "" if f.job is not None or record is not None else message,
            t,
        ),
        condition("Running", phase == TRAINING, reason, message if phase == TRAINING else "", t),
        condition(
            "Succeeded",
            phase == SUCCEEDED,
            reason if phase == SUCCEEDED else "NotFinished",
            message if phase == SUCCEEDED else "",
            t,
        ),
        condition(
            "Failed", phase == FAILED, reason if phase == FAILED else "NotFailed", message if phase == FAILED else "", t
        ),
    ]
    if (admitted := admission(f.job, t)) is not None:
        conds.append(admitted)
    if f.dataset is not None:
        problem = f.dataset_problem
        conds.append(
            condition(
                "DatasetReady",
                problem is None,
                problem[0] if problem else "DatasetReady",
                problem[1] if problem else f"ParisDataset {f.dataset} is Ready",
                t,
            )
        )
    if f.storage_problem is not None:
        conds.append(condition("StorageReachable", False, "StorageUnreachable", f.storage_problem, t))
    elif f.secret_problem is None and f.invalid_spec is None:
        conds.append(condition("StorageReachable", True, "ProgressRead", "", t))
    before = old.get("conditions")
    for extra in (
        flag(before, "Duplicate", f.duplicate, "DuplicateExpert", t),
        flag(before, "ChildConflict", f.conflict, "NotOwned", t),
        flag(before, "ProgressMalformed", "; ".join(f.malformed) or None, "MalformedProgress", t),
    ):
        if extra is not None:
            conds.append(extra)
    status["conditions"] = merge_conditions(before, conds)
    return Computed(status, _transition(old, phase, reason, message))


def _transition(old: Mapping[str, Any], phase: str, reason: str, message: str) -> Transition | None:
    before = old.get("phase")
    if before == phase and old.get("reason") == reason:
        return None
    warning = phase == FAILED or reason.endswith(("NotReady", "NotFound")) or reason in WARNING_REASONS
    return Transition(before, phase, reason, message, warning=warning)


# Reasons a user must act on, whatever the phase: posted as Warning events.
WARNING_REASONS = frozenset({"ChildConflict", "DuplicateExpert", "InvalidSelection", "NotEnoughExperts", "Degraded"})


@dataclass
class RouterFacts:
    generation: int
    ensemble: Ensemble  # the selected experts, sorted into succeeded / failed / waiting
    secret_problem: str | None = None
    job: Mapping[str, Any] | None = None  # the training Job of the experts it trains over now
    deployment: Mapping[str, Any] | None = None
    endpoint: str | None = None
    invalid_spec: str | None = None
    replicas: int = 1
    finished: Mapping[str, Any] | None = None  # the record of the training Job, once gone
    conflict: str | None = None  # a child's name taken by an object this router does not own
    replacing: str | None = None  # an older router training still going away
    pod_message: str | None = None  # what the failed router trainer said
    prefix: str | None = None  # the store prefix the router trains into (its fingerprint's version)
    fingerprint: Mapping[str, Any] | None = None
    grown_from: str | None = None  # the prefix of the served router it grows from (new experts joined)
    storage_problem: str | None = None  # the dataset's manifest could not be read


def deployment_available(dep: Mapping[str, Any] | None, replicas: int) -> bool:
    """Rolled out: the controller saw the latest spec, and every replica is updated and ready
    with no old pod left."""
    if dep is None:
        return False
    st = dep.get("status") or {}
    if (st.get("observedGeneration") or 0) < (dep.get("metadata", {}).get("generation") or 0):
        return False
    updated, ready, total = (st.get(k) or 0 for k in ("updatedReplicas", "readyReplicas", "replicas"))
    return updated >= replicas and ready >= replicas and total == updated


def served_experts(dep: Mapping[str, Any] | None) -> list[str] | None:
    """The ParisExperts in the pipeline a Deployment serves (builders.SERVED_EXPERTS)."""
    raw = ((dep or {}).get("metadata", {}).get("annotations") or {}).get(SERVED_EXPERTS)
    return None if raw is None else [n for n in raw.split(",") if n]


def router_status(old: Mapping[str, Any] | None, f: RouterFacts) -> Computed:
    old = old or {}
    t = now()
    ens = f.ensemble
    ready = sorted(ens.succeeded)
    use = ens.use()
    train_phase, train_reason, train_msg = _outcome(f.job, f.finished, f.pod_message)
    if use is None and f.job is None and f.finished is None:
        train_phase, train_reason, train_msg = PENDING, "WaitingForExperts", "no router training for these experts yet"
    available = deployment_available(f.deployment, f.replicas)
    served = served_experts(f.deployment) if f.deployment is not None else None
    missing = ens.missing(served if served is not None and available else ens.names_of(use or {}))
    selection = f"{len(ready)}/{len(ens.selected)} experts succeeded (at least {ens.minimum} needed)"
    if ens.failed:
        selection += f"; failed: {', '.join(sorted(ens.failed))}"

    if f.invalid_spec is not None:
        phase, reason, message = FAILED, "InvalidSpec", f.invalid_spec
    elif ens.problem is not None:
        phase, reason, message = FAILED, "InvalidSelection", ens.problem
    elif f.conflict is not None:
        phase, reason, message = (DEPLOYING if train_phase == SUCCEEDED else PENDING), "ChildConflict", f.conflict
    elif use is None and available:
        # Waiting for experts while an earlier pipeline serves: keep serving it.
        phase, reason = (DEGRADED, "Degraded") if missing else (READY, "Available")
        message = f"serving at {f.endpoint}" + (f"; missing: {', '.join(missing)}" if missing else "")
    elif use is None:
        if not ens.selected:
            phase, reason, message = PENDING, "WaitingForExperts", "no ParisExpert matches spec.experts"
        elif ens.settled:
            phase, reason, message = FAILED, "NotEnoughExperts", selection
        else:
            phase, reason, message = PENDING, "WaitingForExperts", selection
    elif f.replacing is not None:
        phase, reason, message = TRAINING, "ReplacingJob", f.replacing
    elif f.job is None and f.finished is None and f.storage_problem is not None:
        phase, reason, message = PENDING, "StorageUnreachable", f.storage_problem
    elif f.job is None and f.secret_problem is not None:
        phase, reason, message = PENDING, "SecretNotReady", f.secret_problem
    elif train_phase != SUCCEEDED:
        phase = train_phase if train_phase in (FAILED, QUEUED) else TRAINING
        reason = {FAILED: "RouterTrainingFailed", QUEUED: "Queued"}.get(train_phase, "TrainingRouter")
        message = train_msg
    elif not available:
        phase, reason, message = DEPLOYING, "RollingOut", "waiting for the inference Deployment to become available"
    elif missing:
        phase, reason = DEGRADED, "Degraded"
        message = f"serving {len(use)}/{len(ens.selected)} experts at {f.endpoint}; missing: {', '.join(missing)}"
    else:
        phase, reason, message = READY, "Available", f"serving at {f.endpoint}"

    dst = (f.deployment or {}).get("status") or {}
    status: dict[str, Any] = {
        "phase": phase,
        "reason": reason,
        "message": message,
        "observedGeneration": f.generation,
        "expertsReady": f"{len(ready)}/{max(ens.minimum, len(ens.selected))}",
        "readyExperts": ready,
        "missingExperts": missing,
        "servedExperts": served if served is not None else [],
        "readyReplicas": dst.get("readyReplicas") or 0,
    }
    if f.prefix:
        status["prefix"] = f.prefix
    if f.fingerprint:
        status["fingerprint"] = dict(f.fingerprint)
    status["grownFrom"] = f.grown_from  # None (removed by the merge patch) for a router trained from scratch
    record = _record(f.job, f.finished, f.pod_message)
    status["trainJob"] = (f.job or {}).get("metadata", {}).get("name") or (record or {}).get("name")
    status["finishedJob"] = record
    if f.endpoint:
        status["endpoint"] = f.endpoint
    start = old.get("startTime") or ((f.job or {}).get("status") or {}).get("startTime")
    if start:
        status["startTime"] = start
    if phase in (READY, DEGRADED):
        status["completionTime"] = old.get("completionTime") or t
    enough = use is not None
    conds = [
        condition("ExpertsReady", enough, "ExpertsSucceeded" if enough else "WaitingForExperts", selection, t),
        condition("RouterTrained", train_phase == SUCCEEDED, train_reason, train_msg, t),
        condition(
            "Available",
            available,
            "DeploymentAvailable" if available else "DeploymentNotAvailable",
            f.endpoint or "" if available else "",
            t,
        ),
        condition(
            "Degraded",
            phase == DEGRADED,
            "ExpertsMissing" if phase == DEGRADED else "AllExpertsServed",
            f"missing: {', '.join(missing)}" if phase == DEGRADED else "",
            t,
        ),
    ]
    if (admitted := admission(f.job, t)) is not None:
        conds.append(admitted)
    if f.secret_problem is not None:
        conds.append(condition("SecretReady", False, "SecretNotReady", f.secret_problem, t))
    before = old.get("conditions")
    for extra in (
        flag(before, "ChildConflict", f.conflict, "NotOwned", t),
        flag(before, "InvalidSelection", ens.problem, "InvalidSelection", t),
    ):
        if extra is not None:
            conds.append(extra)
    status["conditions"] = merge_conditions(before, conds)
    return Computed(status, _transition(old, phase, reason, message))


def changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level status keys whose value differs (what a merge patch needs to send)."""
    old = old or {}
    return {k: v for k, v in new.items() if old.get(k) != v}


# ---- ParisDataset ------------------------------------------------------------------------------

PREPARING = "Preparing"
DATASET_STAGES = ("features", "cluster", "encode", "finalize")
INDEXED_STAGES = ("features", "encode")


@dataclass
class DatasetFacts:
    generation: int
    indexes: int
    jobs: Mapping[str, Mapping[str, Any] | None]  # stage -> its Job (this spec's), None if absent
    finished: Mapping[str, Mapping[str, Any]]  # stage -> the status's record of its finished Job
    secret_problem: str | None = None
    invalid_spec: str | None = None
    manifest: Mapping[str, Any] | None = None  # the dataset manifest once finalize ran
    storage_problem: str | None = None


def indexes_done(job: Mapping[str, Any] | None, indexes: int) -> int:
    """Indexes of an Indexed Job that succeeded (each counts once, retries or not)."""
    if job is None:
        return 0
    if _job_condition(job, "Complete"):
        return indexes
    return int((job.get("status") or {}).get("succeeded") or 0)


def dataset_status(old: Mapping[str, Any] | None, f: DatasetFacts) -> Computed:
    """The full status of a ParisDataset: the first stage not yet done decides the phase."""
    old = old or {}
    t = now()
    records: dict[str, Any] = {}
    stage, stage_phase, reason, message = DATASET_STAGES[0], PENDING, "JobNotCreated", ""
    for name in DATASET_STAGES:
        job, rec = f.jobs.get(name), f.finished.get(name)
        stage = name
        stage_phase, reason, message = _outcome(job, rec)
        if (r := _record(job, rec)) is not None:
            records[name] = r
        if stage_phase != SUCCEEDED:
            break
    ready = stage == DATASET_STAGES[-1] and stage_phase == SUCCEEDED and f.manifest is not None
    if f.invalid_spec is not None:
        phase, reason, message = FAILED, "InvalidSpec", f.invalid_spec
    elif f.jobs.get(stage) is None and f.secret_problem is not None:
        phase, reason, message = PENDING, "SecretNotReady", f.secret_problem
    elif ready:
        phase, reason, message = READY, "Prepared", f"{(f.manifest or {}).get('num_samples')} samples"
    elif stage_phase == FAILED:
        phase, reason = FAILED, f"{stage.capitalize()}Failed"
    elif stage_phase == SUCCEEDED:  # finalize done, manifest not read yet (store unreachable)
        phase, reason, message = PREPARING, "ReadingManifest", f.storage_problem or "reading the manifest"
    elif stage_phase == QUEUED:
        phase = QUEUED
    else:
        phase = PREPARING if stage != DATASET_STAGES[0] or f.jobs.get(stage) is not None else PENDING
        reason = reason if phase == PENDING else f"{stage.capitalize()}Running"

    total = f.indexes if stage in INDEXED_STAGES else 1
    done = total if stage_phase == SUCCEEDED else indexes_done(f.jobs.get(stage), f.indexes) if total > 1 else 0
    status: dict[str, Any] = {
        "phase": phase,
        "reason": reason,
        "message": message,
        "observedGeneration": f.generation,
        "stage": "done" if ready else stage,
        "indexesDone": f"{done}/{total}",
        "stages": records or None,
    }
    m = f.manifest
    if m is not None:
        status["samples"] = int(m.get("num_samples") or 0)
        status["heldOut"] = int((m.get("holdout") or {}).get("size") or 0)
        status["clusterSizes"] = [int(c["size"]) for c in m.get("clusters") or []]
        status["skipped"] = int((m.get("skipped") or {}).get("count") or 0)
    start = old.get("startTime") or (((f.jobs.get("features") or {}).get("status") or {}).get("startTime"))
    if start:
        status["startTime"] = start
    if phase in (READY, FAILED):
        status["completionTime"] = old.get("completionTime") or t
    conds = [
        condition(
            "SecretReady",
            f.secret_problem is None,
            "SecretFound" if f.secret_problem is None else "SecretNotReady",
            f.secret_problem or "",
            t,
        ),
        condition("Ready", ready, "Prepared" if ready else reason, message if ready else "", t),
        condition(
            "Failed", phase == FAILED, reason if phase == FAILED else "NotFailed", message if phase == FAILED else "", t
        ),
    ]
    if (admitted := admission(f.jobs.get(stage), t)) is not None:
        conds.append(admitted)
    status["conditions"] = merge_conditions(old.get("conditions"), conds)
    return Computed(status, _transition(old, phase, reason, message))


def dataset_problem(dataset: Mapping[str, Any] | None, name: str) -> tuple[str, str] | None:
    """Why an expert naming ParisDataset `name` must wait: (reason, message), or None."""
    if dataset is None:
        return "DatasetNotFound", f"ParisDataset {name} does not exist in this namespace"
    st = dataset.get("status") or {}
    if st.get("phase") == READY:
        return None
    if st.get("phase") == FAILED:
        return "DatasetFailed", f"ParisDataset {name} failed: {st.get('message') or st.get('reason')}"
    return "DatasetNotReady", f"ParisDataset {name} is {st.get('phase') or 'Pending'} (stage {st.get('stage', '-')})"
