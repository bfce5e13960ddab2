"""`paris run` schedules the router beside the experts (it needs the data, not the experts)
and, on a machine with several GPUs, gives each running process a GPU of its own."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from paris.config import parse_config
from paris.devices import cpu_threads
from paris.run import GpuPool, job_threads, jobs
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


def test_each_process_gets_its_share_of_the_cores_unless_threads_are_set(tmp_path: Path) -> None:
    cores = os.cpu_count() or 1
    cfg = parse_config(tiny_config(f"file://{tmp_path}", parallel=2, train={"threads": None}))
    assert job_threads(cfg) == max(1, cores // 2)
    cfg = parse_config(tiny_config(f"file://{tmp_path}", parallel=2, train={"threads": 3}))
    assert job_threads(cfg) == 3


def test_the_thread_cap_holds_for_torch_and_blas_and_is_given_back() -> None:
    import numpy  # noqa: F401 (loads the BLAS pool threadpoolctl reports)
    import torch
    from threadpoolctl import threadpool_info

    torch.set_num_threads(2)
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())
    assert torch.get_num_threads() == 2
