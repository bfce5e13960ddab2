"""Status transitions are pure functions of the observed Job, Secret and progress."""

from __future__ import annotations

from typing import Any

from paris.operator.ensemble import Ensemble
from paris.operator.status import (
    DEGRADED,
    DEPLOYING,
    FAILED,
    PENDING,
    QUEUED,
    READY,
    SUCCEEDED,
    TRAINING,
    ExpertFacts,
    RouterFacts,
    changed,
    condition,
    deployment_available,
    expert_status,
    job_outcome,
    last_words,
    merge_conditions,
    recorded_finish,
    router_status,
    trained_record,
)


def job(**status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "e-train"}, "status": status}


def done(type_: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return job(conditions=[{"type": type_, "status": "True", "reason": reason, "message": message}])


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_job_outcomes() -> None:
    assert job_outcome(None)[0] == PENDING
    assert job_outcome(job(active=1))[:2] == (PENDING, "PodStarting")
    assert job_outcome(job(active=1, ready=1))[0] == TRAINING
    assert job_outcome(done("Complete"))[0] == SUCCEEDED
    assert job_outcome(done("Failed", "BackoffLimitExceeded", "too many"))[:2] == (FAILED, "BackoffLimitExceeded")


def test_expert_lifecycle() -> None:
    s0 = expert_status(None, ExpertFacts(1, None, total_steps=30))
    assert s0.status["phase"] == PENDING and s0.transition and s0.transition.old is None

    running = job(active=1, ready=1, startTime="2026-01-01T00:00:00Z")
    progress = {"step": 15, "total": 30, "loss": 0.123456789, "samples_per_s": 100.0, "device": "cuda", "state": "x"}
    s1 = expert_status(s0.status, ExpertFacts(1, running, progress=progress, checkpoint="s3://b/ck", total_steps=30))
    st = s1.status
    assert (st["phase"], st["step"], st["totalSteps"], st["progress"]) == (TRAINING, 15, 30, "15/30")
    assert st["loss"] == 0.12346 and st["device"] == "cuda" and st["checkpoint"] == "s3://b/ck"
    assert st["startTime"] == "2026-01-01T00:00:00Z" and st["observedGeneration"] == 1
    assert cond(st, "Running")["status"] == "True"
    assert s1.transition and (s1.transition.old, s1.transition.new) == (PENDING, TRAINING)

    again = expert_status(st, ExpertFacts(1, running, progress=progress, total_steps=30))
    assert again.transition is None, "no event without a change"
    assert again.status["checkpoint"] == "s3://b/ck", "kept when the store is not read"

    s2 = expert_status(st, ExpertFacts(1, done("Complete"), progress={**progress, "step": 29}, total_steps=30))
    assert s2.status["phase"] == SUCCEEDED and s2.status["step"] == 30 and "completionTime" in s2.status
    assert cond(s2.status, "Succeeded")["status"] == "True" and cond(s2.status, "Running")["status"] == "False"


def test_failed_expert_is_a_warning() -> None:
    s = expert_status({"phase": TRAINING}, ExpertFacts(2, done("Failed", "BackoffLimitExceeded", "6 retries")))
    assert s.status["phase"] == FAILED and s.status["reason"] == "BackoffLimitExceeded"
    assert s.transition and s.transition.warning and cond(s.status, "Failed")["status"] == "True"


def test_missing_secret_is_a_clear_condition() -> None:
    msg = "Secret ns/paris-s3 not found: create it with keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY"
    s = expert_status(None, ExpertFacts(1, None, secret_problem=msg, total_steps=30))
    assert (s.status["phase"], s.status["reason"], s.status["message"]) == (PENDING, "SecretNotReady", msg)
    c = cond(s.status, "SecretReady")
    assert (c["status"], c["message"]) == ("False", msg)
    assert s.transition and s.transition.warning


def test_invalid_spec_fails_without_children() -> None:
    s = expert_status(None, ExpertFacts(1, None, invalid_spec="spec.cluster: required"))
    assert s.status["phase"] == FAILED and s.status["reason"] == "InvalidSpec"


def test_conditions_keep_their_transition_time() -> None:
    old = [condition("Running", True, "PodRunning", at="2026-01-01T00:00:00Z")]
    same = merge_conditions(old, [condition("Running", True, "PodRunning", at="2026-02-02T00:00:00Z")])
    assert same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    flipped = merge_conditions(old, [condition("Running", False, "Done", at="2026-02-02T00:00:00Z")])
    assert flipped[0]["lastTransitionTime"] == "2026-02-02T00:00:00Z"


def test_changed_sends_only_differences() -> None:
    assert changed({"a": 1, "b": 2}, {"a": 1, "b": 3}) == {"b": 3}


def expert(name: str, phase: str | None) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"phase": phase} if phase else {}}


