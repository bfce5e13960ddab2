"""One rich console for the whole program, so progress bars and messages do not interleave."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, soft_wrap=True)  # long paths stay on one line in logs


def interactive() -> bool:
    """Live widgets only on a terminal; logs (CI, pods) get plain periodic lines instead."""
    return sys.stderr.isatty() and os.environ.get("CI") is None


@contextmanager
def status(message: str) -> Iterator[None]:
    if interactive():
        with console.status(message):
            yield
    else:
        console.print(f"… {message}")
        yield


def bar(description: str) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not interactive(),
        transient=False,
    )
