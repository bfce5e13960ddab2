"""Shared test setup: tier markers follow the folder a test lives in."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

# Never reach a model hub from a test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins: list[str] = []
if (Path(__file__).parent / "servers" / "__init__.py").exists():
    pytest_plugins.append("tests.servers.fixtures")

_TIERS = ("unit", "integration", "e2e")
# Tests whose subject is the test servers themselves (tests/servers), not paris.
_SERVER_TESTS = ("test_minio_server.py", "test_control_plane.py")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in _TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))
        if "e2e" in parts:
            # With `-n 2 --dist loadgroup` (scripts/test) the e2e tier runs on one worker, one
            # test after another on one control plane, while the other worker takes the CPU-bound
            # unit tier: e2e tests spend most of their time waiting (Job backoff, rollouts).
            item.add_marker(pytest.mark.xdist_group("cluster"))
        if parts[-1] in _SERVER_TESTS:
            item.add_marker(pytest.mark.servers)
    # Quarantined tests (pytest.mark.quarantine, each with its reason) run only when asked for:
    # deselected, so the summary line counts them, never silently skipped as passing.
    if os.environ.get("PARIS_QUARANTINE") != "1":
        held = [i for i in items if i.get_closest_marker("quarantine")]
        if held:
            config.hook.pytest_deselected(items=held)
            items[:] = [i for i in items if not i.get_closest_marker("quarantine")]


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """paris's own tests and the tests of the test servers, counted apart (README figures)."""
    counts = {"paris": [0, 0], "test servers": [0, 0]}
    for outcome, col in (("passed", 0), ("failed", 1)):
        for rep in terminalreporter.stats.get(outcome, []):
            if getattr(rep, "when", "call") != "call" and outcome == "passed":
                continue
            key = "test servers" if Path(rep.nodeid.split("::")[0]).name in _SERVER_TESTS else "paris"
            counts[key][col] += 1
    terminalreporter.write_line(
        "tests by subject: "
        + "; ".join(f"{k}: {p} passed, {f} failed" for k, (p, f) in counts.items())
    )
