"""`paris study`: a tiny real study (real training processes, real pipelines, the real judge)
whose report has every part the issue asks for; the numbers of so tiny a run mean nothing,
so only the structure and the equal-compute bookkeeping are checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paris.config import parse_config
from paris.study import Phase, equal_compute_steps, expert_steps, phases, training_flops
from tests.helpers import paris_cli, tiny_config, write_config


def test_the_monolith_gets_the_steps_whose_flops_match_the_experts_and_the_router() -> None:
    per_step = {"expert 0": 100, "expert 1": 110, "router": 30}
    ensemble = training_flops(per_step, [10, 10], router_steps=5)
    assert ensemble == 100 * 10 + 110 * 10 + 30 * 5
    assert equal_compute_steps(ensemble, 105) == 21  # 2250 / 105 = 21.4


def test_steps_by_cluster_size_keep_the_total_and_follow_the_sizes() -> None:
    assert expert_steps(100, [600, 100, 500, 200], "equal") == [100] * 4
    by_size = expert_steps(100, [600, 100, 500, 200], "by_size")
    assert by_size == [171, 29, 143, 57] and abs(sum(by_size) - 400) <= 2


def test_the_seeds_come_first_and_the_full_budget_reuses_seed_zero() -> None:
    cfg = parse_config({"study": {"budgets": [0.25, 1.0, 0.5]}})
    got = phases(cfg, seeds=2, scale=0.1)
    assert [p.tag for p in got] == ["s0", "s1", "b25", "b50"]
    assert got[2] == Phase("b25", 0, 0.025, False)
    assert all(p.text_blind for p in got[:2])


@pytest.mark.timeout(600)
def test_a_tiny_study_reports_every_method_the_router_ablation_and_the_compute_curve(tmp_path: Path) -> None:
    cfg = tiny_config(
        f"file://{tmp_path}/store",
        data={"limit": 360, "holdout_fraction": 0.3},
        train={"steps": 4, "compile": False, "checkpoint_every": 100},
        router={"train": {"steps": 3, "compile": False, "checkpoint_every": 100}},
        sample={"routing": ["top1", "top2", "full"]},
        study={"budgets": [0.5, 1.0], "quick": 0.5},
    )
    out = tmp_path / "report"
    r = paris_cli("study", str(write_config(tmp_path / "c.yaml", cfg)), "--quick", "--seeds", "2",
                  "--out", str(out), "--logs", str(tmp_path / "logs"), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    results = json.loads((out / "results.json").read_text())
    report = results["report"]
    for phase in results["phases"]:  # every method is sampled with the same prompts
        prompts = {json.dumps(r["prompts"]) for r in phase["results"].values()}
        assert len(prompts) == 1, phase["tag"]
    assert set(report["table"]) == {"monolith", "top1", "top2", "full", "text-blind top1", "text-blind top2",
                                    "text-blind full"}
    for row in report["table"].values():
        assert row["accuracy"]["n"] == 2 and 0 <= row["accuracy"]["mean"] <= 1
        assert row["frechet"]["n"] == 2
    assert len(report["table"]["top2"]["usage"]) == 2 and len(report["table"]["monolith"]["usage"]) == 1
    # Equal compute: the monolith's FLOPs are the ensemble's within one monolith step.
    flops, per_step = report["flops"], report["flops_per_step"]
    assert abs(flops["monolith"] - flops["ensemble"]) <= per_step["monolith"]["expert 0"]
    assert set(report["router_accuracy"]) == {"caption-aware", "text-blind"}
    assert len(report["router_accuracy"]["text-blind"]) == 10
    assert [c["budget"] for c in report["compute_curve"]] == [0.5, 1.0]
    assert report["judge"]["classes"] == 10
    text = (out / "README.md").read_text()
    assert "paris study" in text and "| text-blind top2 |" in text
    for png in ("modes.png", "compute.png", "router.png", "samples.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The trained pipelines stay in the store under names that say what they are.
    models = tmp_path / "store" / "models"
    for name in ("tiny-quick-s0-ensemble", "tiny-quick-s1-monolith", "tiny-quick-s0-textblind",
                 "tiny-quick-b50-ensemble"):
        assert (models / name / "pipeline.json").exists(), name
