"""Pure functions from a custom resource to the child objects it owns (plain dicts).

Nothing here talks to the API: every child is a function of (resource, spec, settings), so
the same input always yields the same object with the same deterministic name. That is what
makes re-running a reconcile after an operator restart harmless (create-or-get by name).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf
import yaml

from paris.config import (
    API_GROUP,
    KUEUE_QUEUE_LABEL,
    SERVE_TOKEN_ENV,
    BatchJobOptions,
    DataConfig,
    OperatorSettings,
    ParisDatasetSpec,
    ParisExpertSpec,
    ParisRouterSpec,
    PodPlacement,
    RunConfig,
    S3Storage,
    SampleConfig,
    SecretKey,
    StorageConfig,
)
from paris.errors import USER_ERROR_EXIT
from paris.fingerprint import (
    GROWN_FROM,
    Fingerprint,
    dataset_checksum,
    expert_fingerprint,
    grown_fingerprint,
    router_fingerprint,
)
from paris.layout import expert_prefix, router_prefix, versioned

MANAGED_BY = "paris-operator"
SPEC_HASH = f"{API_GROUP}/spec-hash"
GENERATION = f"{API_GROUP}/generation"  # the resource generation a Job was built for
TRAINER_UID = 10001  # the non-root user of images/trainer/Dockerfile

# Env names a torch.distributed launcher would read. A Paris trainer must never see them: the
# experts share nothing (a unit test asserts no builder emits any of these).
GPU_RESOURCE = "nvidia.com/gpu"
DISTRIBUTED_ENV = frozenset(
    {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK"}
)

Body = Mapping[str, Any]


# ---- names, labels, owners ------------------------------------------------------------------


def child_name(parent: str, suffix: str, limit: int = 63) -> str:
    """`<parent>-<suffix>`, shortened with a hash when too long for a label value (Job pods
    carry their Job's name as a label, so 63 is the real limit)."""
    name = f"{parent}-{suffix}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    keep = limit - len(suffix) - len(digest) - 2
    return f"{parent[:keep].rstrip('-.')}-{digest}-{suffix}"


def expert_job_name(name: str) -> str:
    return child_name(name, "train")


def router_job_name(name: str, spec_hash: str) -> str:
    return child_name(name, f"train-{spec_hash[:8]}")


def serve_name(name: str) -> str:
    return child_name(name, "serve")


def digest(obj: Any) -> str:
    """A stable short hash of a JSON-able object (dict order does not matter)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def generation(body: Body) -> int:
    """The resource's metadata.generation (1 before the API server has set one)."""
    return int(body["metadata"].get("generation") or 1)


_OWNER_LABEL = {"ParisExpert": "expert", "ParisRouter": "router", "ParisDataset": "dataset"}


def labels(body: Body, component: str, model: str, **extra: str) -> dict[str, str]:
    owner_label = f"{API_GROUP}/{_OWNER_LABEL[body['kind']]}"
    return {
        "app.kubernetes.io/name": "paris",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/instance": body["metadata"]["name"],
        "app.kubernetes.io/managed-by": MANAGED_BY,
        f"{API_GROUP}/model": model,
        owner_label: body["metadata"]["name"],
        **{f"{API_GROUP}/{k}": v for k, v in extra.items()},
    }


def serve_selector(body: Body) -> dict[str, str]:
    """The serving pods of one router: the Deployment's selector and the Service's."""
    return {"app.kubernetes.io/instance": body["metadata"]["name"], "app.kubernetes.io/component": "serve"}


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    """The uid of the object's controller (its owner reference with controller: true)."""
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def owns(body: Body, obj: Mapping[str, Any]) -> bool:
    """Whether `body` is the controller of `obj`: only then may the operator change or delete
    it. A namesake someone else made is left alone, whatever its labels say."""
    return controller_uid(obj) == body["metadata"].get("uid")


def not_owned(body: Body, obj: Mapping[str, Any]) -> str:
    """The one line a resource's status shows for a child's name taken by an object it does not own."""
    meta = obj["metadata"]
    owner = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), None)
    by = f"{owner.get('kind')} {owner.get('name')}" if owner else "nobody"
    return (
        f"{obj.get('kind', 'object')} {meta.get('namespace')}/{meta['name']} exists and is controlled by {by}, "
        f"not by {body['kind']} {body['metadata']['name']}: left alone; delete or rename it (or this resource)"
    )


