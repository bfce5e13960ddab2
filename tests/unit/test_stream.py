"""The training stream: a step's batch is a function of (seed, step) alone, every part is read
once per epoch, and a split that fits in one window is read once and sampled uniformly."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from paris.data.shards import FIELDS, PartWriter, ShardSet, read_shard
from paris.data.stream import ShardStream
from paris.storage import LocalStore, Store
from paris.trainer.loop import step_generator


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalStore, list[dict[str, Any]]]:
    store = LocalStore(tmp_path_factory.mktemp("stream"))
    writer = PartWriter(store, "ds", index=0, shard_size=10)
    n = 95  # ten parts, the last one short
    rows = {
        "latents": torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1),
        "text_states": torch.zeros(n, 2, 3),
        "text_mask": torch.ones(n, 2, dtype=torch.bool),
        "labels": torch.arange(n),
        "clusters": torch.zeros(n, dtype=torch.long),
    }
    writer.add(0, rows, [f"c{i}" for i in range(n)], [f"k{i}" for i in range(n)])
    return store, writer.close()


def _rows(stream: ShardStream, step: int) -> list[int]:
    stream.at_step(step)
    data, idx = stream.batch(step_generator(7, step), 8)
    return data.labels[idx].tolist()


def test_a_steps_batch_depends_only_on_seed_and_step(parts: tuple[LocalStore, list[dict[str, Any]]]) -> None:
    store, infos = parts
    straight = ShardStream(store, "ds", infos, samples_per_step=8, window=3, seed=1)
    replay = [_rows(straight, s) for s in range(40)]
    resumed = ShardStream(store, "ds", infos, samples_per_step=8, window=3, seed=1)
    assert [_rows(resumed, s) for s in range(23, 40)] == replay[23:]  # as a run resumed at step 23
    assert len({straight.window_at(s) for s in range(40)}) > 3  # the window did move
    other = ShardStream(store, "ds", infos, samples_per_step=8, window=3, seed=2)
    assert [_rows(other, s) for s in range(40)] != replay
    for s in (straight, resumed, other):
        s.close()


class _Counting:
    def __init__(self) -> None:
        self.reads: list[str] = []

    def __call__(self, store: Store, root: str, info: dict[str, Any]) -> ShardSet:
        self.reads.append(str(info["key"]))
        return read_shard(store, root, info)


def test_each_epoch_reads_every_part_once_a_window_at_a_time(parts: tuple[LocalStore, list[dict[str, Any]]]) -> None:
    store, infos = parts
    reader = _Counting()
    stream = ShardStream(store, "ds", infos, samples_per_step=8, window=3, seed=0, reader=reader)
    step = 0
    while stream.window_at(step)[0] < 2:  # two whole epochs
        stream.at_step(step)
        assert len(stream.data) <= 30  # never more than one window of 3 parts of 10 in use
        step += 1
    stream.close()
    first_two_epochs = reader.reads[: 2 * len(infos)]
    assert sorted(first_two_epochs) == sorted([str(i["key"]) for i in infos] * 2)


def test_a_split_that_fits_in_one_window_is_read_once(parts: tuple[LocalStore, list[dict[str, Any]]]) -> None:
    store, infos = parts
    reader = _Counting()
    stream = ShardStream(store, "ds", infos, samples_per_step=8, window=len(infos), seed=0, reader=reader)
    seen: set[int] = set()
    for s in range(200):
        seen.update(_rows(stream, s))
    stream.close()
    assert len(reader.reads) == len(infos) and seen == set(range(95))
    assert set(FIELDS) <= set(vars(stream.data))


def test_every_window_holds_every_group_and_a_small_group_lends_its_parts(
    parts: tuple[LocalStore, list[dict[str, Any]]],
) -> None:
    store, infos = parts
    groups = [0] * 5 + [1] * 4 + [2]  # three clusters' parts, as the router streams them; one has a single part
    stream = ShardStream(store, "ds", infos, samples_per_step=8, window=3, seed=0, groups=groups)
    for e in range(5):
        windows = [ids for _, ids in stream._epoch(e)]
        assert len(windows) == 4  # ceil(10 parts / 3)
        assert set(range(10)) <= {i for ids in windows for i in ids}  # every part at least once per epoch
        for ids in windows:
            assert sorted({groups[i] for i in ids}) == [0, 1, 2], windows  # no cluster ever absent
            assert len(ids) <= 3 + 3  # the window, plus at most one part per group
        assert sum(ids.count(9) for ids in windows) == 4  # the single part of group 2 lent to each window
    stream.close()


def test_a_steps_rows_follow_each_groups_share_of_the_split_not_of_the_window(
    parts: tuple[LocalStore, list[dict[str, Any]]],
) -> None:
    store, infos = parts
    groups = [0] * 5 + [1] * 4 + [2]  # 50, 40 and 5 samples: group 2 is 5/95 of the split
    stream = ShardStream(store, "ds", infos, samples_per_step=8, window=3, seed=0, groups=groups)
    group_of_row = torch.tensor([g for g, info in zip(groups, infos, strict=True) for _ in range(int(info["samples"]))])
    for window in range(4):  # group 2 is 5 of about 25 rows in each window: a uniform draw would give it 1/5
        step = next(s for s in range(200) if stream.window_at(s) == (0, window))
        stream.at_step(step)
        data, idx = stream.batch(torch.Generator().manual_seed(window), 20_000)
        share = torch.bincount(group_of_row[data.labels[idx]], minlength=3) / len(idx)
        torch.testing.assert_close(share, torch.tensor([50, 40, 5]) / 95, atol=0.015, rtol=0)
    assert _rows(stream, 3) == _rows(stream, 3)  # still a function of (seed, step)
    stream.close()
