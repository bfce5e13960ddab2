"""Training batches read from the store through a bounded window of part files.

Experts and the router never load their whole split. Epoch e visits every part once, in an
order drawn from (seed, e); consecutive `window` parts form a window, which stays in memory
for about one pass over its samples (ceil(samples / samples per step) steps) while the next
window downloads in a background thread. A step's batch is drawn, with replacement, from the
current window by the step's own generator. So the window a step uses is a function of
(seed, step), the rows a function of the step's generator: a resumed run replays an
uninterrupted one exactly. When every part fits in one window the stream is that window for
good, and sampling is uniform over the whole split, as a fully loaded split would give.

Memory: at most two windows (the current one and the one being prefetched).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import torch

from paris.data.shards import ShardSet, read_shard
from paris.storage import Store


class Batches(Protocol):
    """Where a loss function draws its rows: a ShardStream, or InMemory for a small split."""

    def batch(self, g: torch.Generator, size: int) -> tuple[ShardSet, torch.Tensor]: ...


class InMemory:
    """A split already in memory (tests, small evaluations): uniform rows, with replacement."""

    def __init__(self, data: ShardSet) -> None:
        self.data = data

    def batch(self, g: torch.Generator, size: int) -> tuple[ShardSet, torch.Tensor]:
        return self.data, torch.randint(len(self.data), (size,), generator=g)


class ShardStream:
    def __init__(
        self,
        store: Store,
        root: str,
        parts: list[dict[str, Any]],
        samples_per_step: int,
        window: int,
        seed: int,
        reader: Callable[[Store, str, dict[str, Any]], ShardSet] = read_shard,
        groups: list[int] | None = None,
    ) -> None:
        if not parts:
            raise ValueError("a stream needs at least one part")
        if groups is not None and len(groups) != len(parts):
            raise ValueError("one group per part")
        self.groups = groups
        self.store, self.root, self.parts, self.reader = store, root, parts, reader
        self.window = max(1, min(window, len(parts)))
        self.samples_per_step, self.seed = samples_per_step, seed
        self.samples = sum(int(p["samples"]) for p in parts)
        self._epochs: list[list[tuple[int, list[int]]]] = []  # per epoch: (steps, part ids) per window
        self._starts: list[int] = [0]  # first step of each epoch, plus the end of the last one
        self._current: tuple[tuple[int, int], ShardSet] | None = None
        self._next: tuple[tuple[int, int], Future[ShardSet]] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="paris-prefetch")
        self.loads = 0  # parts read so far (tests check that windows are not reread)
        self.step = 0

    # ---- the schedule: a pure function of (seed, step) ---------------------------------

    def _epoch(self, e: int) -> list[tuple[int, list[int]]]:
        while len(self._epochs) <= e:
            k = len(self._epochs)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + 7_919 * k + 17)
            order = self._order(g) if len(self.parts) > self.window else list(range(len(self.parts)))
            windows = []
            for w in range(0, len(order), self.window):
                ids = order[w : w + self.window]
                n = sum(int(self.parts[i]["samples"]) for i in ids)
                windows.append((max(1, math.ceil(n / self.samples_per_step)), ids))
            self._epochs.append(windows)
            self._starts.append(self._starts[-1] + sum(s for s, _ in windows))
        return self._epochs[e]

    def _order(self, g: torch.Generator) -> list[int]:
        """An epoch's order of parts. With groups (the router: one per cluster), each group's
        parts are spread evenly through the epoch, so every window mixes the clusters in their
        proportions instead of showing a few clusters at a time."""
        if self.groups is None:
            return torch.randperm(len(self.parts), generator=g).tolist()
        members: dict[int, list[int]] = {}
        for i, group in enumerate(self.groups):
            members.setdefault(group, []).append(i)
        keyed: list[tuple[float, int]] = []
        for ids in members.values():
            rank = torch.randperm(len(ids), generator=g).tolist()
            jitter = torch.rand(len(ids), generator=g).tolist()
            keyed += [((r + u) / len(ids), i) for i, r, u in zip(ids, rank, jitter, strict=True)]
        return [i for _, i in sorted(keyed)]

    def window_at(self, step: int) -> tuple[int, int]:
        """(epoch, window) that step `step` draws from."""
        if len(self.parts) <= self.window:
            return (0, 0)
        while self._starts[-1] <= step:
            self._epoch(len(self._epochs))
        e = bisect.bisect_right(self._starts, step) - 1
        offset = step - self._starts[e]
        for w, (steps, _) in enumerate(self._epoch(e)):
            if offset < steps:
                return (e, w)
            offset -= steps
        raise AssertionError("unreachable")

    def _after(self, at: tuple[int, int]) -> tuple[int, int] | None:
        if len(self.parts) <= self.window:
            return None
        e, w = at
        return (e, w + 1) if w + 1 < len(self._epoch(e)) else (e + 1, 0)

    # ---- loading ---------------------------------------------------------------------------

    def _ids(self, at: tuple[int, int]) -> list[int]:
        """The parts of a window; only the calling (training) thread builds the schedule."""
        return self._epoch(at[0])[at[1]][1]

    def _load(self, ids: list[int]) -> ShardSet:
        self.loads += len(ids)
        return ShardSet.concat([self.reader(self.store, self.root, self.parts[i]) for i in ids])

    def at_step(self, step: int) -> None:
        """Make the window of `step` current (waiting for it if the prefetch is not done) and
        start fetching the one after it. The training loop calls this before each step."""
        self.step = step
        at = self.window_at(step)
        if self._current is not None and self._current[0] == at:
            return
        self._current = None  # release the old window before the new one arrives
        ready, self._next = self._next, None
        data = ready[1].result() if ready is not None and ready[0] == at else self._load(self._ids(at))
        self._current = (at, data)
        after = self._after(at)
        if after is not None:
            self._next = (after, self._pool.submit(self._load, self._ids(after)))

    @property
    def data(self) -> ShardSet:
        if self._current is None:
            self.at_step(self.step)
        assert self._current is not None
        return self._current[1]

    def batch(self, g: torch.Generator, size: int) -> tuple[ShardSet, torch.Tensor]:
        """`size` rows drawn with replacement from the current window by generator `g`."""
        data = self.data
        return data, torch.randint(len(data), (size,), generator=g)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
