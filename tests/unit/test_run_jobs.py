"""`paris run` schedules the router beside the experts (it needs the data, not the experts)
and, on a machine with several GPUs, gives each running process a GPU of its own."""

from __future__ import annotations

import sys
from pathlib import Path

from paris.config import parse_config
from paris.run import GpuPool, jobs
from tests.helpers import tiny_config


def test_the_router_starts_first_beside_the_experts(tmp_path: Path) -> None:
    cfg = parse_config(tiny_config(f"file://{tmp_path}", data={"clusters": 3}))
    todo = jobs(cfg)
    assert [j.name for j in todo] == ["router", "expert 0", "expert 1", "expert 2"]
    assert todo[0].argv == [sys.executable, "-m", "paris", "train", "router", "--no-publish"]
    assert todo[2].argv[-3:] == ["expert", "--cluster", "1"]
    assert todo[0].prefix == "models/tiny/router" and todo[1].prefix == "models/tiny/experts/0"


def test_each_running_process_gets_a_gpu_of_its_own_and_gives_it_back() -> None:
    pool = GpuPool(["0", "1"])
    assert pool.env_for("expert 0") == {"CUDA_VISIBLE_DEVICES": "0"}
    assert pool.env_for("expert 1") == {"CUDA_VISIBLE_DEVICES": "1"}
    pool.release("expert 0")
    assert pool.env_for("router") == {"CUDA_VISIBLE_DEVICES": "0"}
    assert GpuPool(["0"]).env_for("expert 0") == {}  # one GPU: nothing to choose
    assert GpuPool([]).env_for("expert 0") == {}