def child(
    body: Body,
    api_version: str,
    kind: str,
    name: str,
    lbls: dict[str, str],
    spec: dict[str, Any],
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A child object owned by `body`. kopf.adopt() adds the controller owner reference
    (deleting the resource garbage-collects the child), the resource's namespace and its
    labels under ours; it only edits the dict it is given, so builders stay pure."""
    obj: dict[str, Any] = {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": name, "labels": dict(lbls), "annotations": dict(annotations or {})},
        "spec": spec,
    }
    kopf.adopt(obj, owner=dict(body))
    return obj


# ---- pods ------------------------------------------------------------------------------------


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def placement(spec: PodPlacement, settings: OperatorSettings) -> dict[str, Any]:
    """nodeSelector / tolerations / affinity / resources: the pool's defaults, then the spec's
    own values on top (the spec wins key by key)."""
    pool = settings.pools.get(spec.pool or "")
    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    resources: dict[str, dict[str, Any]] = {}
    if pool is not None:
        node_selector.update(pool.node_selector)
        tolerations += [_dump(t) for t in pool.tolerations]
        for part, values in _dump(pool.resources).items():
            resources.setdefault(part, {}).update(values)
    if spec.pool:
        node_selector[settings.pool_label] = spec.pool
    node_selector.update(spec.node_selector)
    for t in (_dump(t) for t in spec.tolerations):
        if t not in tolerations:
            tolerations.append(t)
    for part, values in _dump(spec.resources).items():
        resources.setdefault(part, {}).update(values)
    out: dict[str, Any] = {"resources": {k: {n: str(q) for n, q in v.items()} for k, v in resources.items()}}
    if node_selector:
        out["nodeSelector"] = node_selector
    if tolerations:
        out["tolerations"] = tolerations
    if spec.affinity:
        out["affinity"] = spec.affinity
    return out


def s3_endpoint(storage: S3Storage, settings: OperatorSettings) -> str | None:
    return storage.endpoint or settings.s3_endpoint


def secret_name(storage: S3Storage, settings: OperatorSettings) -> str:
    return storage.secret_name or settings.credentials_secret


def storage_config(storage: S3Storage, settings: OperatorSettings) -> StorageConfig:
    return StorageConfig(
        uri=storage.uri,
        endpoint=s3_endpoint(storage, settings),
        secure=storage.secure,
        region=storage.region,
        retry_deadline=storage.retry_deadline_seconds,
    )


def storage_env(storage: S3Storage, settings: OperatorSettings) -> list[dict[str, Any]]:
    """Endpoint as a value, credentials only as Secret references (never in args or status)."""
    secret = secret_name(storage, settings)
    env: list[dict[str, Any]] = []
    endpoint = s3_endpoint(storage, settings)
    if endpoint:
        env.append({"name": "PARIS_S3_ENDPOINT", "value": endpoint})
    for var, key in (("AWS_ACCESS_KEY_ID", storage.access_key_key), ("AWS_SECRET_ACCESS_KEY", storage.secret_key_key)):
        env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    return env


def config_yaml(cfg: RunConfig) -> str:
    """The whole RunConfig as YAML text, for env PARIS_CONFIG (no file to mount)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=True)


# The root filesystem is read-only: the one writable place is an emptyDir at /tmp (downloads,
# checkpoints before upload), and the libraries' caches are pointed into it.
SCRATCH = "/tmp"
SCRATCH_ENV = {"XDG_CACHE_HOME": f"{SCRATCH}/.cache", "HF_HOME": f"{SCRATCH}/huggingface"}


