"""An expert shares nothing: it reads only its cluster's shards, writes only its own prefix,
and refuses to run inside a torch.distributed process group."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch.distributed as dist

from paris.config import parse_config
from paris.data.prepare import prepare_dataset
from paris.storage import LocalStore
from paris.trainer.expert import train_expert
from tests.helpers import tiny_config


class RecordingStore(LocalStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: set[str] = set()
        self.writes: set[str] = set()

    def get_bytes(self, key: str) -> bytes:
        self.reads.add(key)
        return super().get_bytes(key)

    def get_file(self, key: str, path: Path) -> Path:
        self.reads.add(key)
        return super().get_file(key, path)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.writes.add(key)
        super().put_bytes(key, data)

    def put_file(self, key: str, path: Path) -> None:
        self.writes.add(key)
        super().put_file(key, path)


def test_an_expert_reads_its_cluster_and_writes_its_prefix_only(tmp_path: Path) -> None:
    cfg = parse_config(tiny_config(f"file://{tmp_path}", data={"clusters": 3}))
    prepare_dataset(cfg.data, LocalStore(tmp_path))
    store = RecordingStore(tmp_path)
    train_expert(cfg, 1, store)

    data = "datasets/digits-mini"
    allowed = {f"{data}/manifest.json", f"{data}/null_text.safetensors"}
    assert store.reads - allowed, "it read no shard at all"
    for key in store.reads - allowed:  # its shards, and its own checkpoints when resuming
        assert key.startswith((f"{data}/clusters/1/", "models/tiny/experts/1/")), key
    assert all(k.startswith("models/tiny/experts/1/") for k in store.writes), sorted(store.writes)


def test_training_refuses_a_torch_distributed_process_group(tmp_path: Path) -> None:
    cfg = parse_config(tiny_config(f"file://{tmp_path}"))
    prepare_dataset(cfg.data, LocalStore(tmp_path))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        with pytest.raises(RuntimeError, match=r"must not run under torch\.distributed"):
            train_expert(cfg, 0, LocalStore(tmp_path))
    finally:
        dist.destroy_process_group()
