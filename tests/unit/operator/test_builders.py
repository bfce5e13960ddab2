"""Child objects are pure functions of the resource: deterministic names, owner references,
credentials only by Secret reference, no distributed-training env, placement from the pool."""

from __future__ import annotations

import json
from typing import Any

import yaml

from paris.config import KUEUE_QUEUE_LABEL, OperatorSettings, ParisExpertSpec, ParisRouterSpec, parse_config
from paris.operator import builders

from .conftest import ALL_EXPERTS, expert_body, router_body


def _expert_job(settings: OperatorSettings, **spec: Any) -> dict[str, Any]:
    body = expert_body(**spec)
    return builders.build_expert_job(body, ParisExpertSpec.model_validate(body["spec"]), settings)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container["env"]}


def test_expert_job_identity(settings: OperatorSettings) -> None:
    job = _expert_job(settings)
    assert job == _expert_job(settings), "same input, same object"
    meta = job["metadata"]
    assert meta["name"] == "digits-expert-3-train" and meta["namespace"] == "ns1"
    owner = meta["ownerReferences"][0]
    assert owner == {
        "apiVersion": "paris.dev/v1alpha1",
        "kind": "ParisExpert",
        "name": "digits-expert-3",
        "uid": "uid-123",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert meta["labels"]["paris.dev/expert"] == "digits-expert-3"
    assert meta["labels"]["paris.dev/cluster"] == "3"
    assert job["spec"]["template"]["metadata"]["labels"] == meta["labels"]
    assert meta["annotations"][builders.SPEC_HASH]


def test_expert_pod_runs_the_trainer_with_its_config(settings: OperatorSettings) -> None:
    job = _expert_job(settings)
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"] == ["paris", "train", "expert", "--cluster", "3"]
    assert c["image"] == "example.org/paris-trainer:test"
    cfg = parse_config(yaml.safe_load(_env(c)["PARIS_CONFIG"]["value"]))
    assert cfg.model == "digits" and cfg.train.steps == 30 and cfg.train.checkpoint_every == 15
    assert cfg.storage.uri == "s3://paris" and cfg.storage.endpoint == "minio.minio.svc:9000"
    assert _env(c)["PARIS_S3_ENDPOINT"]["value"] == "minio.minio.svc:9000"
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 6
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_credentials_only_by_secret_reference(settings: OperatorSettings) -> None:
    c = _expert_job(settings)["spec"]["template"]["spec"]["containers"][0]
    env = _env(c)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "value" not in env[var]
        assert env[var]["valueFrom"]["secretKeyRef"]["name"] == "paris-s3"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["key"] == "AWS_ACCESS_KEY_ID"
    # Without secretName in the spec, the operator's default Secret is used.
    c2 = _expert_job(settings, storage={"uri": "s3://paris"})["spec"]["template"]["spec"]["containers"][0]
    assert _env(c2)["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "default-creds"


def test_no_distributed_training_env_anywhere(settings: OperatorSettings) -> None:
    rb = router_body()
    rspec = ParisRouterSpec.model_validate(rb["spec"])
    objs = [
        _expert_job(settings),
        builders.build_router_job(rb, rspec, settings, ALL_EXPERTS),
        builders.build_serve_deployment(rb, rspec, settings, "p"),
    ]
    for obj in objs:
        for c in obj["spec"]["template"]["spec"]["containers"]:
            names = set(_env(c))
            assert not names & builders.DISTRIBUTED_ENV, names & builders.DISTRIBUTED_ENV
            assert not any(n.startswith(("NCCL_", "TORCHELASTIC_", "PET_")) for n in names)


def test_placement_merges_pool_defaults_and_spec(settings: OperatorSettings) -> None:
    own = [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]
    job = _expert_job(
        settings,
        tolerations=own,
        nodeSelector={"zone": "a"},
        resources={"requests": {"cpu": "2"}, "limits": {"memory": "8Gi"}},
        affinity={"nodeAffinity": {"x": 1}},
    )
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "a40", "zone": "a"}
    keys = [t["key"] for t in pod["tolerations"]]
    assert keys == ["nvidia.com/gpu", "kwok.x-k8s.io/node"]
    res = pod["containers"][0]["resources"]
    assert res == {"limits": {"nvidia.com/gpu": "1", "memory": "8Gi"}, "requests": {"cpu": "2"}}
    assert pod["affinity"] == {"nodeAffinity": {"x": 1}}


def test_pool_label_is_configurable(settings: OperatorSettings) -> None:
    s = settings.model_copy(update={"pool_label": "cloud.example/pool"})
    pod = _expert_job(s, pool="h100")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.example/pool": "h100"}
    assert "tolerations" not in pod  # h100 has no defaults here and the spec sets none


def test_long_names_stay_valid_label_values() -> None:
    name = builders.child_name("x" * 80, "train")
    assert len(name) <= 63 and name.endswith("-train")
    assert name != builders.child_name("x" * 79 + "y", "train")
    assert builders.child_name("short", "train") == "short-train"


def test_spec_change_changes_the_hash(settings: OperatorSettings) -> None:
    a = _expert_job(settings)["metadata"]["annotations"][builders.SPEC_HASH]
    b = _expert_job(settings, train={"steps": 60})["metadata"]["annotations"][builders.SPEC_HASH]
    assert a != b


def test_router_children(settings: OperatorSettings) -> None:
    body = router_body()
    spec = ParisRouterSpec.model_validate(body["spec"])
    job = builders.build_router_job(body, spec, settings, ALL_EXPERTS)
    assert job["metadata"]["name"].startswith("digits-train-")
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["command"][:3] == ["paris", "train", "router"]
    assert c["command"][3:7] == ["--expert", "0=models/digits/experts/0", "--expert", "1=models/digits/experts/1"]
    cfg = parse_config(yaml.safe_load(_env(c)["PARIS_CONFIG"]["value"]))
    assert cfg.router.train.steps == 30 and cfg.storage.uri == "s3://paris/prefix"
    assert cfg.storage.endpoint == "minio:9000"

    dep = builders.build_serve_deployment(body, spec, settings, pipeline=job["metadata"]["name"])
    svc = builders.build_serve_service(body, spec)
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    serve = pod["spec"]["containers"][0]
    assert serve["command"] == ["paris", "serve"]
    assert serve["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert _env(serve)["PORT"]["value"] == "8000"
    serve_cfg = parse_config(yaml.safe_load(_env(serve)["PARIS_CONFIG"]["value"]))
    assert serve_cfg.sample.routing == ["top2"] and serve_cfg.sample.steps == 4
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert builders.endpoint_url(svc) == "http://digits-serve.ns1.svc.cluster.local/v1/generate"


def test_router_generations(settings: OperatorSettings) -> None:
    """Router training depends on the router config, not on inference knobs; the Deployment
    depends on both (a new router rolls the pods through the pipeline annotation)."""

    def children(**spec: Any) -> tuple[str, str]:
        body = router_body(**spec)
        s = ParisRouterSpec.model_validate(body["spec"])
        job = builders.build_router_job(body, s, settings, ALL_EXPERTS)["metadata"]["name"]
        dep = builders.build_serve_deployment(body, s, settings, pipeline=job)
        return job, dep["metadata"]["annotations"][builders.SPEC_HASH]

    job0, dep0 = children()
    job1, dep1 = children(inference={"routing": "full", "steps": 4, "pool": "cpu"})
    job2, dep2 = children(router={"train": {"steps": 60}})
    assert job0 == job1 != job2
    assert len({dep0, dep1, dep2}) == 3


def test_nothing_secret_in_any_object(settings: OperatorSettings) -> None:
    text = json.dumps(_expert_job(settings))
    assert "secretKeyRef" in text and 'SECRET_ACCESS_KEY", "value"' not in text


def test_every_paris_container_gets_its_environment_from_one_helper(settings: OperatorSettings) -> None:
    """Config, store credentials by reference and unbuffered output come from pod_env for the
    expert Job, the router Job and the serving Deployment alike; only PORT is serving's own."""
    eb, rb = expert_body(), router_body()
    espec, rspec = ParisExpertSpec.model_validate(eb["spec"]), ParisRouterSpec.model_validate(rb["spec"])
    expected = {
        "expert": builders.pod_env(builders.expert_run_config(espec, settings), espec.storage, settings),
        "router": builders.pod_env(builders.router_run_config(rspec, settings), rspec.storage, settings),
        "serve": builders.pod_env(builders.router_run_config(rspec, settings), rspec.storage, settings, PORT="8000"),
    }
    built = {
        "expert": _expert_job(settings),
        "router": builders.build_router_job(rb, rspec, settings, ALL_EXPERTS),
        "serve": builders.build_serve_deployment(rb, rspec, settings, "p"),
    }
    for what, obj in built.items():
        env = obj["spec"]["template"]["spec"]["containers"][0]["env"]
        assert env == expected[what], what
        names = [e["name"] for e in env]
        assert names[0] == "PARIS_CONFIG" and names[-1] == "PYTHONUNBUFFERED", names
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(names)


def test_service_and_deployment_select_the_serving_pods_through_one_selector(settings: OperatorSettings) -> None:
    body = router_body(name="other")
    spec = ParisRouterSpec.model_validate(body["spec"])
    dep = builders.build_serve_deployment(body, spec, settings, "p")
    svc = builders.build_serve_service(body, spec)
    selector = builders.serve_selector(body)
    assert dep["spec"]["selector"]["matchLabels"] == selector == svc["spec"]["selector"]
    assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert selector["app.kubernetes.io/instance"] == "other"


def test_builders_stamp_the_generation_they_were_built_for(settings: OperatorSettings) -> None:
    eb = expert_body()
    eb["metadata"]["generation"] = 7
    rb = router_body()
    rb["metadata"]["generation"] = 4
    rspec = ParisRouterSpec.model_validate(rb["spec"])
    job = builders.build_expert_job(eb, ParisExpertSpec.model_validate(eb["spec"]), settings)
    assert job["metadata"]["annotations"][builders.GENERATION] == "7"
    router_job = builders.build_router_job(rb, rspec, settings, ALL_EXPERTS)
    for obj in (router_job, builders.build_serve_deployment(rb, rspec, settings, "p")):
        assert obj["metadata"]["annotations"][builders.GENERATION] == "4"
    # The generation is bookkeeping, not spec: it never changes the spec hash.
    eb["metadata"]["generation"] = 8
    again = builders.build_expert_job(eb, ParisExpertSpec.model_validate(eb["spec"]), settings)
    assert again["metadata"]["annotations"][builders.SPEC_HASH] == job["metadata"]["annotations"][builders.SPEC_HASH]


def test_children_are_adopted_with_the_resources_own_labels_under_ours(settings: OperatorSettings) -> None:
    """kopf.adopt: owner reference, namespace, and the resource's labels (a team or cost label
    reaches its Jobs), without overriding the labels the operator selects by."""
    eb = expert_body()
    eb["metadata"]["labels"] = {"team": "vision", "app.kubernetes.io/component": "mine"}
    rb = router_body()
    rb["metadata"]["labels"] = {"team": "vision"}
    rspec = ParisRouterSpec.model_validate(rb["spec"])
    children = [
        (eb, builders.build_expert_job(eb, ParisExpertSpec.model_validate(eb["spec"]), settings)),
        (rb, builders.build_router_job(rb, rspec, settings, ALL_EXPERTS)),
        (rb, builders.build_serve_deployment(rb, rspec, settings, "p")),
        (rb, builders.build_serve_service(rb, rspec)),
    ]
    for owner, obj in children:
        meta = obj["metadata"]
        assert meta["labels"]["team"] == "vision", obj["kind"]
        assert meta["namespace"] == "ns1"
        (ref,) = meta["ownerReferences"]
        assert ref["controller"] is True and ref["blockOwnerDeletion"] is True
        assert (ref["kind"], ref["name"]) == (owner["kind"], owner["metadata"]["name"])
        assert ref["uid"] == owner["metadata"]["uid"]
    job = children[0][1]
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "expert"
    assert "team" not in job["spec"]["template"]["metadata"]["labels"], "pod labels stay the operator's"


def test_a_queued_resource_gets_suspended_jobs_with_the_kueue_label(settings: OperatorSettings) -> None:
    plain = _expert_job(settings)
    assert KUEUE_QUEUE_LABEL not in plain["metadata"]["labels"] and "suspend" not in plain["spec"]
    queued = _expert_job(settings, queueName="team-a")
    assert queued["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-a"
    assert queued["spec"]["suspend"] is True
    rb = router_body(queueName="team-b")
    rjob = builders.build_router_job(rb, ParisRouterSpec.model_validate(rb["spec"]), settings, ALL_EXPERTS)
    assert rjob["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-b" and rjob["spec"]["suspend"] is True
    # Queueing is not training: the same spec hash, so a running Job is never replaced for it.
    assert queued["metadata"]["annotations"][builders.SPEC_HASH] == plain["metadata"]["annotations"][builders.SPEC_HASH]


def test_finished_jobs_get_the_resources_ttl_else_the_operators(settings: OperatorSettings) -> None:
    assert "ttlSecondsAfterFinished" not in _expert_job(settings)["spec"], "no TTL anywhere keeps Jobs"
    with_default = settings.model_copy(update={"ttl_seconds_after_finished": 3600})
    assert _expert_job(with_default)["spec"]["ttlSecondsAfterFinished"] == 3600
    own = _expert_job(with_default, ttlSecondsAfterFinished=600)
    assert own["spec"]["ttlSecondsAfterFinished"] == 600
    # Never sooner than three status polls: the operator records the outcome before the Job goes.
    assert _expert_job(with_default, ttlSecondsAfterFinished=0)["spec"]["ttlSecondsAfterFinished"] == 30
    rb = router_body(ttlSecondsAfterFinished=120)
    rjob = builders.build_router_job(rb, ParisRouterSpec.model_validate(rb["spec"]), settings, ALL_EXPERTS)
    assert rjob["spec"]["ttlSecondsAfterFinished"] == 120
    hashes = {j["metadata"]["annotations"][builders.SPEC_HASH] for j in (own, _expert_job(settings))}
    assert len(hashes) == 1, "a new cleanup time must not restart a training"


def _pods(settings: OperatorSettings, **router_spec: Any) -> dict[str, dict[str, Any]]:
    rb = router_body(**router_spec)
    rspec = ParisRouterSpec.model_validate(rb["spec"])
    return {
        "expert": _expert_job(settings)["spec"]["template"]["spec"],
        "router": builders.build_router_job(rb, rspec, settings, ALL_EXPERTS)["spec"]["template"]["spec"],
        "serve": builders.build_serve_deployment(rb, rspec, settings, "p")["spec"]["template"]["spec"],
    }


def test_every_paris_pod_runs_under_runtime_default_seccomp_with_a_read_only_root(settings: OperatorSettings) -> None:
    for what, pod in _pods(settings).items():
        c = pod["containers"][0]
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, what
        assert c["securityContext"]["readOnlyRootFilesystem"] is True, what
        scratch = {v["name"]: v for v in pod["volumes"]}[c["volumeMounts"][0]["name"]]
        assert scratch == {"name": "scratch", "emptyDir": {}} and c["volumeMounts"][0]["mountPath"] == "/tmp", what
        env = _env(c)
        assert all(env[k]["value"].startswith("/tmp/") for k in ("XDG_CACHE_HOME", "HF_HOME")), "caches in scratch"


def test_serve_pods_read_the_store_with_the_read_only_credential_when_one_is_named(settings: OperatorSettings) -> None:
    def creds(pod: dict[str, Any]) -> set[str]:
        env = _env(pod["containers"][0])
        return {env[k]["valueFrom"]["secretKeyRef"]["name"] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}

    trainers = creds(_pods(settings)["router"])
    assert creds(_pods(settings)["serve"]) == trainers, "no read-only credential named: the same one"
    pods = _pods(settings, inference={"storageSecretName": "paris-s3-read"})
    assert creds(pods["serve"]) == {"paris-s3-read"} and creds(pods["router"]) == trainers
    assert creds(pods["expert"]) != {"paris-s3-read"}
    default = settings.model_copy(update={"serve_credentials_secret": "cluster-read-only"})
    assert creds(_pods(default)["serve"]) == {"cluster-read-only"} and creds(_pods(default)["router"]) == trainers
    assert creds(_pods(default, inference={"storageSecretName": "mine"})["serve"]) == {"mine"}, "the spec wins"


def test_auth_puts_the_token_in_the_serve_pod_by_secret_reference_only(settings: OperatorSettings) -> None:
    assert "PARIS_SERVE_TOKEN" not in _env(_pods(settings)["serve"]["containers"][0]), "auth is off by default"
    pods = _pods(settings, inference={"auth": {"secretName": "digits-token"}})
    token = _env(pods["serve"]["containers"][0])["PARIS_SERVE_TOKEN"]
    assert token["valueFrom"] == {"secretKeyRef": {"name": "digits-token", "key": "token"}} and "value" not in token
    assert all("PARIS_SERVE_TOKEN" not in _env(pods[w]["containers"][0]) for w in ("expert", "router"))
    pods = _pods(settings, inference={"auth": {"secretName": "t", "key": "api-key"}, "serve": {"max_queue": 7}})
    serve = pods["serve"]["containers"][0]
    assert _env(serve)["PARIS_SERVE_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "api-key"
    assert parse_config(yaml.safe_load(_env(serve)["PARIS_CONFIG"]["value"])).serve.max_queue == 7


def test_training_jobs_fail_at_once_on_a_user_error_and_never_count_a_disruption(settings: OperatorSettings) -> None:
    from paris.errors import TRANSIENT_EXIT, USER_ERROR_EXIT

    rb = router_body()
    for job in (
        _expert_job(settings),
        builders.build_router_job(rb, ParisRouterSpec.model_validate(rb["spec"]), settings, ALL_EXPERTS),
    ):
        pod = job["spec"]["template"]["spec"]
        assert pod["restartPolicy"] == "Never", "podFailurePolicy needs restartPolicy Never"
        container = pod["containers"][0]
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
        rules = job["spec"]["podFailurePolicy"]["rules"]
        ignore = next(r for r in rules if r["action"] == "Ignore")
        assert ignore["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
        fail = next(r for r in rules if r["action"] == "FailJob")
        assert fail["onExitCodes"] == {
            "containerName": container["name"],
            "operator": "In",
            "values": [USER_ERROR_EXIT],
        }
        assert TRANSIENT_EXIT not in fail["onExitCodes"]["values"], "an outage is retried"
    # An operator upgrade that changes the policy (or the grace period) does not restart a running training.
    spec = {k: v for k, v in _expert_job(settings)["spec"].items() if k != "podFailurePolicy"}
    pod = {k: v for k, v in spec["template"]["spec"].items() if k != "terminationGracePeriodSeconds"}
    spec["template"] = {**spec["template"], "spec": pod}
    assert _expert_job(settings)["metadata"]["annotations"][builders.SPEC_HASH] == builders.digest(spec)


def test_the_router_job_trains_over_exactly_the_experts_it_is_given(settings: OperatorSettings) -> None:
    rb = router_body()
    spec = ParisRouterSpec.model_validate(rb["spec"])
    some = {0: "models/digits/experts/0", 5: "models/digits/experts/5"}
    job = builders.build_router_job(rb, spec, settings, some)
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command == [
        "paris",
        "train",
        "router",
        "--expert",
        "0=models/digits/experts/0",
        "--expert",
        "5=models/digits/experts/5",
    ]
    everyone = builders.build_router_job(rb, spec, settings, ALL_EXPERTS)
    assert job["metadata"]["name"] != everyone["metadata"]["name"], "another expert set is another training"
    assert (
        builders.build_router_job(rb, spec, settings, dict(reversed(some.items())))["metadata"]["name"]
        == job["metadata"]["name"]
    )


def test_ownership_is_the_controller_reference_and_nothing_else(settings: OperatorSettings) -> None:
    body = expert_body()
    job = _expert_job(settings)
    assert builders.owns(body, job)
    other = expert_body(name="someone-else")
    other["metadata"]["uid"] = "uid-other"
    assert not builders.owns(other, job), "same labels and name pattern, another owner"
    foreign = {
        "kind": "Deployment",
        "metadata": {"name": "digits-serve", "namespace": "ns1", "labels": job["metadata"]["labels"]},
    }
    assert not builders.owns(body, foreign)
    said = builders.not_owned(router_body(), foreign)
    assert "Deployment ns1/digits-serve" in said and "controlled by nobody" in said and "left alone" in said


def test_an_expert_on_several_gpus_runs_torchrun_inside_its_one_pod(settings: OperatorSettings) -> None:
    job = _expert_job(settings, gpus=4)
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == [
        "torchrun", "--standalone", "--nproc-per-node=4", "-m", "paris", "train", "expert", "--cluster", "3",
    ]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"  # the spec's count beats the pool's 1
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
    # One pod (no parallelism, no completions), no rendezvous address: the ranks meet on the
    # pod's loopback, so the collective exists only inside this expert's pod.
    assert "parallelism" not in job["spec"] and "completions" not in job["spec"]
    assert not set(_env(c)) & builders.DISTRIBUTED_ENV


def test_the_launcher_follows_the_gpus_the_pod_gets_from_its_pool(settings: OperatorSettings) -> None:
    s = settings.model_copy(deep=True)
    s.pools["a40"].resources.limits = {"nvidia.com/gpu": 8}
    pod = _expert_job(s, resources={})["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"][:3] == ["torchrun", "--standalone", "--nproc-per-node=8"]
    one = _expert_job(settings)["spec"]["template"]["spec"]  # the pool's 1 GPU: no launcher
    assert one["containers"][0]["command"] == ["paris", "train", "expert", "--cluster", "3"]
    assert all(v["name"] != "dshm" for v in one["volumes"])
    cpu = _expert_job(settings, pool="cpu", resources={})["spec"]["template"]["spec"]
    assert cpu["containers"][0]["command"][0] == "paris"


def _manifest(sha: str = "a", clusters: int = 4) -> dict[str, Any]:
    parts = [{"id": k, "size": 10, "shards": [{"key": f"p{k}", "sha256": sha * 64}]} for k in range(clusters)]
    return {"num_clusters": clusters, "latent": {"size": 8}, "text": {"dim": 384}, "clusters": parts}


def _served(settings: OperatorSettings, rb: dict[str, Any], version: builders.RouterVersion) -> Any:
    """What the operator reads back from the Deployment it rolled out for `version`."""
    spec = ParisRouterSpec.model_validate(rb["spec"])
    dep = builders.build_serve_deployment(rb, spec, settings, "job", ["e0"], version)
    return builders.served_router(dep)


def test_experts_joining_grow_the_served_router_and_anything_else_trains_one_from_scratch(
    settings: OperatorSettings,
) -> None:
    from paris.fingerprint import GROWN_FROM

    rb = router_body()
    spec = ParisRouterSpec.model_validate(rb["spec"])
    two, three = {0: "e/0", 1: "e/1"}, {0: "e/0", 1: "e/1", 2: "e/2"}
    first = builders.router_version(spec, _manifest(), two)
    assert first.grow_from is None and first.prefix.startswith("models/digits/router/fp-")
    served = _served(settings, rb, first)
    assert served is not None and served.prefix == first.prefix and served.fingerprint == first.fingerprint

    # A third expert joins: the served router grows, into a version that names its parent.
    grown = builders.router_version(spec, _manifest(), three, served)
    scratch = builders.router_version(spec, _manifest(), three)
    assert grown.grow_from == first.prefix and grown.prefix not in (first.prefix, scratch.prefix)
    assert grown.fingerprint.fields == {**scratch.fingerprint.fields, GROWN_FROM: first.fingerprint.digest}
    # Once it is served it is the one wanted, trained again from the same parent (new expert versions).
    again = builders.router_version(spec, _manifest(), {**three, 0: "e/0-new"}, _served(settings, rb, grown))
    assert again == grown

    # From scratch: other router settings, the old clusters' data prepared again, an expert gone,
    # joining: retrain.
    lr = ParisRouterSpec.model_validate(router_body(router={"train": {"steps": 30, "lr": 0.01}})["spec"])
    assert builders.router_version(lr, _manifest(), three, served).grow_from is None
    assert builders.router_version(spec, _manifest("b"), three, served).grow_from is None
    assert builders.router_version(spec, _manifest(), {0: "e/0"}, served).grow_from is None
    no_growth = router_body(experts={"matchLabels": {"a": "b"}, "joining": "retrain"})
    retrain = ParisRouterSpec.model_validate(no_growth["spec"])
    assert builders.router_version(retrain, _manifest(), three, served) == scratch

    # The Job grows with --grow-from; its name is that of the version it makes.
    job = builders.build_router_job(rb, spec, settings, three, grown.prefix, grown.grow_from)
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[-4:] == ["--prefix", grown.prefix, "--grow-from", first.prefix]
    plain = builders.build_router_job(rb, spec, settings, three, grown.prefix)
    assert job["metadata"]["name"] == plain["metadata"]["name"]


def test_a_deployment_without_readable_router_annotations_serves_no_parent(settings: OperatorSettings) -> None:
    assert builders.served_router(None) is None
    rb = router_body()
    spec = ParisRouterSpec.model_validate(rb["spec"])
    dep = builders.build_serve_deployment(rb, spec, settings, "job", ["e0"])
    assert builders.served_router(dep) is None, "rolled out by an older operator"
    dep["metadata"]["annotations"].update({builders.SERVED_ROUTER: "p", builders.SERVED_FINGERPRINT: "{torn"})
    assert builders.served_router(dep) is None


def test_a_trainer_pod_gets_time_for_its_sigterm_checkpoint_and_a_new_one_restarts_nothing(
    settings: OperatorSettings,
) -> None:
    job = _expert_job(settings)
    assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 300
    longer = _expert_job(settings, terminationGracePeriodSeconds=900)
    assert longer["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 900
    assert longer["metadata"]["annotations"][builders.SPEC_HASH] == job["metadata"]["annotations"][builders.SPEC_HASH]