def pod_env(
    cfg: RunConfig,
    storage: S3Storage,
    settings: OperatorSettings,
    secrets: Mapping[str, SecretKey] | None = None,
    **extra: str,
) -> list[dict[str, Any]]:
    """Every paris pod's environment: its config, the store (credentials by reference only),
    caches in the scratch volume, unbuffered output for `kubectl logs`, and the container's own
    `extra` variables and `secrets` (env name -> Secret key, by reference)."""
    return [
        {"name": "PARIS_CONFIG", "value": config_yaml(cfg)},
        *storage_env(storage, settings),
        *({"name": k, "value": v} for k, v in {**SCRATCH_ENV, **extra}.items()),
        *(
            {"name": k, "valueFrom": {"secretKeyRef": {"name": ref.secret_name, "key": ref.key}}}
            for k, ref in (secrets or {}).items()
        ),
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]


def pod_spec(
    spec: PodPlacement,
    settings: OperatorSettings,
    container: dict[str, Any],
    restart_policy: str,
) -> dict[str, Any]:
    where = placement(spec, settings)
    c = {
        "image": spec.image or settings.trainer_image,
        "imagePullPolicy": spec.image_pull_policy,
        "resources": where.pop("resources"),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
        },
        "volumeMounts": [{"name": "scratch", "mountPath": SCRATCH}],
        # A failed container's log tail becomes its termination message: the trainer's one
        # `error:` line reaches the Job's pod status, and from there the resource's status.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        **container,
    }
    return {
        "restartPolicy": restart_policy,
        # Trainers and servers only talk to the object store: no API token in the pod.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": TRAINER_UID,
            "runAsGroup": TRAINER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [c],
        "volumes": [{"name": "scratch", "emptyDir": {}}],
        **where,
    }


# ---- Jobs: queueing and cleanup ---------------------------------------------------------------


def ttl_seconds(opts: BatchJobOptions, settings: OperatorSettings) -> int | None:
    """The Job's ttlSecondsAfterFinished: the resource's, else the operator's default; never
    less than three status polls, so the operator sees the finished Job and records its
    outcome in the status before the TTL controller deletes it."""
    ttl = opts.ttl_seconds_after_finished
    if ttl is None:
        ttl = settings.ttl_seconds_after_finished
    return None if ttl is None else max(ttl, math.ceil(3 * settings.poll_seconds))


def pod_failure_policy(container: str) -> dict[str, Any]:
    """What a failed pod means to its Job. A disruption (preemption, eviction, node drain:
    the pod's DisruptionTarget condition) is not the trainer's fault and costs no retry; the
    next pod resumes from latest.json. A user's mistake (paris.errors.USER_ERROR_EXIT) fails the
    same way on every retry, so the Job fails at once. Anything else (a crash, an outage past
    the store's deadline) is retried within backoffLimit."""
    return {
        "rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": container, "operator": "In", "values": [USER_ERROR_EXIT]},
            },
        ]
    }


def batch_job(
    body: Body,
    opts: BatchJobOptions,
    settings: OperatorSettings,
    name: str,
    lbls: dict[str, str],
    job_spec: dict[str, Any],
    spec_hash: str | None = None,
) -> dict[str, Any]:
    """A batch/v1 Job owned by `body`, queued in Kueue and cleaned up as the resource asks.

    With a queue, the Job carries Kueue's queue label and starts suspended: Kueue admits it by
    unsuspending it. The spec hash (default: of `job_spec`) leaves out `suspend` (Kueue flips
    it), the TTL (a new cleanup time must not restart a training) and the failure policy (nor
    must an operator upgrade), and the grace period on SIGTERM (how long a stop may take, not
    what trains)."""
    annotations = {SPEC_HASH: spec_hash or digest(job_spec), GENERATION: str(generation(body))}
    job_spec = dict(job_spec)
    job_spec["podFailurePolicy"] = pod_failure_policy(job_spec["template"]["spec"]["containers"][0]["name"])
    pod = {**job_spec["template"]["spec"], "terminationGracePeriodSeconds": opts.termination_grace_period_seconds}
    job_spec["template"] = {**job_spec["template"], "spec": pod}
    job_lbls = dict(lbls)
    ttl = ttl_seconds(opts, settings)
    if ttl is not None:
        job_spec["ttlSecondsAfterFinished"] = ttl
    if opts.queue_name:
        job_lbls[KUEUE_QUEUE_LABEL] = opts.queue_name
        job_spec["suspend"] = True
    return child(body, "batch/v1", "Job", name, job_lbls, job_spec, annotations)


