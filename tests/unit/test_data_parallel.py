"""Data parallel inside one expert: two gloo ranks on the CPU, launched by torchrun as a pod
would launch them, end with the weights of one process at the same global batch, and a
2-rank run killed between checkpoints resumes to the same bits as an uninterrupted one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from paris.config import parse_config
from paris.data.prepare import prepare_dataset
from paris.storage import LocalStore
from tests.helpers import tiny_config, write_config

# fp32 so that the only difference between 1 and 2 ranks is the order of the gradient sums.
TRAIN = {"steps": 4, "batch_size": 8, "checkpoint_every": 2, "log_every": 1, "threads": 1, "mixed_precision": "no"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    cfg = parse_config(tiny_config(f"file://{root}/data"))
    prepare_dataset(cfg.data, LocalStore(root / "data"))
    return root / "data" / "datasets"


def _train(dataset: Path, store: Path, ranks: int, **train: object) -> subprocess.CompletedProcess[str]:
    import shutil

    if not (store / "datasets").exists():
        shutil.copytree(dataset, store / "datasets")
    cfg = write_config(store.with_suffix(".yaml"), tiny_config(f"file://{store}", train=TRAIN | train))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    cmd = [*(launcher if ranks > 1 else [sys.executable]), "-m", "paris", "train", "expert", str(cfg), "-k", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _weights(store: Path, steps: int) -> dict[str, dict[str, torch.Tensor]]:
    latest = json.loads((store / "models/tiny/experts/0/latest.json").read_text())
    assert latest["step"] == steps
    folder = store / latest["prefix"]
    return {w: load_file(folder / w / "diffusion_pytorch_model.safetensors") for w in ("model", "ema")}


def test_two_gloo_ranks_train_the_weights_of_one_rank(dataset: Path, tmp_path: Path) -> None:
    _train(dataset, tmp_path / "one", ranks=1)
    _train(dataset, tmp_path / "two", ranks=2)
    progress = json.loads((tmp_path / "two/models/tiny/experts/0/progress.json").read_text())
    assert progress["ranks"] == 2 and progress["step"] == 4
    one, two = _weights(tmp_path / "one", 4), _weights(tmp_path / "two", 4)
    for which in ("model", "ema"):
        assert one[which].keys() == two[which].keys()
        for name, a in one[which].items():
            torch.testing.assert_close(two[which][name], a, rtol=1e-4, atol=1e-5, msg=f"{which}/{name}")


def test_two_ranks_resume_to_the_bits_of_an_uninterrupted_run(dataset: Path, tmp_path: Path) -> None:
    _train(dataset, tmp_path / "straight", ranks=2)
    _train(dataset, tmp_path / "resumed", ranks=2, steps=2)  # stops after the checkpoint at step 2
    r = _train(dataset, tmp_path / "resumed", ranks=2)
    assert "resuming from the checkpoint at step 2" in r.stderr
    a, b = _weights(tmp_path / "straight", 4), _weights(tmp_path / "resumed", 4)
    for which in ("model", "ema"):
        for name in a[which]:
            assert torch.equal(a[which][name], b[which][name]), f"{which}/{name}"


def _slice_of_rank(rank: int, root: str) -> None:
    import torch.distributed as dist

    from paris.trainer.distributed import local_part

    dist.init_process_group("gloo", init_method=f"file://{root}/pg", rank=rank, world_size=2)
    try:
        (part,) = local_part(torch.arange(8))
        Path(root, f"rank-{rank}.json").write_text(json.dumps(part.tolist()))
    finally:
        dist.destroy_process_group()


def test_each_rank_computes_on_its_own_half_of_the_global_batch(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_slice_of_rank, args=(str(tmp_path),), nprocs=2, join=True)
    halves = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    assert halves == [[0, 1, 2, 3], [4, 5, 6, 7]]
