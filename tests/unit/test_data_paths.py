"""The non-default data paths, offline: a folder and WebDataset tars of RGB images, a VAE,
DINOv2 and open_clip encoders (small random-weight models saved to local folders)."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from paris.config import DataConfig, TextEncoderConfig, parse_config
from paris.data.clustering import two_stage_kmeans
from paris.data.encoders import OpenClipTextEncoder
from paris.data.shards import read_shard
from paris.data.sources import load_samples
from paris.router.pipeline import ParisPipeline
from paris.router.server import create_app, pipeline_loader
from paris.storage import LocalStore
from tests import tiny_models
from tests.helpers import paris_cli, served_pipeline, tiny_config, write_config


def _image(i: int) -> Image.Image:
    rng = np.random.default_rng(i)
    base = np.zeros((16, 16, 3), dtype=np.uint8)
    base[..., i % 3] = 200  # three colour families: something for k-means to find
    return Image.fromarray(np.clip(base + rng.integers(0, 40, base.shape), 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imgs")
    lines = []
    for i in range(30):
        _image(i).save(root / f"{i}.png")
        lines.append(json.dumps({"file": f"{i}.png", "caption": f"a {['red', 'green', 'blue'][i % 3]} square"}))
    (root / "captions.jsonl").write_text("\n".join(lines))
    return root


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models.tiny_vae(tmp_path_factory.mktemp("vae"))


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models.tiny_dinov2(tmp_path_factory.mktemp("dinov2"))


def test_folder_source_reads_captions_and_rgb(folder: Path) -> None:
    samples = load_samples(DataConfig(source="folder", path=str(folder)))
    assert len(samples) == 30 and samples[4].caption == "a green square" and samples[4].image.mode == "RGB"


def test_webdataset_source(folder: Path, tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "shard-0.tar", "w") as tar:
        for i in range(6):
            for ext, data in (("png", (folder / f"{i}.png").read_bytes()), ("txt", f"caption {i}".encode())):
                info = tarfile.TarInfo(f"{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    samples = load_samples(DataConfig(source="webdataset", path=str(tmp_path)))
    assert [s.caption for s in samples] == [f"caption {i}" for i in range(6)]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models.tiny_open_clip(tmp_path_factory.mktemp("clip"))


def test_the_papers_configuration_runs_end_to_end_then_generates_evaluates_and_serves(
    folder: Path, tiny_vae: Path, tiny_dinov2: Path, tiny_clip: Path, tmp_path: Path
) -> None:
    """VAE latents, DINOv2 clustering features and open_clip caption states (small random
    local models standing in for sd-vae-ft-mse, DINOv2 and CLIP ViT-L/14), through `paris run`."""
    cfg = tiny_config(
        f"file://{tmp_path}/store",
        data={"name": "squares", "source": "folder", "path": str(folder), "image_size": 16, "limit": None,
              "vae": str(tiny_vae), "features": {"kind": "dinov2", "path": str(tiny_dinov2), "pca_dim": 8},
              "text_encoder": {"kind": "open_clip", "model": str(tiny_clip), "max_length": 12},
              "clusters": 2, "fine_clusters": 4, "holdout_fraction": 0.0},
        sample={"prompts": ["a red square"], "routing": ["top1"]},
        expert={"patch_size": 1},
        router={"model": {"patch_size": 1}},
    )
    path = write_config(tmp_path / "c.yaml", cfg)
    r = paris_cli("run", str(path), "--logs", str(tmp_path / "logs"))
    assert r.returncode == 0, r.stderr
    store = tmp_path / "store"
    manifest = json.loads((store / "datasets/squares/manifest.json").read_text())
    assert manifest["latent"]["space"] == "vae" and manifest["latent"]["channels"] == 4
    assert manifest["latent"]["size"] == 8  # two VAE blocks: 16 px -> 8 latent
    assert manifest["text"]["kind"] == "open_clip" and manifest["text"]["dim"] == 32
    index = json.loads((served_pipeline(store, "tiny") / "model_index.json").read_text())
    assert index["text_encoder"] == ["paris.router.text", "OpenClipTextModel"]
    assert (served_pipeline(store, "tiny") / "vae/config.json").is_file()
    assert (store / "models/tiny/samples/top1.png").is_file()

    # The pipeline's text encoder gives the token states the training captions were encoded to.
    pipe = ParisPipeline.from_pretrained(served_pipeline(store, "tiny"))
    part = read_shard(LocalStore(store), "datasets/squares", manifest["clusters"][0]["shards"][0])
    states, mask = pipe.encode_prompt([part.captions[0]])
    assert torch.equal(mask[0], part.text_mask[0])
    torch.testing.assert_close(states[0][mask[0]], part.text_states[0][mask[0]].float(), atol=2e-2, rtol=1e-2)

    r = paris_cli("generate", str(path), "-p", "a blue square", "--count", "2", "--out", str(tmp_path / "gen"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "gen/grid.png").is_file() and len(list((tmp_path / "gen").glob("000-*.png"))) == 2
    r = paris_cli("eval", str(path))
    assert r.returncode == 0, r.stderr
    assert json.loads((store / "models/tiny/eval.json").read_text())["modes"]["top1"]["usage"]

    run_cfg = parse_config(cfg)
    with TestClient(create_app(pipeline_loader(run_cfg), run_cfg.sample)) as client:
        assert client.app.state.loaded.wait(120)  # type: ignore[attr-defined]
        resp = client.post("/v1/generate", json={"prompt": "a green square", "steps": 2, "count": 2})
        assert resp.status_code == 200, resp.text
        assert resp.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_open_clip_text_tower_gives_every_token_state() -> None:
    # Random weights exercise the code path offline; real runs pass a local checkpoint.
    enc = OpenClipTextEncoder(TextEncoderConfig(kind="open_clip", model="ViT-B-32", max_length=20))
    states, mask = enc.encode(["a photo of a cat", ""])
    assert states.shape == (2, 20, 512) and enc.dim == 512
    assert mask[0].sum() == 7 and mask[1].sum() == 2  # <start> a photo of a cat <end>; <start> <end>
    assert torch.isfinite(states).all()


def test_catch_all_cluster_warns_and_balance_caps_it(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(0)
    # One dense blob of 90 points and two far, small blobs of 5: a catch-all cluster.
    x = np.concatenate([rng.normal(0, 1, (90, 4)), rng.normal(50, 1, (5, 4)), rng.normal(-50, 1, (5, 4))])
    with caplog.at_level(logging.WARNING):
        _, labels = two_stage_kmeans(x, k=3, fine_k=20, pca_dim=4, seed=0, max_fraction=0.5)
    assert np.bincount(labels).max() == 90 and "catch-all" in caplog.text
    _, balanced = two_stage_kmeans(x, k=3, fine_k=20, pca_dim=4, seed=0, balance=True, max_fraction=0.5)
    assert np.bincount(balanced, minlength=3).max() <= 50


def test_run_on_a_folder_samples_held_out_captions_by_default(folder: Path, tmp_path: Path) -> None:
    # No sample.prompts: the grids use held-out captions instead of failing after training.
    cfg = tiny_config(
        f"file://{tmp_path}/store",
        data={"name": "squares", "source": "folder", "path": str(folder), "image_size": 8, "limit": None,
              "clusters": 2, "fine_clusters": 4},
        sample={"routing": ["top1"]},
    )
    r = paris_cli("run", str(write_config(tmp_path / "c.yaml", cfg)), "--logs", str(tmp_path / "logs"))
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "store/models/tiny/summary.json").read_text())
    prompts = summary["eval"]["prompts"]
    assert prompts and set(prompts) <= {"a red square", "a green square", "a blue square"}
    assert (tmp_path / "store/models/tiny/samples/top1.png").is_file()