# ---- ParisExpert -> Job -------------------------------------------------------------------


def expert_run_config(spec: ParisExpertSpec, settings: OperatorSettings) -> RunConfig:
    return RunConfig(
        model=spec.model,
        storage=storage_config(spec.storage, settings),
        data=spec.data,
        expert=spec.expert,
        train=spec.train,
    )


def expert_gpus(spec: ParisExpertSpec, settings: OperatorSettings) -> int:
    """The GPUs an expert's pod gets: spec.gpus, else the nvidia.com/gpu limit that its
    resources or its pool's defaults set (0 on a CPU pool)."""
    if spec.gpus is not None:
        return spec.gpus
    limit = placement(spec, settings)["resources"].get("limits", {}).get(GPU_RESOURCE, "0")
    return int(limit) if str(limit).isdigit() else 0


def trainer_command(gpus: int, *args: str) -> list[str]:
    """`paris ...`, or with several GPUs `torchrun --standalone` and one rank per GPU: the
    ranks rendezvous on the pod's loopback, so the collective never leaves the pod."""
    if gpus > 1:
        return ["torchrun", "--standalone", f"--nproc-per-node={gpus}", "-m", "paris", *args]
    return ["paris", *args]


def build_expert_job(
    body: Body, spec: ParisExpertSpec, settings: OperatorSettings, prefix: str | None = None
) -> dict[str, Any]:
    """One batch/v1 Job running `paris train expert --cluster K --prefix P` (P: the versioned
    prefix of the spec's fingerprint, expert_version), under torchrun when the pod has several
    GPUs; the Job's retries are the fault tolerance (each new pod resumes from latest.json
    there)."""
    lbls = labels(body, "expert", spec.model, cluster=str(spec.cluster))
    gpus = expert_gpus(spec, settings)
    where = ["--prefix", prefix] if prefix else []
    container = {
        "name": "trainer",
        "command": trainer_command(gpus, "train", "expert", "--cluster", str(spec.cluster), *where),
        "env": pod_env(expert_run_config(spec, settings), spec.storage, settings),
    }
    pod = pod_spec(spec, settings, container, restart_policy="Never")
    if spec.gpus is not None:
        pod["containers"][0]["resources"].setdefault("limits", {})[GPU_RESOURCE] = str(spec.gpus)
    if gpus > 1:  # NCCL's shared-memory transport outgrows a container's default 64 MiB /dev/shm
        pod["containers"][0]["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})
        pod["volumes"].append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        "template": {"metadata": {"labels": lbls}, "spec": pod},
    }
    if spec.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    return batch_job(body, spec, settings, expert_job_name(body["metadata"]["name"]), lbls, job_spec)


# ---- ParisRouter -> Job, Deployment, Service ----------------------------------------------------


def router_run_config(spec: ParisRouterSpec, settings: OperatorSettings) -> RunConfig:
    inf = spec.inference
    return RunConfig(
        model=spec.model,
        storage=storage_config(spec.storage, settings),
        data=spec.data,
        router=spec.router,
        sample=SampleConfig(steps=inf.steps, guidance=inf.guidance, shift=inf.shift, routing=[inf.routing]),
        serve=inf.serve,
    )


ExpertSet = Mapping[int, str]  # cluster -> the store prefix its expert trained into


def expert_args(experts: ExpertSet) -> list[str]:
    """`--expert K=PREFIX` for each expert, by cluster: what `paris train router` trains over."""
    return [a for k in sorted(experts) for a in ("--expert", f"{k}={experts[k]}")]


