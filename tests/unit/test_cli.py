"""Every command end to end for 2 steps, through the real `paris` executable, and the
one-line errors users get for bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from paris.data.sources import DIGIT_NAMES
from tests.helpers import paris_cli, served_pipeline, tiny_config, write_config


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with the mini digits dataset prepared by `paris data prepare`."""
    root = tmp_path_factory.mktemp("cli")
    cfg = write_config(root / "cfg.yaml", tiny_config(f"file://{root}/store"))
    r = paris_cli("data", "prepare", str(cfg))
    assert r.returncode == 0, r.stderr
    return root


def test_every_command_runs_for_two_steps(prepared: Path) -> None:
    cfg = str(prepared / "cfg.yaml")
    store = prepared / "store"
    manifest = json.loads((store / "datasets/digits-mini/manifest.json").read_text())
    assert manifest["num_clusters"] == 2 and manifest["num_samples"] == 300
    # Held-out membership is a hash of each sample's key: about 20%, every sample exactly once.
    assert sum(c["size"] for c in manifest["clusters"]) + manifest["holdout"]["size"] == 300
    assert 40 <= manifest["holdout"]["size"] <= 80

    for k in ("0", "1"):
        r = paris_cli("train", "expert", cfg, "--cluster", k)
        assert r.returncode == 0, r.stderr
        assert json.loads((store / f"models/tiny/experts/{k}/latest.json").read_text())["step"] == 2
        assert json.loads((store / f"models/tiny/experts/{k}/progress.json").read_text())["state"] == "done"

    r = paris_cli("train", "router", cfg)
    assert r.returncode == 0, r.stderr
    assert (served_pipeline(store, "tiny") / "model_index.json").is_file()
    assert (store / "models/tiny/router/accuracy.json").is_file()
    assert (store / "models/tiny/router/accuracy.png").read_bytes()[:4] == b"\x89PNG"

    out = prepared / "samples"
    r = paris_cli("generate", cfg, "--prompt", "a handwritten digit three", "--count", "3", "--routing", "top2",
                  "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "grid.png").is_file() and len(list(out.glob("000-*.png"))) == 3

    r = paris_cli("eval", cfg)
    assert r.returncode == 0, r.stderr
    scores = json.loads((store / "models/tiny/eval.json").read_text())
    assert set(scores["modes"]) == {"top1", "full"}
    # The judge scored every sample of the ten digit prompts (a 2-step model's accuracy is
    # noise; tests/unit/test_evaluate.py checks that the judge itself discriminates).
    assert scores["prompts"] == [f"a handwritten digit {d}" for d in DIGIT_NAMES]
    n = len(scores["prompts"]) * 1  # sample.per_prompt in tiny_config
    for row in scores["modes"].values():
        assert round(row["accuracy"] * n, 6) == round(row["accuracy"] * n)
        assert sum(row["expert_calls"]) == n * 2 * (1 if row is scores["modes"]["top1"] else 2)


def test_paris_run_does_the_whole_job(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(f"file://{tmp_path}/store"))
    r = paris_cli("run", str(cfg), "--logs", str(tmp_path / "logs"))
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "store/models/tiny/summary.json").read_text())
    assert [e["steps"] for e in summary["experts"]] == [2, 2]
    # Not a terminal: one line per expert and change, never the whole table again and again.
    assert "experts (one process each)" not in r.stderr
    for k in (0, 1):
        assert r.stderr.count(f"expert {k}: done, step 2/2") == 1, r.stderr
    assert set(summary["eval"]["modes"]) == {"top1", "full"}
    assert (tmp_path / "store/models/tiny/samples/top1.png").is_file()
    # Each expert ran in its own process: two different pids reported progress.
    pids = {json.loads((tmp_path / f"store/models/tiny/experts/{k}/progress.json").read_text())["pid"]
            for k in (0, 1)}
    assert len(pids) == 2


def _assert_one_line_error(r: subprocess.CompletedProcess[str], needle: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    err = r.stderr.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("error:") and needle in last, err


def test_missing_dataset(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", tiny_config(f"file://{tmp_path}/s", data={
        "source": "folder", "path": str(tmp_path / "nope")}))
    _assert_one_line_error(paris_cli("data", "prepare", str(cfg)), "dataset not found")
    assert not (tmp_path / "s/datasets/digits-mini/manifest.json").exists()


def test_empty_captions_file(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs/captions.jsonl").write_text("\n")
    cfg = write_config(tmp_path / "c.yaml", tiny_config(f"file://{tmp_path}/s", data={
        "source": "folder", "path": str(tmp_path / "imgs")}))
    _assert_one_line_error(paris_cli("data", "prepare", str(cfg)), "is empty")
    assert not (tmp_path / "s/datasets").exists()


def test_more_clusters_than_samples(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", tiny_config(f"file://{tmp_path}/s", data={"limit": 6, "clusters": 8}))
    _assert_one_line_error(paris_cli("data", "prepare", str(cfg)), "larger than the dataset")
    assert not (tmp_path / "s/datasets").exists()


def test_unknown_routing_mode(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", tiny_config(f"file://{tmp_path}/s", sample={"routing": ["best"]}))
    _assert_one_line_error(paris_cli("data", "prepare", str(cfg)), "sample.routing.0")
    ok = write_config(tmp_path / "ok.yaml", tiny_config(f"file://{tmp_path}/s"))
    _assert_one_line_error(paris_cli("generate", str(ok), "--routing", "top0"), "unknown routing mode")


def test_corrupted_shard(prepared: Path, tmp_path: Path) -> None:
    import shutil

    store = tmp_path / "store"
    shutil.copytree(prepared / "store" / "datasets", store / "datasets")
    manifest = json.loads((store / "datasets/digits-mini/manifest.json").read_text())
    shard = store / "datasets/digits-mini" / manifest["clusters"][1]["shards"][0]["key"]
    shard.write_bytes(shard.read_bytes()[:-100])
    cfg = write_config(tmp_path / "c.yaml", tiny_config(f"file://{store}"))
    _assert_one_line_error(paris_cli("train", "expert", str(cfg), "--cluster", "1"), "corrupted shard")
    assert not (store / "models/tiny/experts/1/latest.json").exists()


def test_bad_config_files(tmp_path: Path) -> None:
    _assert_one_line_error(paris_cli("data", "prepare", str(tmp_path / "none.yaml")), "config file not found")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    _assert_one_line_error(paris_cli("data", "prepare", str(bad)), "not valid YAML")
    neg = write_config(tmp_path / "neg.yaml", tiny_config("file:///tmp/x", train={"steps": -1}))
    _assert_one_line_error(paris_cli("train", "expert", str(neg)), "train.steps")
    _assert_one_line_error(paris_cli("train", "expert", str(write_config(tmp_path / "k.yaml", tiny_config(
        f"file://{tmp_path}/empty"))), "--cluster", "0"), "run `paris data prepare` first")


def test_cluster_index_out_of_range(prepared: Path) -> None:
    _assert_one_line_error(paris_cli("train", "expert", str(prepared / "cfg.yaml"), "--cluster", "7"),
                           "cluster 7 does not exist")
