"""User-facing errors: the CLI prints them as one line and exits non-zero, never a traceback.

The exit code tells a retrying supervisor (a Kubernetes Job's podFailurePolicy) whether a new
attempt can help: a user's mistake fails the same way every time, an outage may pass."""

from __future__ import annotations

# A mistake of the user (config, data, settings, command line; click's usage errors exit 2
# too): the same pod would fail the same way again, so the operator's Jobs fail at once on it.
USER_ERROR_EXIT = 2
# Something outside the user's control that a later attempt may not meet (the object store
# stayed unreachable past its deadline): the Job retries, within its backoffLimit.
TRANSIENT_EXIT = 75  # EX_TEMPFAIL of sysexits.h
# Stopped on SIGTERM (a preemption, an eviction) after writing a checkpoint: what a process that
# SIGTERM killed reports (128 + 15). A Job counts it unless the pod was disrupted (DisruptionTarget).
PREEMPTED_EXIT = 143


class ParisError(Exception):
    """A problem with the user's input or environment that the user can fix."""

    exit_code = USER_ERROR_EXIT


class ConfigError(ParisError):
    """The configuration file is missing, unreadable or invalid."""


class DataError(ParisError):
    """The dataset or its shards are missing, empty or corrupted."""


class StorageError(ParisError):
    """The object store is unreachable or an object is missing."""


class StoreUnavailable(StorageError):
    """The object store did not answer within its deadline: retrying later may succeed."""

    exit_code = TRANSIENT_EXIT


class TrainingError(ParisError):
    """Training cannot go on with these settings (e.g. the loss diverged)."""


class Preempted(Exception):
    """The trainer stopped on SIGTERM after writing its checkpoint at `step` (not a mistake:
    the CLI says so in one line and exits PREEMPTED_EXIT; paris.trainer.preempt)."""

    exit_code = PREEMPTED_EXIT

    def __init__(self, label: str, step: int) -> None:
        super().__init__(f"{label}: stopped on SIGTERM after writing the checkpoint at step {step}")
        self.step = step