def ens(experts: list[dict[str, Any]], needed: int | None = None) -> Ensemble:
    """The ensemble of experts e0, e1, ... (expert i covers cluster i)."""
    e = Ensemble(sorted(x["metadata"]["name"] for x in experts), needed or len(experts))
    for i, x in enumerate(experts):
        name, phase = x["metadata"]["name"], (x.get("status") or {}).get("phase") or PENDING
        if phase == SUCCEEDED:
            e.succeeded[name] = (i, f"models/digits/experts/{i}")
        elif phase == FAILED:
            e.failed[name] = "boom"
        else:
            e.waiting[name] = phase
    return e


def test_router_waits_then_trains_then_deploys() -> None:
    experts = [expert(f"e{i}", SUCCEEDED if i < 5 else TRAINING) for i in range(8)]
    s = router_status(None, RouterFacts(1, ens(experts, 8)))
    assert (s.status["phase"], s.status["expertsReady"]) == (PENDING, "5/8")
    assert cond(s.status, "ExpertsReady")["status"] == "False"

    failed = [*experts[:7], expert("e7", FAILED)]
    assert "failed: e7" in router_status(s.status, RouterFacts(1, ens(failed, 8))).status["message"]

    all_ok = [expert(f"e{i}", SUCCEEDED) for i in range(8)]
    t = router_status(s.status, RouterFacts(1, ens(all_ok, 8), job=job(active=1, ready=1)))
    assert t.status["phase"] == TRAINING and t.status["expertsReady"] == "8/8"

    dep = {"metadata": {"generation": 2}, "status": {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1}}
    d = router_status(
        t.status, RouterFacts(1, ens(all_ok, 8), job=done("Complete"), deployment=dep, endpoint="http://x")
    )
    assert d.status["phase"] == DEPLOYING
    dep["status"]["readyReplicas"] = 1
    r = router_status(
        d.status, RouterFacts(1, ens(all_ok, 8), job=done("Complete"), deployment=dep, endpoint="http://x")
    )
    assert r.status["phase"] == READY and r.status["endpoint"] == "http://x"
    assert cond(r.status, "Available")["status"] == "True" and cond(r.status, "RouterTrained")["status"] == "True"


def test_router_with_no_experts_says_so() -> None:
    s = router_status(None, RouterFacts(1, ens([])))
    assert s.status["phase"] == PENDING and "no ParisExpert matches" in s.status["message"]


def test_deployment_rollout_not_done_while_old_pods_remain() -> None:
    dep = {
        "metadata": {"generation": 3},
        "status": {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 1, "readyReplicas": 2},
    }
    assert not deployment_available(dep, 1)
    dep["status"]["replicas"] = 1
    assert deployment_available(dep, 1)
    dep["status"]["observedGeneration"] = 2
    assert not deployment_available(dep, 1)


def queued_job(suspend: bool, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "e-train", "labels": {"kueue.x-k8s.io/queue-name": "team-a"}},
        "spec": {"suspend": suspend},
        "status": status,
    }


def test_a_suspended_job_is_queued_until_kueue_admits_it() -> None:
    waiting = queued_job(True, conditions=[{"type": "Suspended", "status": "True", "lastTransitionTime": "T0"}])
    s = expert_status(None, ExpertFacts(1, waiting, total_steps=30))
    assert (s.status["phase"], s.status["reason"]) == (QUEUED, "Queued") and "team-a" in s.status["message"]
    admitted = cond(s.status, "Admitted")
    assert (admitted["status"], admitted["reason"], admitted["lastTransitionTime"]) == ("False", "Queued", "T0")
    assert s.transition and s.transition.new == QUEUED and not s.transition.warning

    # Kueue admits by unsuspending; the Job controller flips Suspended to False (JobResumed).
    resumed = [{"type": "Suspended", "status": "False", "reason": "JobResumed", "lastTransitionTime": "T1"}]
    running = queued_job(False, active=1, ready=1, conditions=resumed)
    r = expert_status(s.status, ExpertFacts(1, running, total_steps=30))
    assert r.status["phase"] == TRAINING
    admitted = cond(r.status, "Admitted")
    assert (admitted["status"], admitted["reason"], admitted["lastTransitionTime"]) == ("True", "Admitted", "T1")

    unqueued = expert_status(None, ExpertFacts(1, job(active=1, ready=1), total_steps=30)).status
    assert not [c for c in unqueued["conditions"] if c["type"] == "Admitted"], "no queue, no admission"