def expert_store_prefix(spec: ParisExpertSpec) -> str:
    """Where a ParisExpert's checkpoints go without a version (its status publishes the
    versioned one, expert_version, for the router)."""
    return expert_prefix(spec.model, spec.cluster)


def expert_version(spec: ParisExpertSpec, manifest: Mapping[str, Any]) -> tuple[Fingerprint, str]:
    """The expert's fingerprint for this dataset, and the prefix it trains into."""
    checksum = dataset_checksum(manifest, [spec.cluster])
    fp = expert_fingerprint(spec.expert, spec.train, spec.data.name, checksum, spec.cluster)
    return fp, versioned(expert_store_prefix(spec), fp.digest)


@dataclass(frozen=True)
class RouterVersion:
    """The router a ParisRouter wants now: its fingerprint, the prefix it trains into, and the
    prefix of the served router it grows from (None: trained from scratch)."""

    fingerprint: Fingerprint
    prefix: str
    grow_from: str | None = None


@dataclass(frozen=True)
class ServedRouter:
    """The router a serving Deployment's pipeline holds (its annotations, served_router)."""

    prefix: str
    fingerprint: Fingerprint
    grown_from: str | None = None  # the prefix of the router it grew from


def _router_fp(spec: ParisRouterSpec, manifest: Mapping[str, Any], clusters: list[int]) -> Fingerprint:
    checksum = dataset_checksum(manifest, clusters)
    return router_fingerprint(spec.router, spec.data.name, checksum, dict.fromkeys(clusters, ""))


def router_version(
    spec: ParisRouterSpec, manifest: Mapping[str, Any], experts: ExpertSet, served: ServedRouter | None = None
) -> RouterVersion:
    """The router over these experts, given the one served now.

    - The served router already routes over these clusters with these settings (perhaps grown
      to them earlier): it is the one, nothing trains.
    - It routes over a strict subset of them, with the same settings on the same data of its
      clusters, and `experts.joining` is grow: grow it by the new clusters (a new version whose
      fingerprint names its parent), as `paris train router --grow-from` does.
    - Otherwise (no router served, settings or data changed, an expert gone, joining retrain):
      a router from scratch.

    A function of what is served, not of what the last reconcile decided: while the grown
    router trains, the parent stays served, so the answer stays the same."""
    clusters = sorted(experts)
    fresh = _router_fp(spec, manifest, clusters)
    scratch = RouterVersion(fresh, versioned(router_prefix(spec.model), fresh.digest))
    if served is None:
        return scratch
    fields = {k: v for k, v in served.fingerprint.fields.items() if k != GROWN_FROM}
    if fields == fresh.fields:  # (a grown one is trained again, e.g. to publish new experts, from its parent)
        return RouterVersion(served.fingerprint, served.prefix, served.grown_from)
    before = fields.get("router.clusters")
    if spec.experts.joining != "grow" or not isinstance(before, list) or not set(before) < set(clusters):
        return scratch
    if not all(isinstance(k, int) and 0 <= k < len(manifest.get("clusters") or []) for k in before):
        return scratch
    if _router_fp(spec, manifest, sorted(before)).fields != fields:
        return scratch  # other settings, or its clusters' data changed: it is no parent of this router
    grown = grown_fingerprint(fresh, served.fingerprint.digest)
    return RouterVersion(grown, versioned(router_prefix(spec.model), grown.digest), served.prefix)


def router_training_hash(
    spec: ParisRouterSpec, settings: OperatorSettings, experts: ExpertSet, prefix: str | None = None
) -> str:
    """What the router's weights depend on, the experts it routes over (and their versions)
    included; a change trains (and rolls out) a new router."""
    cfg = router_run_config(spec, settings)
    return digest(
        {
            "model": cfg.model,
            "storage": cfg.storage.uri,
            "data": _dump(cfg.data),
            "router": _dump(cfg.router),
            "experts": {str(k): v for k, v in sorted(experts.items())},
            **({"prefix": prefix} if prefix else {}),
        }
    )


