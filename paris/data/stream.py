"""Training batches read from the store through a bounded window of part files.

Experts and the router never load their whole split. Epoch e visits every part once, in an
order drawn from (seed, e); consecutive `window` parts form a window, which stays in memory
for about one pass over its samples (ceil(samples / samples per step) steps) while the next
window downloads in a background thread. A step's batch is drawn, with replacement, from the
current window by the step's own generator. So the window a step uses is a function of
(seed, step), the rows a function of the step's generator: a resumed run replays an
uninterrupted one exactly. When every part fits in one window the stream is that window for
good, and sampling is uniform over the whole split, as a fully loaded split would give.

With groups (the router: one per cluster) a window that lacks a cluster would teach the router
that cluster's absence: a few steps without it and the classifier stops predicting it. So every
window holds at least one part of every group (a group with fewer parts than the epoch has
windows lends its parts to several windows), and each step's rows are drawn so that every group
has its share of the whole split, not of the window.

Memory: at most two windows (the current one and the one being prefetched); with G groups a
window holds up to max(window, G) + G parts.
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

Window = tuple[ShardSet, torch.Tensor | None]  # a window's rows, and their weights (None: uniform)


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
        self.whole = len(parts) <= self.window  # the split is one window, for good
        self.samples_per_step, self.seed = samples_per_step, seed
        self.samples = sum(int(p["samples"]) for p in parts)
        if groups is not None:  # each group's share of the split: what a step's rows follow
            sizes: dict[int, int] = {}
            for p, group in zip(parts, groups, strict=True):
                sizes[group] = sizes.get(group, 0) + int(p["samples"])
            self._share = {group: n / self.samples for group, n in sizes.items()}
        self._epochs: list[list[tuple[int, list[int]]]] = []  # per epoch: (steps, part ids) per window
        self._starts: list[int] = [0]  # first step of each epoch, plus the end of the last one
        self._current: tuple[tuple[int, int], Window] | None = None
        self._next: tuple[tuple[int, int], Future[Window]] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="paris-prefetch")
        self.loads = 0  # parts read so far (tests check that windows are not reread)
        self.step = 0

    # ---- the schedule: a pure function of (seed, step) ---------------------------------

    def _epoch(self, e: int) -> list[tuple[int, list[int]]]:
        while len(self._epochs) <= e:
            k = len(self._epochs)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + 7_919 * k + 17)
            windows = []
            for ids in self._windows(g):
                n = sum(int(self.parts[i]["samples"]) for i in ids)
                windows.append((max(1, math.ceil(n / self.samples_per_step)), ids))
            self._epochs.append(windows)
            self._starts.append(self._starts[-1] + sum(s for s, _ in windows))
        return self._epochs[e]

    def _windows(self, g: torch.Generator) -> list[list[int]]:
        """An epoch's windows (part ids each): a random order cut into windows; with groups,
        every group's parts spread over all windows, each window getting at least one."""
        if self.whole:
            return [list(range(len(self.parts)))]
        if self.groups is None:
            order = torch.randperm(len(self.parts), generator=g).tolist()
            return [order[w : w + self.window] for w in range(0, len(order), self.window)]
        members: dict[int, list[int]] = {}
        for i, group in enumerate(self.groups):
            members.setdefault(group, []).append(i)
        count = math.ceil(len(self.parts) / max(self.window, len(members)))
        windows: list[list[int]] = [[] for _ in range(count)]
        for ids in members.values():
            ids = [ids[j] for j in torch.randperm(len(ids), generator=g).tolist()]
            for w, window in enumerate(windows):  # group parts [lo, hi) go to window w; at least one
                lo = w * len(ids) // count
                window += ids[lo : max(lo + 1, (w + 1) * len(ids) // count)]
        return windows

    def window_at(self, step: int) -> tuple[int, int]:
        """(epoch, window) that step `step` draws from."""
        if self.whole:
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
        if self.whole:
            return None
        e, w = at
        return (e, w + 1) if w + 1 < len(self._epoch(e)) else (e + 1, 0)

    # ---- loading ---------------------------------------------------------------------------

    def _ids(self, at: tuple[int, int]) -> list[int]:
        """The parts of a window; only the calling (training) thread builds the schedule."""
        return self._epoch(at[0])[at[1]][1]

    def _load(self, ids: list[int]) -> Window:
        """A window's rows, and with groups each row's weight: its group's share of the split
        spread over the group's rows in this window (None: uniform)."""
        self.loads += len(ids)
        parts = [self.reader(self.store, self.root, self.parts[i]) for i in ids]
        data = ShardSet.concat(parts)
        if self.groups is None or self.whole:
            return data, None
        group = torch.cat([torch.full((len(p),), self.groups[i]) for i, p in zip(ids, parts, strict=True)])
        weights = torch.empty(len(group), dtype=torch.float64)
        for k in group.unique().tolist():
            rows = group == k
            weights[rows] = self._share[k] / int(rows.sum())
        return data, weights

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
        return self._window()[0]

    def _window(self) -> Window:
        if self._current is None:
            self.at_step(self.step)
        assert self._current is not None
        return self._current[1]

    def batch(self, g: torch.Generator, size: int) -> tuple[ShardSet, torch.Tensor]:
        """`size` rows drawn with replacement from the current window by generator `g`: uniformly,
        or with groups in proportion to each group's share of the split."""
        data, weights = self._window()
        if weights is None:
            return data, torch.randint(len(data), (size,), generator=g)
        return data, torch.multinomial(weights, size, replacement=True, generator=g)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
