"""SIGTERM asks a trainer to stop: the loop finishes the step in flight, writes a checkpoint and
exits with 143 (128 + SIGTERM), so the pod that follows a preemption, an eviction or a node
drain resumes where this one stopped instead of up to one checkpoint interval earlier.

Kubernetes sends SIGTERM, waits the pod's terminationGracePeriodSeconds, then SIGKILLs: the
operator gives trainer pods a grace period long enough for a checkpoint (BatchJobOptions). A
SIGKILL, or a second SIGTERM that comes while the checkpoint is written, still finds only
complete checkpoints in the store (paris.trainer.checkpoint).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

from paris.errors import Preempted

__all__ = ["Preempted", "StopRequest"]


class StopRequest:
    """Records a SIGTERM instead of dying of it, while the context is open. Only the main
    thread can install a signal handler: elsewhere (a trainer run in a thread) SIGTERM keeps
    its default meaning."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False
