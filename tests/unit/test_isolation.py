"""An expert shares nothing: it reads only its cluster's shards, writes only its own prefix,
and a torch.distributed group may join only the ranks of one expert (data parallel inside
one expert's pod), never two experts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.distributed as dist

from paris.config import parse_config
from paris.data.prepare import prepare_dataset
from paris.errors import TrainingError
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


def _rank_trains(rank: int, root: str, clusters: list[int], out: str) -> None:
    """One rank of a 2-rank gloo group: train expert `clusters[rank]`; record what happened."""
    import json

    import torch

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root}/pg", rank=rank, world_size=2)
    cfg = parse_config(tiny_config(f"file://{root}", data={"clusters": 3}, train={"compile": False}))
    store = RecordingStore(Path(root))
    try:
        train_expert(cfg, clusters[rank], store)
        outcome = "trained"
    except TrainingError as err:
        outcome = str(err)
    finally:
        dist.destroy_process_group()
    Path(out, f"rank-{rank}.json").write_text(
        json.dumps({"outcome": outcome, "reads": sorted(store.reads), "writes": sorted(store.writes)})
    )


def _spawn_two_ranks(root: Path, clusters: list[int]) -> list[dict[str, Any]]:
    import json

    import torch.multiprocessing as mp

    cfg = parse_config(tiny_config(f"file://{root}", data={"clusters": 3}))
    prepare_dataset(cfg.data, LocalStore(root))
    out = root / "ranks"
    out.mkdir()
    mp.spawn(_rank_trains, args=(str(root), clusters, str(out)), nprocs=2, join=True)
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in range(2)]


def test_a_process_group_spanning_two_experts_is_refused(tmp_path: Path) -> None:
    ranks = _spawn_two_ranks(tmp_path, clusters=[0, 1])
    for r in ranks:
        assert "spans 2 different models" in r["outcome"], r["outcome"]
        assert not r["writes"], r["writes"]  # refused before any step or checkpoint


def test_the_ranks_of_one_expert_touch_only_that_expert(tmp_path: Path) -> None:
    # Data parallel inside one expert: the collective joins ranks of expert 1 and nothing else,
    # each rank reads only expert 1's shards, and only rank 0 writes, under expert 1's prefix.
    ranks = _spawn_two_ranks(tmp_path, clusters=[1, 1])
    data = "datasets/digits-mini"
    allowed = {f"{data}/manifest.json", f"{data}/null_text.safetensors"}
    for r in ranks:
        assert r["outcome"] == "trained"
        for key in set(r["reads"]) - allowed:
            assert key.startswith((f"{data}/clusters/1/", "models/tiny/experts/1/")), key
    assert ranks[0]["writes"] and all(k.startswith("models/tiny/experts/1/") for k in ranks[0]["writes"])
    assert not ranks[1]["writes"], ranks[1]["writes"]
