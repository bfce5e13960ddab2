"""An expert joins a trained ensemble: `paris data add` makes the new data cluster K of the
dataset without touching clusters 0..K-1, the new expert trains alone, and the router grows by
one class from the trained one, while every old expert's files stay byte for byte the same."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from paris.config import DataConfig, RouterModelConfig, parse_config
from paris.data.add import add_cluster
from paris.data.prepare import prepare_dataset
from paris.data.shards import ShardSet, load_manifest, load_split
from paris.router.grow import fit_head, grow
from paris.router.model import ParisRouter, build_router
from paris.router.objective import router_logits
from paris.router.train import train_router
from paris.storage import LocalStore
from paris.trainer.checkpoint import fetch_weights
from tests.helpers import deep_update, paris_cli, served_pipeline, tiny_config, write_config


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def test_a_grown_router_keeps_every_old_class_and_adds_the_new_one_neutral() -> None:
    small = RouterModelConfig(hidden_size=32, depth=1, heads=2)
    old = build_router(small, 2, {"size": 8, "channels": 1}, 384, [0, 2])
    torch.nn.init.normal_(old.state_dict(keep_vars=True)["head.3.weight"])
    new = grow(old, build_router(small, 3, {"size": 8, "channels": 1}, 384, [0, 1, 2]))
    a, b = old.state_dict(), new.state_dict()
    w_old, w_new = a["head.3.weight"], b["head.3.weight"]
    torch.testing.assert_close(w_new[0], w_old[0])
    torch.testing.assert_close(w_new[2], w_old[1])
    torch.testing.assert_close(w_new[1], w_old.mean(0))
    trunk = [k for k in a if not k.startswith("head.3.")]
    assert trunk and all(torch.equal(a[k], b[k]) for k in trunk), "the trunk as it was"


def test_fitting_the_grown_head_puts_the_new_class_where_its_data_lies() -> None:
    """A new class starts at the mean of the old rows, so it is never anyone's argmax; the
    linear probe on the trunk's features must make it the argmax of its own data at once."""
    torch.manual_seed(0)
    small = RouterModelConfig(hidden_size=32, depth=1, heads=2, condition_on_text=False)
    old = build_router(small, 2, {"size": 8, "channels": 1}, 384, [0, 1])
    router = grow(old, build_router(small, 3, {"size": 8, "channels": 1}, 384, [0, 1, 2]))
    n = 96  # three clusters of clean images a trunk can tell apart: bright, dark, striped
    latents = torch.cat([torch.ones(32, 1, 8, 8), -torch.ones(32, 1, 8, 8), torch.ones(32, 1, 8, 8)])
    latents[64:, :, ::2] = -1
    clusters = torch.arange(3).repeat_interleave(32)
    data = ShardSet(latents, torch.zeros(n, 1, 384), torch.ones(n, 1, dtype=torch.bool), clusters, clusters, [""] * n)
    idx, t, no_drop = torch.arange(n), torch.full((n,), 0.05), torch.zeros(n, dtype=torch.bool)
    drawn = [(data, idx, t, torch.randn(n, 1, 8, 8), no_drop) for _ in range(4)]
    cpu, label_of = torch.device("cpu"), torch.arange(3)

    def accuracy_on_new_class() -> float:
        with torch.no_grad():
            pred = router_logits(router, data, idx[64:], t[64:], torch.randn(32, 1, 8, 8), cpu).argmax(-1)
        return float((pred == 2).float().mean())

    assert accuracy_on_new_class() == 0.0
    trunk = {k: v.clone() for k, v in router.state_dict().items() if not k.startswith("head.3.")}
    loss = fit_head(router, drawn, (torch.zeros(1, 384), torch.ones(1, dtype=torch.bool)), label_of, cpu)
    assert loss < 0.1 and accuracy_on_new_class() > 0.9
    assert all(torch.equal(v, router.state_dict()[k]) for k, v in trunk.items()), "only the last layer moves"


def test_a_grown_router_predicts_the_new_cluster_on_its_held_out_data(tmp_path: Path) -> None:
    """The router streams many small parts through windows of 4, and the new cluster has fewer
    parts than an epoch has windows: it must still be in every step, or the router unlearns it."""
    fit = {"steps": 150, "batch_size": 32, "lr": 1e-3, "warmup_steps": 20, "checkpoint_every": 150, "threads": 2}
    raw = tiny_config(
        f"file://{tmp_path}",
        data={"labels": list(range(9)), "limit": None, "shard_size": 64},
        router={"model": {"hidden_size": 64, "depth": 2, "condition_on_text": True}, "train": fit, "grow_steps": 40},
    )
    cfg, store = parse_config(raw), LocalStore(tmp_path)
    prepare_dataset(cfg.data, store)
    train_router(cfg, store)
    add_cluster(cfg.data, DataConfig.model_validate({**cfg.data.model_dump(), "labels": [9]}), store)
    manifest = load_manifest(store, cfg.data.name)
    parts = [len(c["shards"]) for c in manifest["clusters"]]
    assert parts[2] < sum(parts) / 4, parts  # fewer parts than windows: the case that went wrong
    train_router(
        cfg,
        store,
        {k: f"models/tiny/experts/{k}" for k in range(3)},
        "models/tiny/router/3",
        grow_from="models/tiny/router",
    )
    router = ParisRouter.from_pretrained(fetch_weights(store, "models/tiny/router/3", tmp_path / "w"))
    holdout = load_split(store, manifest, "holdout")
    nines = (holdout.clusters == 2).nonzero().flatten()
    t, eps = torch.full((len(nines),), 0.3), torch.randn(holdout.latents[nines].shape)
    with torch.no_grad():
        pred = router_logits(router.eval(), holdout, nines, t, eps, torch.device("cpu"))
    accuracy = float((pred.argmax(-1) == 2).float().mean())
    assert accuracy > 0.8, f"the grown router sends only {accuracy:.2f} of the new cluster's samples to its expert"


