"""The scale benchmark runs end to end on small sizes and reports what the README quotes
(its numbers are measured by running it in full; a test never asserts timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_the_scale_benchmark_reports_memory_and_throughput_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    bench = Path(__file__).parents[2] / "bench" / "prepare_scale.py"
    r = subprocess.run([sys.executable, str(bench), "--quick", "--out", str(out)], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["prepare"]) == {"40", "80"} and set(result["train"]) == {"1", "5"}
    for row in [*result["prepare"].values(), *result["train"].values()]:
        assert row["peak_rss_mib"] > 0 and row["seconds"] > 0 and row["work"] > 0
    assert result["prepare"]["80"]["work"] == 80  # every image of the bigger folder was prepared
    assert result["prepare_rss_ratio"] > 0 and result["train_rss_ratio"] > 0
    assert "peak RSS ratio 2N / N" in r.stdout
