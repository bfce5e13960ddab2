"""The operator image has no torch: importing the operator must not pull it in."""

from __future__ import annotations

import subprocess
import sys


def test_operator_never_imports_torch() -> None:
    code = (
        "import sys, paris.operator, paris.operator.crds\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "assert 'kopf' in sys.modules\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