def test_a_router_whose_training_job_waits_in_a_queue_is_queued() -> None:
    experts = [expert(f"e{i}", SUCCEEDED) for i in range(2)]
    s = router_status(None, RouterFacts(1, ens(experts, 2), job=queued_job(True)))
    assert (s.status["phase"], s.status["reason"]) == (QUEUED, "Queued")
    assert cond(s.status, "Admitted")["status"] == "False"


def test_the_status_outlives_a_finished_job() -> None:
    """After the TTL controller deleted the Job, the outcome, loss, checkpoint and times stay."""
    finished = done("Complete", message="done")
    finished["metadata"]["annotations"] = {"paris.dev/spec-hash": "h1"}
    finished["status"].update(startTime="2026-01-01T00:00:00Z", completionTime="2026-01-01T00:05:00Z")
    progress = {"step": 30, "total": 30, "loss": 0.25, "state": "done"}
    s = expert_status(None, ExpertFacts(1, finished, progress=progress, checkpoint="s3://b/ck", total_steps=30))
    record = s.status["finishedJob"]
    assert record["name"] == "e-train" and record["specHash"] == "h1" and record["phase"] == SUCCEEDED
    assert recorded_finish(s.status, "e-train", "h1") == record
    assert recorded_finish(s.status, "e-train", "h2") is None, "another spec's Job is not this one"

    kept = recorded_finish(s.status, "e-train", "h1")
    gone = expert_status(s.status, ExpertFacts(1, None, total_steps=30, finished=kept))
    st = gone.status
    assert gone.transition is None, "the Job going away is no transition"
    assert (st["phase"], st["reason"], st["jobName"]) == (SUCCEEDED, "JobComplete", "e-train")
    assert (st["loss"], st["checkpoint"], st["progress"]) == (0.25, "s3://b/ck", "30/30")
    assert (st["startTime"], st["completionTime"]) == ("2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z")
    assert st["finishedJob"] == record and cond(st, "Succeeded")["status"] == "True"

    # A new Job of a new spec drops the record (null in the merge patch).
    again = expert_status(st, ExpertFacts(2, job(active=1), total_steps=60))
    assert again.status["finishedJob"] is None and changed(st, again.status)["finishedJob"] is None


def test_a_job_nobody_saw_finish_counts_as_done_when_the_store_says_so() -> None:
    assert trained_record("e-train", "h", {"state": "training", "step": 30}, 30) is None
    assert trained_record("e-train", "h", {"state": "done", "step": 20}, 30) is None, "more steps asked now"
    rec = trained_record("e-train", "h", {"state": "done", "step": 30, "loss": 0.5}, 30)
    assert rec is not None
    st = expert_status(None, ExpertFacts(1, None, progress={"step": 30, "loss": 0.5}, total_steps=30, finished=rec))
    assert (st.status["phase"], st.status["reason"], st.status["loss"]) == (SUCCEEDED, "TrainingDone", 0.5)


def serving(*experts: str, ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"generation": 1, "annotations": {"paris.dev/experts": ",".join(experts)}},
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": int(ready)},
    }


