"""Default prompts (a dataset without `sample.prompts`) come from caption headers only: the
parts' latents and token states are never read, and at most PROMPT_PARTS parts are touched
however large the held-out split."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import torch

from paris.data.shards import FIELDS, PartWriter, read_captions
from paris.errors import DataError
from paris.layout import dataset_prefix
from paris.router.generate import PROMPT_PARTS, default_prompts
from paris.storage import LocalStore

CAPTIONS = [f"a photo of thing {i}" for i in range(30)] + ["", "   "]


class _Counted:
    def __init__(self, f: BinaryIO, counts: Counter[str], key: str) -> None:
        self.f, self.counts, self.key = f, counts, key

    def read(self, n: int = -1) -> bytes:
        assert n >= 0, "a whole-object read"
        data = self.f.read(n)
        self.counts[self.key] += len(data)
        return data


class CountingStore(LocalStore):
    """A file store that counts the bytes streamed from each object and refuses whole-file
    downloads: what default_prompts costs, measured at the store."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.read: Counter[str] = Counter()

    @contextmanager
    def open_read(self, key: str, offset: int = 0) -> Iterator[BinaryIO]:
        with super().open_read(key, offset) as f:
            yield _Counted(f, self.read, key)  # type: ignore[misc]

    def get_file(self, key: str, path: Path) -> Path:
        raise AssertionError(f"{key} downloaded whole")

    def get_bytes(self, key: str) -> bytes:
        raise AssertionError(f"{key} read whole")


def held_out_split(store: LocalStore, parts: int, per_part: int = 10, seed: int = 0) -> dict[str, Any]:
    """A dataset manifest whose held-out split is `parts` part files of 32x32 latents."""
    rng = random.Random(seed)
    writer = PartWriter(store, dataset_prefix("ds"), index=0, shard_size=per_part)
    n = parts * per_part
    rows = {
        "latents": torch.randn(n, 4, 32, 32),
        "text_states": torch.randn(n, 12, 64).half(),
        "text_mask": torch.ones(n, 12, dtype=torch.bool),
        "labels": torch.full((n,), -1),
        "clusters": torch.zeros(n, dtype=torch.long),
    }
    assert set(rows) == set(FIELDS)
    captions = [rng.choice(CAPTIONS) for _ in range(n)]
    writer.add("holdout", rows, captions, [f"k{i}" for i in range(n)])
    infos = writer.close()
    return {"name": "ds", "num_clusters": 1, "clusters": [{"shards": []}], "holdout": {"size": n, "shards": infos}}


def test_default_prompts_read_only_caption_headers_of_a_bounded_number_of_parts(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    manifest = held_out_split(store, parts=3 * PROMPT_PARTS)
    prompts = default_prompts(store, manifest, seed=0)

    assert len(prompts) == 8 == len(set(prompts)) and prompts == sorted(prompts)
    assert all(p.strip() and p in CAPTIONS for p in prompts)
    root = dataset_prefix("ds")
    touched = set(store.read)
    assert 0 < len(touched) <= PROMPT_PARTS
    sizes = {f"{root}/{i['key']}": (tmp_path / root / i["key"]).stat().st_size for i in manifest["holdout"]["shards"]}
    for key in touched:
        assert store.read[key] < sizes[key] / 20, f"{key}: {store.read[key]} of {sizes[key]} bytes read"
    assert default_prompts(store, manifest, seed=0) == prompts, "the same seed draws the same prompts"
    assert default_prompts(store, manifest, seed=1) != prompts


def test_default_prompts_do_not_depend_on_the_order_parts_are_listed_in(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    manifest = held_out_split(store, parts=PROMPT_PARTS)
    first = default_prompts(store, manifest, seed=3, n=5)
    random.Random(0).shuffle(manifest["holdout"]["shards"])
    assert default_prompts(store, manifest, seed=3, n=5) == first
    every = {c for i in manifest["holdout"]["shards"] for c in read_captions(store, dataset_prefix("ds"), i)}
    assert set(first) <= every and len(first) == 5


def test_a_part_whose_header_is_damaged_is_named(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    manifest = held_out_split(store, parts=1)
    path = tmp_path / dataset_prefix("ds") / manifest["holdout"]["shards"][0]["key"]
    data = bytearray(path.read_bytes())
    data[12:20] = b"\xff" * 8  # inside the JSON header
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"corrupted shard .*holdout/part-00000-00000"):
        default_prompts(store, manifest, seed=0)
    path.write_bytes(bytes(data[:30]))  # cut inside the header
    with pytest.raises(DataError, match=r"corrupted shard .*ends inside its header"):
        default_prompts(store, manifest, seed=0)