def test_an_expert_added_later_joins_without_touching_the_old_ones(tmp_path: Path) -> None:
    store = tmp_path / "s"
    base = tiny_config(f"file://{store}", data={"labels": [0, 1, 2, 3, 4, 5, 6, 7, 8], "limit": None})
    cfg = str(write_config(tmp_path / "c.yaml", base))
    for argv in (["data", "prepare"], ["train", "expert", "--cluster", "0"], ["train", "expert", "--cluster", "1"]):
        r = paris_cli(*argv[:2], cfg, *argv[2:])
        assert r.returncode == 0, r.stderr
    assert paris_cli("train", "router", cfg).returncode == 0
    old = {k: _digests(store / f"models/tiny/experts/{k}") for k in (0, 1)}

    r = paris_cli("data", "add", cfg, "--source", "digits", "--label", "9")
    assert r.returncode == 0 and "added cluster 2" in r.stderr, r.stderr
    manifest = json.loads((store / "datasets/digits-mini/manifest.json").read_text())
    assert manifest["num_clusters"] == 3 and manifest["clusters"][2]["label_histogram"][9] > 100
    assert sum(manifest["clusters"][2]["label_histogram"]) == manifest["clusters"][2]["label_histogram"][9]
    again = paris_cli("data", "add", cfg, "--source", "digits", "--label", "9")
    assert again.returncode == 2 and "added already, as cluster 2" in again.stderr.strip().splitlines()[-1]

    # The old experts resume as they are (their clusters did not change); the new one trains alone.
    for k in (0, 1):
        r = paris_cli("train", "expert", cfg, "--cluster", str(k))
        assert r.returncode == 0 and "already trained" in r.stderr, r.stderr
    assert paris_cli("train", "expert", cfg, "--cluster", "2").returncode == 0
    grown_cfg = str(write_config(tmp_path / "g.yaml", deep_update(base, {"router": {"grow_steps": 1}})))
    r = paris_cli("train", "router", grown_cfg, "--grow-from", "models/tiny/router", "--prefix", "models/tiny/router/3")
    assert r.returncode == 0 and "grown from" in r.stderr, r.stderr
    assert {k: _digests(store / f"models/tiny/experts/{k}") for k in (0, 1)} == old, "old experts byte-identical"
    pipeline = served_pipeline(store, "tiny")
    router = json.loads((pipeline / "router/config.json").read_text())
    assert (router["num_clusters"], router["clusters"]) == (3, [0, 1, 2])
    state = json.loads((store / "models/tiny/router/3/checkpoints/step-000001/state.json").read_text())
    assert state["grown_from"] == "models/tiny/router" and state["fingerprint"]["fields"]["router.grown_from"]

    # A prefix to grow from that holds no router, or a router of another architecture: one line.
    wider = str(write_config(tmp_path / "w.yaml", deep_update(base, {"router": {"model": {"hidden_size": 64}}})))
    mistakes = {
        ("--grow-from", "models/tiny/nothing"): "no trained router there",
        ("--grow-from", "../up"): "--grow-from '../up': expected a store prefix",
        ("--grow-from", "models/tiny/experts/0"): "holds the checkpoints of an expert, not of a router",
    }
    for args, said in mistakes.items():
        r = paris_cli("train", "router", cfg, *args, "--prefix", "models/tiny/router/x")
        assert r.returncode == 2 and _one_error_line(r.stderr, said), r.stderr
    r = paris_cli("train", "router", wider, "--grow-from", "models/tiny/router", "--prefix", "models/tiny/router/x")
    assert r.returncode == 2 and _one_error_line(r.stderr, "another architecture (router.model.hidden_size 32 -> 64)")


def _one_error_line(stderr: str, said: str) -> bool:
    lines = stderr.strip().splitlines()
    return "Traceback" not in stderr and lines[-1].startswith("error: ") and said in lines[-1]


def test_new_data_that_cannot_be_meant_is_refused_in_one_line(tmp_path: Path) -> None:
    cfg = str(write_config(tmp_path / "c.yaml", tiny_config(f"file://{tmp_path / 's'}", data={"labels": [0, 1, 2]})))
    mistakes = {
        (): "--label: name the digits to add",
        ("--label", "2"): "--label 2: already in dataset 'digits-mini'",
        ("--label", "12"): "data.labels.0: Input should be less than or equal to 9",
        ("--label", "9", "--path", str(tmp_path)): "--path: the digits source is built in",
        ("--source", "folder", "--path", str(tmp_path), "--label", "9"): "--label: only the digits source has labels",
        ("--source", "tarballs"): "data.source: Input should be 'digits', 'folder' or 'webdataset'",
        ("--label", "9"): "dataset 'digits-mini' not found",
    }
    for args, said in mistakes.items():
        r = paris_cli("data", "add", cfg, *args)
        assert r.returncode == 2 and _one_error_line(r.stderr, said), (args, r.stderr)
