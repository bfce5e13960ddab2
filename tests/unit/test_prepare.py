"""Preparation as work units: every sample lands exactly once, finished units are never
redone, a failed one is retried alone, held-out membership depends only on (seed, key),
bad images are reported by name, and worker processes give the dataset one process gives."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paris.config import DataConfig
from paris.data.clustering import two_stage_kmeans
from paris.data.prepare import prepare_dataset
from paris.data.shards import load_manifest, read_shard
from paris.data.work import done_key, is_holdout, make_plan, run_unit
from paris.errors import DataError
from paris.storage import LocalStore

N = 60


def _image(i: int) -> Image.Image:
    rng = np.random.default_rng(i)
    base = np.zeros((12, 12, 3), dtype=np.uint8)
    base[..., i % 3] = 200  # three colour families: something for k-means to find
    return Image.fromarray(np.clip(base + rng.integers(0, 40, base.shape), 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imgs")
    lines = []
    for i in range(N):
        _image(i).save(root / f"{i:03d}.png")
        lines.append(json.dumps({"file": f"{i:03d}.png", "caption": f"a {['red', 'green', 'blue'][i % 3]} square"}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _cfg(folder: Path, **over: object) -> DataConfig:
    base: dict[str, object] = {
        "name": "squares", "source": "folder", "path": str(folder), "image_size": 8, "clusters": 3,
        "fine_clusters": 6, "part_size": 16, "shard_size": 7, "batch_size": 5, "holdout_fraction": 0.25,
        "text_encoder": {"max_length": 8},
    }
    return DataConfig.model_validate(base | over)


def _keys_by_split(store: LocalStore, manifest: dict[str, object]) -> dict[str, list[str]]:
    root = f"datasets/{manifest['name']}"
    out: dict[str, list[str]] = {}
    for c in manifest["clusters"]:  # type: ignore[attr-defined]
        out[str(c["id"])] = [k for info in c["shards"] for k in read_shard(store, root, info).keys]
    out["holdout"] = [k for info in manifest["holdout"]["shards"] for k in read_shard(store, root, info).keys]  # type: ignore[index]
    return out


def test_every_sample_lands_in_exactly_one_part_and_the_split_is_a_hash_of_its_key(
    folder: Path, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path)
    cfg = _cfg(folder)
    manifest = prepare_dataset(cfg, store)
    assert manifest["indexes"] == 4  # ceil(60 / 16) parts, one index each
    by_split = _keys_by_split(store, manifest)
    every = [k for keys in by_split.values() for k in keys]
    assert Counter(every) == Counter(f"{i:03d}.png" for i in range(N))
    assert sorted(by_split["holdout"]) == sorted(k for k in every if is_holdout(cfg, k))
    assert manifest["num_samples"] == N and manifest["holdout"]["size"] == len(by_split["holdout"])
    # Parts are per work unit and never larger than shard_size.
    for c in manifest["clusters"]:
        assert all(s["samples"] <= 7 and "/part-0000" in s["key"] for s in c["shards"])
        assert c["size"] == sum(s["samples"] for s in c["shards"])
    # The three colour families are what the clustering finds.
    for k in range(3):
        assert len({int(key[:3]) % 3 for key in by_split[str(k)]}) == 1


def test_the_held_out_split_does_not_depend_on_how_the_input_is_cut(folder: Path, tmp_path: Path) -> None:
    a = prepare_dataset(_cfg(folder, part_size=7), LocalStore(tmp_path / "a"))
    b = prepare_dataset(_cfg(folder, part_size=60, indexes=1), LocalStore(tmp_path / "b"))
    assert a["indexes"] == 9 and b["indexes"] == 1
    ka = _keys_by_split(LocalStore(tmp_path / "a"), a)["holdout"]
    kb = _keys_by_split(LocalStore(tmp_path / "b"), b)["holdout"]
    assert sorted(ka) == sorted(kb) and 0 < len(ka) < N


class _DiesOnce(LocalStore):
    """Fails the first upload of one encode index's parts, like a pod killed mid-way; the
    marker file makes it once across processes."""

    def __init__(self, root: Path, marker: Path, index: int) -> None:
        super().__init__(root)
        self.marker, self.index = marker, index

    def put_file(self, key: str, path: Path) -> None:
        if f"/part-{self.index:05d}-" in key and not self.marker.exists():
            self.marker.write_text("died")
            raise OSError("killed mid-upload")
        super().put_file(key, path)


def test_a_finished_index_is_never_redone_and_a_failed_one_is_retried_alone(folder: Path, tmp_path: Path) -> None:
    cfg = _cfg(folder)
    store = LocalStore(tmp_path / "s")
    make_plan(cfg, store, reset=True)
    for i in range(4):
        run_unit(cfg, store, "features", i)
    run_unit(cfg, store, "cluster", None)
    run_unit(cfg, store, "encode", 0)
    first = (tmp_path / "s" / done_key(cfg.name, "encode", 0)).stat().st_mtime_ns

    dying = _DiesOnce(tmp_path / "s", tmp_path / "marker", index=2)
    with pytest.raises(OSError, match="killed"):
        run_unit(cfg, dying, "encode", 2)
    assert not store.exists(done_key(cfg.name, "encode", 2))  # its parts are not published
    assert not store.exists(done_key(cfg.name, "finalize"))
    with pytest.raises(DataError, match="has not finished"):
        run_unit(cfg, store, "finalize", None)

    manifest = prepare_dataset(cfg, dying)  # resumes: skips 0, redoes 2 alone, does 1 and 3
    assert (tmp_path / "s" / done_key(cfg.name, "encode", 0)).stat().st_mtime_ns == first
    every = [k for keys in _keys_by_split(store, manifest).values() for k in keys]
    assert len(every) == len(set(every)) == N


def test_worker_processes_retry_a_crashed_unit_and_match_one_process(folder: Path, tmp_path: Path) -> None:
    cfg = _cfg(folder)
    one = prepare_dataset(cfg, LocalStore(tmp_path / "one"))
    dying = _DiesOnce(tmp_path / "two", tmp_path / "marker", index=1)
    two = prepare_dataset(cfg, dying, workers=2)
    assert (tmp_path / "marker").exists()  # a unit did die, in a worker process
    ka = _keys_by_split(LocalStore(tmp_path / "one"), one)
    kb = _keys_by_split(LocalStore(tmp_path / "two"), two)
    assert {s: sorted(v) for s, v in ka.items()} == {s: sorted(v) for s, v in kb.items()}


def test_a_second_prepare_reuses_the_dataset_and_a_new_config_replaces_it(folder: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    first = prepare_dataset(_cfg(folder), store)
    assert prepare_dataset(_cfg(folder, batch_size=3), store)["created"] == first["created"]  # speed-only change
    second = prepare_dataset(_cfg(folder, clusters=2), store)
    assert second["num_clusters"] == 2 and not store.keys("datasets/squares/clusters/2/")
    assert load_manifest(store, "squares")["fingerprint"] == second["fingerprint"]


def test_a_pod_never_mixes_two_configs(folder: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    prepare_dataset(_cfg(folder), store)
    with pytest.raises(DataError, match="another data config"):
        run_unit(_cfg(folder, clusters=2), store, "features", 0)


def test_an_unreadable_image_fails_with_its_name_or_is_skipped(folder: Path, tmp_path: Path) -> None:
    bad = tmp_path / "imgs"
    bad.mkdir()
    for f in folder.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "007.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"007\.png: not a readable image"):
        prepare_dataset(_cfg(bad), LocalStore(tmp_path / "fail"))
    assert not (tmp_path / "fail" / "datasets/squares/manifest.json").exists()

    manifest = prepare_dataset(_cfg(bad, on_error="skip"), LocalStore(tmp_path / "skip"))
    assert manifest["num_samples"] == N - 1
    assert manifest["skipped"]["count"] == 1 and manifest["skipped"]["first"][0].endswith("007.png")


def test_more_clusters_than_the_clustering_sample_is_a_clear_error(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"K=3 clusters is larger than the clustering sample \(2 samples\)"):
        prepare_dataset(_cfg(folder, cluster_sample=2), LocalStore(tmp_path))
    assert not (tmp_path / "datasets/squares/manifest.json").exists()


def test_the_clustering_is_fitted_on_a_bounded_sample(folder: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    cfg = _cfg(folder, cluster_sample=20)
    make_plan(cfg, store, reset=True)
    for i in range(4):
        run_unit(cfg, store, "features", i)
    fit = run_unit(cfg, store, "cluster", None)
    assert fit["sample"] == 20 < fit["training_samples"]


@pytest.mark.parametrize("backend", ["faiss", "sklearn"])
def test_both_kmeans_backends_find_separated_blobs_and_assign_in_chunks(backend: str) -> None:
    rng = np.random.default_rng(0)
    centers = np.array([[0.0] * 6, [20.0] * 6, [-20.0] * 6])
    x = np.concatenate([rng.normal(c, 1.0, (200, 6)) for c in centers])
    truth = np.repeat([0, 1, 2], 200)
    clustering, labels = two_stage_kmeans(x, k=3, fine_k=12, pca_dim=4, seed=0, backend=backend)
    # Same partition as the truth, up to renaming the clusters.
    assert len(set(zip(labels.tolist(), truth.tolist(), strict=True))) == 3
    np.testing.assert_array_equal(clustering.assign(x, chunk=7), clustering.assign(x, chunk=10_000))
    np.testing.assert_array_equal(clustering.assign(x), labels)


def test_a_folder_in_the_store_reads_like_a_local_folder(folder: Path, tmp_path: Path) -> None:
    inputs = LocalStore(tmp_path / "inputs")
    inputs.upload_dir(folder, "raw/squares")
    store = LocalStore(tmp_path / "out")
    manifest = prepare_dataset(_cfg(folder, path=f"file://{tmp_path}/inputs/raw/squares"), store)
    local = prepare_dataset(_cfg(folder), LocalStore(tmp_path / "local"))
    assert [c["size"] for c in manifest["clusters"]] == [c["size"] for c in local["clusters"]]