def test_a_router_with_a_failed_expert_serves_the_others_degraded_and_says_what_is_missing() -> None:
    experts = [expert(f"e{i}", SUCCEEDED) for i in range(3)] + [expert("e3", FAILED)]
    ensemble = ens(experts, needed=3)
    assert ensemble.use() == {0: "models/digits/experts/0", 1: "models/digits/experts/1", 2: "models/digits/experts/2"}
    facts = RouterFacts(1, ensemble, job=done("Complete"), deployment=serving("e0", "e1", "e2"), endpoint="http://x")
    s = router_status(None, facts).status
    assert (s["phase"], s["reason"]) == (DEGRADED, "Degraded")
    assert s["missingExperts"] == ["e3 (Failed: boom)"] and s["servedExperts"] == ["e0", "e1", "e2"]
    assert "serving 3/4 experts" in s["message"] and "e3" in s["message"]
    assert cond(s, "Degraded")["status"] == "True" and cond(s, "Available")["status"] == "True"
    t = router_status(None, facts).transition
    assert t is not None and t.warning, "a degraded ensemble is a Warning event"

    # Fewer than the minimum: nothing trains.
    short = ens(experts, needed=4)
    assert short.use() is None
    s = router_status(None, RouterFacts(1, short)).status
    assert (s["phase"], s["reason"]) == (FAILED, "NotEnoughExperts") and "3/4" in s["message"]

    # The failed expert retrains: the degraded pipeline keeps serving meanwhile.
    retrying = ens([*experts[:3], expert("e3", TRAINING)], needed=3)
    assert retrying.use() is None, "no new router until every expert settles"
    s = router_status(s, RouterFacts(1, retrying, deployment=serving("e0", "e1", "e2"), endpoint="http://x")).status
    assert s["phase"] == DEGRADED and s["missingExperts"] == ["e3 (Training)"]

    # It succeeds: a router over all four trains, and once it serves the router is Ready.
    whole = ens([*experts[:3], expert("e3", SUCCEEDED)], needed=3)
    assert sorted(whole.use() or {}) == [0, 1, 2, 3]
    s = router_status(s, RouterFacts(1, whole, job=job(active=1, ready=1), deployment=serving("e0", "e1", "e2"))).status
    assert s["phase"] == TRAINING
    done4 = RouterFacts(1, whole, job=done("Complete"), deployment=serving("e0", "e1", "e2", "e3"), endpoint="http://x")
    s = router_status(s, done4).status
    assert (s["phase"], s["missingExperts"]) == (READY, []) and cond(s, "Degraded")["status"] == "False"


def test_a_selection_that_mixes_models_or_repeats_a_cluster_is_refused() -> None:
    e = ens([expert("e0", SUCCEEDED)])
    e.problem = "the selected experts must ...: a and b all cover cluster 3"
    s = router_status(None, RouterFacts(1, e)).status
    assert (s["phase"], s["reason"]) == (FAILED, "InvalidSelection") and "cluster 3" in s["message"]
    assert cond(s, "InvalidSelection")["status"] == "True"
    e.problem = None
    s = router_status(s, RouterFacts(1, e, job=job(active=1))).status
    assert cond(s, "InvalidSelection")["status"] == "False", "a fixed selection clears the condition"


def test_a_refused_duplicate_expert_fails_and_its_twin_is_told() -> None:
    s = expert_status(None, ExpertFacts(1, None, duplicate="ParisExpert a already trains ...", refused=True)).status
    assert (s["phase"], s["reason"]) == (FAILED, "DuplicateExpert")
    assert cond(s, "Duplicate")["status"] == "True"
    owner = expert_status(
        None, ExpertFacts(1, job(active=1, ready=1), duplicate="ParisExpert b also claims ...")
    ).status
    assert owner["phase"] == TRAINING and cond(owner, "Duplicate")["status"] == "True"
    later = expert_status(owner, ExpertFacts(1, job(active=1, ready=1))).status
    assert cond(later, "Duplicate")["status"] == "False"
    plain = expert_status(None, ExpertFacts(1, job(active=1, ready=1))).status
    assert not [c for c in plain["conditions"] if c["type"] == "Duplicate"], "no noise when it never happened"


def test_a_foreign_child_and_a_malformed_progress_file_are_reported_not_fatal() -> None:
    s = expert_status(None, ExpertFacts(1, None, conflict="Job ns/e-train exists and is controlled by nobody")).status
    assert (s["phase"], s["reason"]) == (PENDING, "ChildConflict") and cond(s, "ChildConflict")["status"] == "True"
    bad = ["s3://b/models/m/experts/3/progress.json is malformed (step: ...); ignored"]
    s = expert_status(None, ExpertFacts(1, job(active=1, ready=1), malformed=bad, total_steps=30)).status
    assert s["phase"] == TRAINING and s["step"] == 0
    assert cond(s, "ProgressMalformed")["message"] == bad[0]


def test_the_failed_trainers_last_words_reach_the_status_and_outlive_the_job() -> None:
    failed = done("Failed", "PodFailurePolicy", "Container trainer for pod ns/e-train-x failed with exit code 2")
    said = last_words("loading…\nerror: dataset 'nope' not found in s3://b: run `paris data prepare` first\n")
    assert said == "error: dataset 'nope' not found in s3://b: run `paris data prepare` first"
    s = expert_status(None, ExpertFacts(1, failed, pod_message=said)).status
    assert s["phase"] == FAILED and s["reason"] == "PodFailurePolicy"
    assert s["message"].endswith(said) and s["finishedJob"]["message"] == s["message"]
    assert last_words("") is None and last_words("a\nb\n") == "b"
