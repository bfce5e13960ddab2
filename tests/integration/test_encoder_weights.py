"""Encoder weights kept in the real MinIO (how a cluster's pods get them): fetched once into the
cache, fetched again when the stored files change, and loaded by the same encoders that load
local paths."""

from __future__ import annotations

import io
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from paris.config import DataConfig, FeatureConfig, StorageConfig, TextEncoderConfig
from paris.data.encoders import Encoders
from paris.data.weights import MARKER, Weights
from paris.errors import DataError
from paris.storage import LocalStore, S3Store, open_store
from tests import tiny_models
from tests.servers.minio import MinioServer


@pytest.fixture
def s3(minio_server: MinioServer, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    for k, v in minio_server.env().items():
        monkeypatch.setenv(k, v)
    store = open_store(StorageConfig(uri=f"s3://{minio_server.make_bucket()}/runs"))
    assert isinstance(store, S3Store)
    return store


def upload(minio: MinioServer, bucket: str, prefix: str, local: Path) -> str:
    """A local file or folder into the bucket, as `mc cp --recursive` would; its s3:// URI."""
    files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    for f in files:
        rel = f.name if local.is_file() else f.relative_to(local).as_posix()
        minio.client().fput_object(bucket, f"{prefix}/{rel}" if local.is_dir() else prefix, str(f))
    return f"s3://{bucket}/{prefix}"


def test_a_folder_of_weights_is_fetched_once_and_again_only_when_it_changes(
    s3: S3Store, minio_server: MinioServer, tmp_path: Path
) -> None:
    vae = tiny_models.tiny_vae(tmp_path / "vae")
    uri = upload(minio_server, s3.bucket, "weights/vae", vae)
    # A sibling whose name starts the same is another folder, not part of this one.
    minio_server.client().put_object(s3.bucket, "weights/vae-old/stale.bin", io.BytesIO(b"x"), 1)
    weights = Weights(s3, tmp_path / "cache")

    local = Path(weights.local(uri, "data.vae"))
    assert local.name == "vae" and (local / "config.json").read_bytes() == (vae / "config.json").read_bytes()
    assert sorted(p.name for p in local.iterdir()) == sorted(p.name for p in vae.iterdir())
    marker = local.parent / MARKER
    first = marker.stat().st_mtime_ns

    assert Path(weights.local(uri, "data.vae")) == local and marker.stat().st_mtime_ns == first, "reused"

    changed = b'{"changed": true}'
    minio_server.client().put_object(s3.bucket, "weights/vae/extra.json", io.BytesIO(changed), len(changed))
    again = Path(weights.local(uri, "data.vae"))
    assert again == local and (again / "extra.json").read_bytes() == changed
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [local.parent.name], "no temporary or stale copy left"


def _fetch_and_load(store: S3Store, uri: str, cache: Path) -> Path:
    local = Path(Weights(store, cache).local(uri, "data.vae"))
    AutoencoderKL.from_pretrained(local, local_files_only=True)  # complete, and still there
    return local


def test_processes_fetching_the_same_weights_at_once_all_get_a_complete_copy(
    s3: S3Store, minio_server: MinioServer, tmp_path: Path
) -> None:
    """As pods sharing a cache (or `paris data prepare --workers N`) do: nobody loads a copy
    that another one is still writing or moving away."""
    vae = tiny_models.tiny_vae(tmp_path / "vae")
    uri = upload(minio_server, s3.bucket, "weights/vae", vae)
    cache = tmp_path / "cache"
    with ProcessPoolExecutor(3, mp_context=multiprocessing.get_context("spawn")) as pool:
        paths = set(pool.map(_fetch_and_load, [s3] * 3, [uri] * 3, [cache] * 3))
    assert len(paths) == 1 and [p.name for p in cache.iterdir()] == [next(iter(paths)).parent.name]


def test_prepare_encoders_load_vae_dinov2_and_open_clip_from_the_store(
    s3: S3Store, minio_server: MinioServer, tmp_path: Path
) -> None:
    """The paper's three encoders named by s3:// URIs give what the same files give locally."""
    clip = tiny_models.tiny_open_clip(tmp_path / "clip")
    ckpt = tiny_models.tiny_open_clip_checkpoint(clip, tmp_path / "clip" / "weights.safetensors")
    local_cfg = DataConfig(
        source="folder", image_size=16, grayscale=False, vae=str(tiny_models.tiny_vae(tmp_path / "vae")),
        features=FeatureConfig(kind="dinov2", path=str(tiny_models.tiny_dinov2(tmp_path / "dinov2"))),
        text_encoder=TextEncoderConfig(kind="open_clip", model=str(clip), pretrained=str(ckpt), max_length=12),
        device="cpu",
    )
    b = s3.bucket
    stored_cfg = local_cfg.model_copy(update={
        "vae": upload(minio_server, b, "enc/vae", tmp_path / "vae"),
        "features": FeatureConfig(kind="dinov2", path=upload(minio_server, b, "enc/dinov2", tmp_path / "dinov2")),
        "text_encoder": TextEncoderConfig(
            kind="open_clip", max_length=12,
            model=upload(minio_server, b, "enc/clip/paris-tiny-clip.json", clip),
            pretrained=upload(minio_server, b, "enc/clip/weights.safetensors", ckpt),
        ),
        "weights_cache": str(tmp_path / "cache"),
    })
    images = [Image.new("RGB", (16, 16), (200, 30 * i, 10)) for i in range(3)]
    here, there = Encoders(local_cfg), Encoders(stored_cfg, s3)
    torch.testing.assert_close(there.codec.encode(images), here.codec.encode(images))
    assert (there.features(images) == here.features(images)).all()
    s_here, m_here = here.text.encode(["a red square", ""])
    s_there, m_there = there.text.encode(["a red square", ""])
    assert torch.equal(m_there, m_here) and torch.equal(s_there, s_here)
    # ...and the checkpoint was loaded, not the seeded random init.
    unloaded = Encoders(local_cfg.model_copy(update={"text_encoder": TextEncoderConfig(
        kind="open_clip", model=str(clip), max_length=12)}))
    assert not torch.equal(unloaded.text.encode(["a red square"])[0], s_here[:1])


def test_weights_in_the_store_need_that_store_and_must_exist(s3: S3Store, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.vae: nothing stored at s3://"):
        Weights(s3, tmp_path).local(f"s3://{s3.bucket}/no/such/vae", "data.vae")
    with pytest.raises(DataError, match=r"need s3:// storage"):
        Weights(LocalStore(tmp_path / "store"), tmp_path).local(f"s3://{s3.bucket}/vae", "data.vae")
    with pytest.raises(DataError, match=r"use a local path, file://\.\.\. or s3://"):
        Weights(s3, tmp_path).local("hf://stabilityai/sd-vae-ft-mse", "data.vae")
    assert Weights(s3, tmp_path).local("file:///models/vae", "data.vae") == "/models/vae"
