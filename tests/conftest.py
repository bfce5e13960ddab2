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


# e2e files that mostly wait (Job backoff after evictions and kills, whole ensemble lifecycles):
# one unit of work of their own, so that another worker can run the rest of the tier meanwhile.
_WAITING_E2E = ("tests/e2e/test_chaos.py", "tests/e2e/test_ensemble_life.py")


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With `-n 2 --dist loadscope` (scripts/test): the e2e tier is two units of work (the
    waiting chaos and lifecycle files, and the rest), each run on one worker one test after
    another on that worker's control plane; the unit tier fills the workers file by file. e2e
    tests spend most of their time waiting on Job backoff and rollouts, the unit tier is
    CPU-bound. Written here because xdist's loadgroup marks are lost under pytest 9 (the nodeid
    suffix it relies on is never applied)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ClusterScope(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith(_WAITING_E2E):
                return "tests/e2e (waiting)"
            if nodeid.startswith("tests/e2e/"):
                return "tests/e2e"
            return str(super()._split_scope(nodeid))

    return ClusterScope(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in _TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))
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
