"""The benchmarks of bench/ run end to end in their quick variants and report every variant
side by side: rounds, min/median/max, ratios against their reference. No timing is
asserted: the figures live in bench/README.md, measured on purpose, not in CI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

from paris.devices import cpu_autocast_dtype, parse_cpuinfo

ROOT = Path(__file__).resolve().parents[2]


def _bench(module: str, out: Path, *args: str) -> tuple[dict[str, Any], str]:
    r = subprocess.run(
        [sys.executable, "-m", module, "--quick", "--json", str(out), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text()), r.stdout


def _check_stats(s: dict[str, Any], rounds: int) -> None:
    assert len(s["rounds"]) == rounds
    assert s["min"] <= s["median"] <= s["max"]
    assert all(v > 0 and math.isfinite(v) for v in s["rounds"])


def test_the_training_step_bench_compares_every_rung_with_the_reference(tmp_path: Path) -> None:
    data, table = _bench("bench.train_step", tmp_path / "t.json", "--ladder", "--precision", "fp32", "bf16")
    assert data["machine"]["bf16_unit"] in ("amx", "avx512_bf16", "none")
    rungs = [k for k in data if k.startswith("tiny/")]
    assert len(rungs) == 2 * 7  # reference + paris before + five changes (CPU), in two precisions
    for key in rungs:
        _check_stats(data[key]["seconds"], rounds=2)
        _check_stats(data[key]["vs_reference"], rounds=2)
        assert data[key]["flops"] > 0
    for precision in ("fp32", "bf16"):
        ref = data[f"tiny/{precision}/reference: diffusers DiT"]["vs_reference"]
        assert ref["rounds"] == [1.0, 1.0]  # a ratio of the reference to itself, round by round
        assert f"caption 8x32, {precision}" in table
    assert "+ torch.compile per block |" in table
    assert "+ tanh GELU as x·σ(2u) in the compiled blocks (= paris default)" in table


def test_the_sampling_bench_reports_each_mode_against_one_expert(tmp_path: Path) -> None:
    data, table = _bench("bench.sampling", tmp_path / "s.json")
    for mode in ("top1", "top2", "full"):
        _check_stats(data[mode]["seconds"], rounds=2)
        _check_stats(data[mode]["vs_one_expert"], rounds=2)
        assert 0 < data[mode]["router_share"] < 1
        parts = data[mode]["parts_s"]
        assert parts["experts"] > 0 and parts["router"] > 0
        assert parts["experts"] + parts["router"] <= parts["total"]
        assert f"| {mode} |" in table
    assert data["one expert (K=1, no router)"]["router_share"] is None
    assert data["one expert (K=1, no router)"]["parts_s"]["router"] == 0  # K=1: the router never runs


def test_the_paper_shaped_sampling_bench_runs_a_text_blind_router_in_bf16(tmp_path: Path) -> None:
    data, table = _bench("bench.sampling", tmp_path / "p.json", "--paper", "--precision", "bf16")
    assert "text-blind router" in table and "77x768 captions" in table and "bf16" in table
    calls = data["expert_calls"]
    assert sum(calls["top1"]) == sum(calls["full"]) // 4  # one expert per sample-step, against K
    assert sum(calls["top2"]) == 2 * sum(calls["top1"])
    for mode in ("top1", "top2", "full"):
        _check_stats(data[mode]["vs_one_expert"], rounds=2)


def test_the_precision_default_follows_the_cpu_bf16_unit() -> None:
    def info(flags: str) -> str:
        return f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 {flags}\n\nprocessor\t: 1\n"

    amx, avx, none = (parse_cpuinfo(info(f)) for f in ("avx512f avx512_bf16 amx_bf16 amx_tile", "avx512f avx512_bf16",
                                                       "avx2 fma"))
    assert (amx.bf16_kind, avx.bf16_kind, none.bf16_kind) == ("amx", "avx512_bf16", "none")
    assert amx.model == "Some CPU"
    import torch

    assert cpu_autocast_dtype(amx) is torch.bfloat16
    assert cpu_autocast_dtype(avx) is torch.bfloat16
    assert cpu_autocast_dtype(none) is None
