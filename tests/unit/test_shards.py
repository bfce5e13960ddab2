"""Part files: the streamed safetensors writer's round trip, checksums, and the
corrupted-shard error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from paris.data.shards import FIELDS, PartWriter, ShardSet, read_shard
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
        keys=[f"img/{i}.png" for i in range(n)],
    )


def _write(store: LocalStore, s: ShardSet, shard_size: int, batch: int = 4) -> list[dict[str, object]]:
    writer = PartWriter(store, "ds", index=3, shard_size=shard_size)
    for start in range(0, len(s), batch):  # batches arrive one at a time, as from the encoders
        sl = slice(start, start + batch)
        writer.add(0, {f: getattr(s, f)[sl] for f in FIELDS}, s.captions[sl], s.keys[sl])
    return writer.close()


def test_streamed_parts_round_trip_across_several_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    s = _shardset(23)
    infos = _write(store, s, shard_size=10)
    assert [i["samples"] for i in infos] == [10, 10, 3]
    assert [i["key"] for i in infos] == [f"clusters/0/part-00003-0000{j}.safetensors" for j in range(3)]
    back = ShardSet.concat([read_shard(store, "ds", i) for i in infos])
    for f in FIELDS:
        assert torch.equal(getattr(back, f), getattr(s, f)), f
    assert back.captions == s.captions and back.keys == s.keys
    # The files are plain safetensors: the library reads them too.
    assert load_file(tmp_path / "ds" / str(infos[0]["key"]))["latents"].shape == (10, 1, 8, 8)
    assert infos[0]["label_histogram"] == [1] * 10


def test_a_corrupted_shard_is_refused_with_its_name(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    (info,) = _write(store, _shardset(4), shard_size=10)
    path = tmp_path / "ds" / str(info["key"])
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"corrupted shard .*part-00003-00000"):
        read_shard(store, "ds", info)
