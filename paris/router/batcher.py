"""Requests -> batched pipeline calls: a bounded queue on the event loop, one worker thread.

The event loop only queues and hands out work, so health probes and metrics are answered
while a batch runs in the worker thread. A batch is the oldest waiting request plus every
later one with the same key (same steps, guidance and routing), up to `max_batch` images; the
oldest request waits at most `max_wait` seconds for others to join. A request whose key is
None always runs alone. When
`max_queue` requests are waiting, `submit` raises QueueFull and the server answers 429.

Hand-written because no library in the stack batches across HTTP requests by compatibility
key with a bounded queue; the parts are asyncio's Event/Future and a ThreadPoolExecutor.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

P = TypeVar("P")
R = TypeVar("R")


class QueueFull(Exception):
    """The queue holds max_queue requests already."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"the queue is full; retry in {retry_after:.0f}s")
        self.retry_after = retry_after


class TimedOut(Exception):
    """The request did not finish within its timeout (queueing included)."""


class ClientGone(Exception):
    """The client disconnected before its result was ready."""


@dataclass(eq=False)
class Job(Generic[P, R]):
    key: Hashable | None
    rows: int
    payload: P
    future: asyncio.Future[R]
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: bool = False


BatchFn = Callable[[Sequence[P]], Sequence[R]]


class Batcher(Generic[P, R]):
    def __init__(
        self,
        run: BatchFn[P, R],
        *,
        max_batch: int,
        max_wait: float,
        max_queue: int,
        on_change: Callable[[int, int], None] | None = None,
        on_batch: Callable[[Sequence[P], Sequence[R] | None, float], None] | None = None,
    ) -> None:
        """`run(payloads) -> results` runs in the worker thread, one call at a time.
        `on_change(queued, running)` and `on_batch(payloads, results or None, seconds)` feed metrics."""
        self.run = run
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait, max_queue
        self.on_change = on_change or (lambda q, r: None)
        self.on_batch = on_batch or (lambda p, r, s: None)
        self.pending: deque[Job[P, R]] = deque()
        self.running: list[Job[P, R]] = []
        self.batch_seconds = 1.0  # moving average, for Retry-After
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="paris-generate")
        self._task: asyncio.Task[None] | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="paris-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in self.pending:
            if not job.future.done():
                job.future.cancel()
        self.pending.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ---- the request side ---------------------------------------------------------------

    def submit(self, key: Hashable | None, rows: int, payload: P) -> Job[P, R]:
        if len(self.pending) >= self.max_queue:
            raise QueueFull(self.retry_after())
        job: Job[P, R] = Job(key, rows, payload, asyncio.get_running_loop().create_future())
        self.pending.append(job)
        self._changed()
        self._wake.set()
        return job

    async def result(self, job: Job[P, R], timeout: float, gone: Awaitable[Any] | None = None) -> R:
        """Wait for the job; on timeout or when `gone` completes first, drop it from the queue
        (a batch already running finishes, and its share of the result is discarded)."""
        watch = asyncio.ensure_future(gone) if gone is not None else None
        try:
            waiters: set[asyncio.Future[Any]] = {job.future, *([watch] if watch else [])}
            done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if job.future in done:
                return job.future.result()
            self.cancel(job)
            raise ClientGone() if watch is not None and watch in done else TimedOut()
        finally:
            if watch is not None:
                watch.cancel()

    def cancel(self, job: Job[P, R]) -> None:
        job.cancelled = True
        if job in self.pending:
            self.pending.remove(job)
            self._changed()
        if not job.future.done():
            job.future.cancel()

    def retry_after(self) -> float:
        """Seconds until the queue has likely drained by one batch's worth."""
        batches = max(1, len(self.pending) // self.max_batch)
        return max(1.0, round(batches * self.batch_seconds))

    # ---- the worker side ----------------------------------------------------------------

    def _changed(self) -> None:
        self.on_change(len(self.pending), len(self.running))

    def _compatible_rows(self, first: Job[P, R]) -> int:
        return sum(j.rows for j in self.pending if j.key == first.key)

    def _take(self) -> list[Job[P, R]]:
        first = self.pending.popleft()
        batch, rows = [first], first.rows
        if first.key is not None:
            for job in list(self.pending):
                if job.key == first.key and rows + job.rows <= self.max_batch:
                    self.pending.remove(job)
                    batch.append(job)
                    rows += job.rows
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            first = self.pending[0]
            delay = first.enqueued + self.max_wait - time.monotonic()
            if first.key is not None and delay > 0 and self._compatible_rows(first) < self.max_batch:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                continue  # look again: more may have joined, or the first may have left
            self.running = self._take()
            self._changed()
            payloads = [j.payload for j in self.running]
            t0 = time.monotonic()
            try:
                results = await loop.run_in_executor(self._executor, self.run, payloads)
            except Exception as err:  # the pipeline failed: every request of the batch gets the error
                self.on_batch(payloads, None, time.monotonic() - t0)
                for job in self.running:
                    if not job.future.done():
                        job.future.set_exception(err)
            else:
                seconds = time.monotonic() - t0
                self.batch_seconds = 0.8 * self.batch_seconds + 0.2 * seconds
                self.on_batch(payloads, results, seconds)
                for job, res in zip(self.running, results, strict=True):
                    if not job.future.done():
                        job.future.set_result(res)
            finally:
                self.running = []
                self._changed()
