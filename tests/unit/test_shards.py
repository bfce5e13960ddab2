"""Shard round trip, checksums, and the corrupted-shard error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from paris.data.shards import ShardSet, read_shard, write_shards
from paris.errors import DataError
from paris.storage import LocalStore


def _shardset(n: int) -> ShardSet:
    g = torch.Generator().manual_seed(0)
    return ShardSet(
        latents=torch.randn(n, 1, 8, 8, generator=g),
        text_states=torch.randn(n, 5, 16, generator=g).half(),
        text_mask=torch.rand(n, 5, generator=g) > 0.3,
        labels=torch.arange(n) % 10,
        clusters=torch.zeros(n, dtype=torch.long),
        captions=[f"caption {i} ünïcode" for i in range(n)],
    )


def test_round_trip_across_several_shards(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    s = _shardset(23)
    infos = write_shards(store, "ds/clusters/0", s, shard_size=10)
    assert [i["samples"] for i in infos] == [10, 10, 3]
    back = ShardSet.concat([read_shard(store, "", {**i, "key": i["key"]}) for i in infos])
    for f in ("latents", "text_states", "text_mask", "labels", "clusters"):
        assert torch.equal(getattr(back, f), getattr(s, f)), f
    assert back.captions == s.captions


def test_a_corrupted_shard_is_refused_with_its_name(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    (info,) = write_shards(store, "ds/clusters/0", _shardset(4), shard_size=10)
    path = tmp_path / info["key"]
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"corrupted shard .*shard-00000"):
        read_shard(store, "", info)
