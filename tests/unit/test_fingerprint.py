"""Fingerprints: what changes an expert's or a router's weights changes the digest, what only
changes how fast or how long it trains does not, and a resume into checkpoints of other
settings is refused with one line naming each changed field."""

from __future__ import annotations

from pathlib import Path

import pytest

from paris.config import ExpertModelConfig, RouterConfig, TrainConfig
from paris.errors import ParisError
from paris.fingerprint import (
    check_resume,
    dataset_checksum,
    expert_fingerprint,
    manifest_checksum,
    pipeline_fingerprint,
    router_fingerprint,
)
from tests.helpers import deep_update, paris_cli, tiny_config, write_config


def fp(**train: object) -> str:
    return expert_fingerprint(ExpertModelConfig(), TrainConfig(**train), "digits", "c0ffee", 3).digest


def test_result_changing_settings_change_the_digest_and_execution_settings_do_not() -> None:
    base = fp()
    for changed in ({"lr": 2e-3}, {"batch_size": 32}, {"seed": 1}, {"caption_dropout": 0.0}, {"window": 8}):
        assert fp(**changed) != base, changed
    for same in ({"steps": 5000}, {"checkpoint_every": 7}, {"device": "cpu"}, {"threads": 2}, {"log_every": 1}):
        assert fp(**same) == base, same
    other = expert_fingerprint(ExpertModelConfig(depth=2), TrainConfig(), "digits", "c0ffee", 3).digest
    assert other != base, "architecture"
    assert expert_fingerprint(ExpertModelConfig(), TrainConfig(), "digits", "beef", 3).digest != base, "dataset"
    assert expert_fingerprint(ExpertModelConfig(), TrainConfig(), "digits", "c0ffee", 4).digest != base, "cluster"
    assert manifest_checksum({"a": 1, "b": [1, 2]}) == manifest_checksum({"b": [1, 2], "a": 1})


def test_a_cluster_added_to_the_dataset_leaves_every_old_expert_its_identity() -> None:
    def cluster(k: int, sha: str) -> dict[str, object]:
        return {"id": k, "shards": [{"key": f"clusters/{k}/p0", "sha256": sha}]}

    before = {"latent": {"size": 8}, "text": {"dim": 384}, "clusters": [cluster(0, "a"), cluster(1, "b")]}
    after = {**before, "clusters": [cluster(0, "a"), cluster(1, "b"), cluster(2, "c")], "num_clusters": 3}
    assert dataset_checksum(before, [0]) == dataset_checksum(after, [0])
    assert dataset_checksum(before, [0, 1]) != dataset_checksum(after, [0, 1, 2]), "the router's data changed"
    again = {**before, "clusters": [cluster(0, "z"), cluster(1, "b")]}
    assert dataset_checksum(again, [0]) != dataset_checksum(before, [0]), "prepared again: another dataset"
    assert dataset_checksum(again, [1]) == dataset_checksum(before, [1])


def test_a_resume_into_other_settings_is_refused_naming_what_changed() -> None:
    old = expert_fingerprint(ExpertModelConfig(), TrainConfig(lr=1e-3), "digits", "c0ffee", 3)
    new = expert_fingerprint(ExpertModelConfig(), TrainConfig(lr=2e-3, batch_size=32), "digits", "c0ffee", 3)
    check_resume(old.record(), old, "s3://b/m")  # the same: fine
    check_resume(None, new, "s3://b/m")  # nothing there yet, or checkpoints from before fingerprints
    with pytest.raises(ParisError) as err:
        check_resume(old.record(), new, "s3://b/models/m/experts/3")
    line = str(err.value)
    assert "\n" not in line and "s3://b/models/m/experts/3" in line
    assert "train.lr 0.001 -> 0.002" in line and "train.batch_size 64 -> 32" in line


def test_a_router_over_another_expert_set_is_another_router() -> None:
    r = RouterConfig()
    two = router_fingerprint(r, "d", "c", {0: "a", 1: "b"})
    three = router_fingerprint(r, "d", "c", {0: "a", 1: "b", 2: "c"})
    assert two.digest != three.digest and "router.clusters [0, 1] -> [0, 1, 2]" in three.changes(two.fields)
    text = RouterConfig.model_validate({"model": {"condition_on_text": True}})
    assert router_fingerprint(text, "d", "c", {0: "a", 1: "b"}).digest != two.digest
    e = expert_fingerprint(ExpertModelConfig(), TrainConfig(), "d", "c", 0)
    p1 = pipeline_fingerprint(two, {0: e.record(), 1: None})
    p2 = pipeline_fingerprint(
        two, {0: expert_fingerprint(ExpertModelConfig(), TrainConfig(lr=1), "d", "c", 0).record(), 1: None}
    )
    assert p1.digest != p2.digest, "a retrained expert is another pipeline"


def test_the_cli_refuses_to_resume_an_edited_expert_or_router_in_one_line(tmp_path: Path) -> None:
    base = tiny_config(f"file://{tmp_path}/s")
    cfg = write_config(tmp_path / "c.yaml", base)
    for argv in (["data", "prepare"], ["train", "expert", "--cluster", "0"], ["train", "expert", "--cluster", "1"]):
        assert paris_cli(*argv[:2], str(cfg), *argv[2:]).returncode == 0
    assert paris_cli("train", "router", str(cfg)).returncode == 0

    edited = write_config(tmp_path / "e.yaml", deep_update(base, {"train": {"lr": 0.002}}))
    r = paris_cli("train", "expert", str(edited), "--cluster", "0")
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and last.startswith("error:") and "train.lr 0.001 -> 0.002" in last, r.stderr
    # Into a prefix of its own, the edited expert trains from scratch.
    r = paris_cli("train", "expert", str(edited), "--cluster", "0", "--prefix", "models/tiny/experts/0/lr2")
    assert r.returncode == 0 and "resuming" not in r.stderr, r.stderr

    text = write_config(tmp_path / "t.yaml", deep_update(base, {"router": {"model": {"condition_on_text": True}}}))
    r = paris_cli("train", "router", str(text))
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and "router.model.condition_on_text false -> true" in last, r.stderr
