"""Shared test setup: tier markers follow the folder a test lives in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Never reach a model hub from a test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins: list[str] = []
if (Path(__file__).parent / "servers" / "__init__.py").exists():
    pytest_plugins.append("tests.servers.fixtures")

_TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in _TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))
