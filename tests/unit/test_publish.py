"""Pipelines are published atomically: a version folder, then the pointer. A publish that
crashes midway leaves the previous pipeline served, a loader never sees a mix, and old
versions beyond the newest two are removed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paris.fingerprint import Fingerprint
from paris.router.assemble import load_pipeline, publish_pipeline, published, random_pipeline
from paris.storage import LocalStore


class _DiesMidUpload(LocalStore):
    """A store whose writer is killed after `left` files of an upload."""

    left: int | None = None

    def put_file(self, key: str, path: Path) -> None:
        if self.left is not None:
            if self.left == 0:
                raise KeyboardInterrupt("SIGKILL stand-in: the publishing process dies here")
            self.left -= 1
        super().put_file(key, path)


def _expert_count(store: LocalStore, tmp: Path) -> int:
    pipe = load_pipeline(store, "m", tmp)
    return int(pipe.router.config.num_clusters)


def test_a_publish_that_dies_midway_leaves_the_old_pipeline_served(tmp_path: Path) -> None:
    store = _DiesMidUpload(tmp_path / "s")
    first = publish_pipeline(random_pipeline(experts=2), store, "m", Fingerprint({"v": 1}))
    pointer = published(store, "m")
    assert pointer is not None and first.endswith(pointer["prefix"]) and pointer["fingerprint"]["digest"]
    assert all(len(v["sha256"]) == 64 for v in pointer["files"].values())
    assert _expert_count(store, tmp_path / "a") == 2

    store.left = 5
    with pytest.raises(KeyboardInterrupt):
        publish_pipeline(random_pipeline(experts=3), store, "m", Fingerprint({"v": 2}))
    store.left = None
    assert published(store, "m") == pointer, "the pointer never moved"
    assert _expert_count(store, tmp_path / "b") == 2, "the old pipeline, whole"

    publish_pipeline(random_pipeline(experts=3), store, "m", Fingerprint({"v": 3}))
    assert _expert_count(store, tmp_path / "c") == 3
    publish_pipeline(random_pipeline(experts=3), store, "m")
    versions = {k.split("/")[3] for k in store.keys("models/m/pipelines/")}
    assert len(versions) == 2, versions


def test_a_pipeline_whose_files_do_not_match_the_pointer_is_not_loaded(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    publish_pipeline(random_pipeline(experts=2), store, "m")
    pointer = published(store, "m")
    assert pointer is not None
    config = tmp_path / "s" / pointer["prefix"] / "router" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "num_clusters": 9}))
    with pytest.raises(Exception, match="does not match its checksums"):
        load_pipeline(store, "m", tmp_path / "x")
