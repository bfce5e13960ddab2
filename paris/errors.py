"""User-facing errors: the CLI prints them as one line and exits non-zero, never a traceback."""

from __future__ import annotations


class ParisError(Exception):
    """A problem with the user's input or environment that the user can fix."""


class ConfigError(ParisError):
    """The configuration file is missing, unreadable or invalid."""


class DataError(ParisError):
    """The dataset or its shards are missing, empty or corrupted."""


class StorageError(ParisError):
    """The object store is unreachable or an object is missing."""


class TrainingError(ParisError):
    """Training cannot go on with these settings (e.g. the loss diverged)."""
