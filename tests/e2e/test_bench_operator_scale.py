"""bench/operator_scale.py runs against the real control plane in its quick variant (10
ParisExperts) and reports when every Job and every status appeared. Structure only: the
200-expert figure is measured on purpose (bench/README.md), never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_operator_scale_bench_sees_every_job_and_status(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "bench.operator_scale", "--quick", "--json", str(tmp_path / "s.json")],
        capture_output=True, text=True, cwd=ROOT, timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = json.loads((tmp_path / "s.json").read_text())["runs"]
    assert run["experts"] == 10
    assert run["all_jobs_s"] is not None and run["all_status_s"] is not None, run["timeline"]
    times = [t for t, _, _ in run["timeline"]]
    assert times == sorted(times)
    assert run["timeline"][-1][1:] == [10, 10]  # the probe's Job and status are not counted
