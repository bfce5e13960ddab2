"""Inputs and store keys come from anywhere: reading them must never run code or write
outside the folder asked for, and encoders load local files only."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from paris.config import DataConfig, FeatureConfig
from paris.data.encoders import image_features, tensor_to_images
from paris.data.sources import load_samples
from paris.errors import DataError, StorageError
from paris.evaluate import _flat
from paris.storage import LocalStore
from tests.tiny_models import tiny_open_clip


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


class _WritesAFile:
    """Unpickling this creates a file: what a hostile .pyd member would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.path), "w")


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_a_webdataset_member_that_would_run_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _tar(tmp_path / "shard-0.tar", {
        "0000.png": _png(), "0000.txt": b"a red square",
        "0001.png": _png(), "0001.txt": b"another", "0001.pyd": pickle.dumps(_WritesAFile(marker)),
    })
    with pytest.raises(DataError, match=r"0001\.pyd"):
        load_samples(DataConfig(source="webdataset", path=str(tmp_path)))
    assert not marker.exists()


def test_webdataset_text_and_json_captions_are_read_without_decoders(tmp_path: Path) -> None:
    _tar(tmp_path / "a.tar", {"0.png": _png(), "0.txt": b" plain ", "1.png": _png(),
                              "1.json": json.dumps({"caption": "from json"}).encode()})
    samples = load_samples(DataConfig(source="webdataset", path=str(tmp_path)))
    assert [s.caption for s in samples] == ["plain", "from json"] and samples[0].image.mode == "RGB"


@pytest.mark.parametrize("file", ["../outside.png", "/etc/hostname", "sub/../../outside.png"])
def test_captions_cannot_point_outside_the_folder(tmp_path: Path, file: str) -> None:
    (tmp_path / "outside.png").write_bytes(_png())
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "ok.png").write_bytes(_png())
    lines = [{"file": "ok.png", "caption": "fine"}, {"file": file, "caption": "escape"}]
    (folder / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    with pytest.raises(DataError, match=r"captions\.jsonl:2: .*inside"):
        load_samples(DataConfig(source="folder", path=str(folder)))


class _KeysFromAnS3Server(LocalStore):
    """S3 allows keys with '..' segments or '//' (MinIO refuses to store them, so a bucket on
    another server is the case): answer such keys as that server would list them."""

    def __init__(self, root: Path, extra: list[str]) -> None:
        super().__init__(root)
        self.extra = extra

    def keys(self, prefix: str) -> list[str]:
        return sorted([*super().keys(prefix), *self.extra])

    def get_bytes(self, key: str) -> bytes:
        return b"hostile" if key in self.extra else super().get_bytes(key)


@pytest.mark.parametrize("bad", ["p/../../escaped.txt", "p//tmp/escaped-abs.txt"])
def test_download_dir_writes_nothing_outside_its_folder(tmp_path: Path, bad: str) -> None:
    store = _KeysFromAnS3Server(tmp_path / "store", [bad])
    store.put_bytes("p/ok.txt", b"ok")
    dest = tmp_path / "a" / "b"
    with pytest.raises(StorageError, match="outside"):
        store.download_dir("p", dest)
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/escaped-abs.txt").exists()
    assert not dest.exists()  # refused before anything was written


def test_open_clip_features_use_the_configured_local_model(tmp_path: Path) -> None:
    config = tiny_open_clip(tmp_path)
    images = [Image.new("RGB", (20, 20), (i * 40, 0, 0)) for i in range(3)]
    feats = image_features(FeatureConfig(kind="open_clip", model=str(config)), images)
    assert feats.shape == (3, 16) and np.isfinite(feats).all()  # the tiny config's embed_dim


@pytest.mark.parametrize("over", [{"path": "laion2b_s34b_b79k"}, {"model": "hf-hub:laion/CLIP-ViT-L-14"},
                                  {"model": "no-such-arch"}])
def test_open_clip_features_refuse_anything_that_would_download(over: dict[str, str]) -> None:
    with pytest.raises(DataError, match="open_clip"):
        image_features(FeatureConfig(kind="open_clip", **over), [Image.new("RGB", (8, 8))])


def test_saved_images_and_the_judge_see_the_same_pixels() -> None:
    x = torch.linspace(-1.2, 1.2, 64).reshape(1, 1, 8, 8)
    pil = np.asarray(tensor_to_images(x)[0], dtype=np.float64) / 255
    assert tensor_to_images(x)[0].mode == "L"
    np.testing.assert_allclose(pil.flatten(), _flat(x)[0], atol=1 / 255)