def build_router_job(
    body: Body,
    spec: ParisRouterSpec,
    settings: OperatorSettings,
    experts: ExpertSet,
    prefix: str | None = None,
    grow_from: str | None = None,
) -> dict[str, Any]:
    """`paris train router` over exactly `experts` into `prefix` (router_version): trains the
    router (or grows the one at `grow_from`), then assembles and publishes the pipeline of
    those experts. `grow_from` stays out of the Job's name: the prefix already says which
    router it makes, and once it is served the same Job is the one wanted."""
    h = router_training_hash(spec, settings, experts, prefix)
    lbls = labels(body, "router-train", spec.model)
    where = ["--prefix", prefix] if prefix else []
    if grow_from:
        where += ["--grow-from", grow_from]
    container = {
        "name": "trainer",
        "command": ["paris", "train", "router", *expert_args(experts), *where],
        "env": pod_env(router_run_config(spec, settings), spec.storage, settings),
    }
    job_spec = {
        "backoffLimit": spec.backoff_limit,
        "template": {"metadata": {"labels": lbls}, "spec": pod_spec(spec, settings, container, "Never")},
    }
    return batch_job(body, spec, settings, router_job_name(body["metadata"]["name"], h), lbls, job_spec, h)


SERVED_EXPERTS = f"{API_GROUP}/experts"  # the ParisExperts a served pipeline holds, comma-separated
SERVED_ROUTER = f"{API_GROUP}/router-prefix"  # the store prefix of the router a served pipeline holds
SERVED_FINGERPRINT = f"{API_GROUP}/router-fingerprint"  # that router's fingerprint fields, JSON
SERVED_PARENT = f"{API_GROUP}/router-grown-from"  # the prefix of the router it grew from, if it grew


def served_router(deployment: Mapping[str, Any] | None) -> ServedRouter | None:
    """The router a Deployment of ours serves, from its annotations; None when it has none (made
    by an older operator) or they do not parse: the next router then trains from scratch."""
    ann = ((deployment or {}).get("metadata") or {}).get("annotations") or {}
    prefix, raw = ann.get(SERVED_ROUTER), ann.get(SERVED_FINGERPRINT)
    if not prefix or not raw:
        return None
    try:
        fields = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(fields, dict):
        return None
    return ServedRouter(str(prefix), Fingerprint(fields), ann.get(SERVED_PARENT) or None)


