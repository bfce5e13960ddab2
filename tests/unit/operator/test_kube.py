"""kube.py is the few API calls the handlers make, and nothing more."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

from paris.operator import handlers, kube, status

OPERATOR = Path(handlers.__file__).parent


def test_every_api_call_in_kube_is_used_by_the_operator() -> None:
    public = [
        n for n, f in inspect.getmembers(kube, inspect.isfunction) if f.__module__ == kube.__name__ and n[0] != "_"
    ]
    used = {
        node.attr
        for path in OPERATOR.glob("*.py")
        if path.name != "kube.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "kube"
    }
    internal = {"api", "to_dict"}  # used inside kube.py itself
    assert sorted(set(public) - used - internal) == [], "unused API helpers in paris/operator/kube.py"


def test_a_computed_status_is_the_status_and_its_transition_only() -> None:
    assert [f.name for f in dataclasses.fields(status.Computed)] == ["status", "transition"]
