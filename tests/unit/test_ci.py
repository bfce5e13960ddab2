"""One lint definition for developers and CI, and no pytest marker that nothing uses."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_make_and_ci_lint_through_the_same_script() -> None:
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^lint:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe is not None, "Makefile has no lint target"
    assert recipe.group(1).strip() == "scripts/lint"
    ci = (REPO / ".ci" / "run").read_text()
    assert "scripts/lint" in ci
    for tool in ("ruff", "mypy", "paris.operator.crds"):
        assert tool not in ci, f".ci/run runs {tool} itself instead of through scripts/lint"
    lint = (REPO / "scripts" / "lint").read_text()
    for step in ("ruff check .", "mypy", "python -m paris.operator.crds --check", "lint charts/paris --strict"):
        assert step in lint, step


def test_every_declared_marker_is_used() -> None:
    markers = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    names = [m.split(":")[0].strip() for m in markers]
    conftest = (REPO / "tests" / "conftest.py").read_text()
    sources = "\n".join(p.read_text() for p in (REPO / "tests").rglob("*.py"))
    for name in names:
        by_folder = f'"{name}"' in conftest.split("_TIERS", 1)[1].splitlines()[0]
        assert by_folder or f"mark.{name}" in sources, f"marker {name!r} is declared but no test uses it"