def build_serve_deployment(
    body: Body,
    spec: ParisRouterSpec,
    settings: OperatorSettings,
    pipeline: str,
    experts: list[str] | None = None,
    router: RouterVersion | None = None,
) -> dict[str, Any]:
    """`paris serve` behind a readiness probe on /readyz (true once the weights loaded).
    `pipeline` names the training that produced the weights: a new one rolls the pods.
    `experts` (names) are recorded on the Deployment: what it serves, for the router's status;
    and `router` (its prefix and fingerprint): what a router growing by new experts starts from."""
    inf = spec.inference
    lbls = labels(body, "serve", spec.model)
    # Serving only reads the store: a read-only credential when one is named.
    read_only = inf.storage_secret_name or settings.serve_credentials_secret
    storage = spec.storage.model_copy(update={"secret_name": read_only}) if read_only else spec.storage
    token = {SERVE_TOKEN_ENV: inf.auth} if inf.auth else None
    container = {
        "name": "serve",
        "command": ["paris", "serve"],
        "env": pod_env(router_run_config(spec, settings), storage, settings, token, PORT=str(inf.port)),
        "ports": [{"name": "http", "containerPort": inf.port, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "initialDelaySeconds": 10,
            "periodSeconds": 20,
            "failureThreshold": 3,
        },
    }
    template = {
        "metadata": {"labels": lbls, "annotations": {f"{API_GROUP}/pipeline": pipeline}},
        "spec": pod_spec(inf, settings, container, "Always"),
    }
    deploy_spec = {
        "replicas": inf.replicas,
        "selector": {"matchLabels": serve_selector(body)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": template,
    }
    annotations = {SPEC_HASH: digest(deploy_spec), GENERATION: str(generation(body))}
    if experts is not None:
        annotations[SERVED_EXPERTS] = ",".join(sorted(experts))
    if router is not None:
        annotations[SERVED_ROUTER] = router.prefix
        annotations[SERVED_FINGERPRINT] = json.dumps(router.fingerprint.fields, sort_keys=True)
        if router.grow_from:
            annotations[SERVED_PARENT] = router.grow_from
    return child(body, "apps/v1", "Deployment", serve_name(body["metadata"]["name"]), lbls, deploy_spec, annotations)


def build_serve_service(body: Body, spec: ParisRouterSpec) -> dict[str, Any]:
    service_spec = {
        "type": spec.inference.service_type,
        "selector": serve_selector(body),
        "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
    }
    lbls = labels(body, "serve", spec.model)
    return child(body, "v1", "Service", serve_name(body["metadata"]["name"]), lbls, service_spec)


def endpoint_url(service: Mapping[str, Any]) -> str:
    meta = service["metadata"]
    return f"http://{meta['name']}.{meta['namespace']}.svc.cluster.local/v1/generate"


# ---- ParisDataset -> one Job per preparation stage ---------------------------------------------

DATASET_STAGES = ("features", "cluster", "encode", "finalize")  # paris.data.work.STAGES, in order
INDEXED_STAGES = ("features", "encode")  # one pod per index of an Indexed Job


def dataset_run_config(spec: ParisDatasetSpec, settings: OperatorSettings) -> RunConfig:
    return RunConfig(storage=storage_config(spec.storage, settings), data=spec.run_data())


def dataset_hash(spec: ParisDatasetSpec, settings: OperatorSettings) -> str:
    """What the prepared data depends on: a change means new Jobs (new names)."""
    cfg = dataset_run_config(spec, settings)
    return digest({"storage": cfg.storage.uri, "data": _dump(cfg.data)})


def dataset_job_name(name: str, stage: str, spec_hash: str) -> str:
    return child_name(name, f"{stage}-{spec_hash[:8]}")


def build_dataset_job(body: Body, spec: ParisDatasetSpec, settings: OperatorSettings, stage: str) -> dict[str, Any]:
    """`paris data work <stage>`. The features and encode stages are Indexed Jobs: pod i runs
    index i ($JOB_COMPLETION_INDEX), a failed index is retried alone (backoffLimitPerIndex),
    and an index whose output is published is never redone. Cluster and finalize are one pod."""
    h = dataset_hash(spec, settings)
    lbls = labels(body, f"dataset-{stage}", spec.data.name, stage=stage)
    container = {
        "name": "prepare",
        "command": ["paris", "data", "work", stage],
        "env": pod_env(dataset_run_config(spec, settings), spec.storage, settings),
    }
    job_spec: dict[str, Any] = {
        "template": {"metadata": {"labels": lbls}, "spec": pod_spec(spec, settings, container, "Never")},
    }
    if stage in INDEXED_STAGES:
        job_spec |= {
            "completionMode": "Indexed",
            "completions": spec.indexes,
            "parallelism": min(spec.parallelism or spec.indexes, spec.indexes),
            "backoffLimitPerIndex": spec.backoff_limit_per_index,
        }
    else:
        job_spec["backoffLimit"] = spec.backoff_limit
    return batch_job(body, spec, settings, dataset_job_name(body["metadata"]["name"], stage, h), lbls, job_spec, h)


def expert_data(spec: ParisExpertSpec, dataset: Mapping[str, Any] | None) -> DataConfig:
    """The data an expert trains on: its named ParisDataset's, else its own section."""
    if spec.dataset is None or dataset is None:
        return spec.data
    return ParisDatasetSpec.model_validate(dict(dataset["spec"])).run_data()
