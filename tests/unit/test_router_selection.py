"""`paris train router --expert K=PREFIX`: the router routes over exactly the experts it is
given (what a ParisRouter's Job passes), and the pipeline holds exactly those experts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paris.cli import parse_experts
from paris.errors import ParisError
from tests.helpers import paris_cli, served_pipeline, tiny_config, write_config


def test_expert_options_parse_into_clusters_and_prefixes() -> None:
    assert parse_experts(None, "m") is None
    assert parse_experts(["3", "1=models/m/experts/1/v2/"], "m") == {
        3: "models/m/experts/3",
        1: "models/m/experts/1/v2",
    }
    for bad in (["x"], ["1", "1=p"], ["-1"]):
        with pytest.raises(ParisError, match="--expert"):
            parse_experts(bad, "m")


def test_a_router_over_a_subset_of_the_experts_publishes_a_pipeline_of_that_subset(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", tiny_config(f"file://{tmp_path}/s", data={"clusters": 3}))
    assert paris_cli("data", "prepare", str(cfg)).returncode == 0
    for k in (0, 2):
        r = paris_cli("train", "expert", str(cfg), "--cluster", str(k))
        assert r.returncode == 0, r.stderr
    r = paris_cli("train", "router", str(cfg), "--expert", "0", "--expert", "2=models/tiny/experts/2")
    assert r.returncode == 0, r.stderr
    pipeline = served_pipeline(tmp_path / "s", "tiny")
    index = json.loads((pipeline / "model_index.json").read_text())
    assert sorted(k for k in index if k.startswith("expert_")) == ["expert_0", "expert_1"], "two experts, in order"
    router = json.loads((pipeline / "router/config.json").read_text())
    assert (router["num_clusters"], router["clusters"]) == (2, [0, 2])
    # Expert 1 was never trained: a router over it cannot publish a pipeline, and says so in one line.
    r = paris_cli("train", "router", str(cfg), "--expert", "7")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: --expert: the dataset has clusters 0..2")
