"""A SIGKILLed expert resumes from its last published checkpoint and ends exactly where an
uninterrupted run ends (same seed, CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from paris.config import parse_config
from paris.data.prepare import prepare_dataset
from paris.storage import LocalStore
from tests.helpers import paris_cli, tiny_config, write_config

STEPS = 60


def _final_weights(store: Path, which: str) -> dict[str, torch.Tensor]:
    latest = json.loads((store / "models/tiny/experts/0/latest.json").read_text())
    assert latest["step"] == STEPS
    return load_file(store / latest["prefix"] / which / "diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    # Small parts and a one-part window: the stream changes windows (and prefetches) many
    # times over the run, across the kill and the resume.
    cfg = parse_config(tiny_config(f"file://{root}/data", data={"shard_size": 30}))
    prepare_dataset(cfg.data, LocalStore(root / "data"))
    return root / "data" / "datasets"


def _store_with_data(dataset: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(dataset, dest / "datasets")
    return dest


def test_resume_after_sigkill_matches_an_uninterrupted_run(dataset: Path, tmp_path: Path) -> None:
    train = {"steps": STEPS, "checkpoint_every": 10, "log_every": 5, "threads": 1, "window": 1}
    stores = {name: _store_with_data(dataset, tmp_path / name) for name in ("straight", "killed")}
    cfgs = {name: write_config(tmp_path / f"{name}.yaml", tiny_config(f"file://{s}", train=train,
                                                                      data={"shard_size": 30}))
            for name, s in stores.items()}

    r = paris_cli("train", "expert", str(cfgs["straight"]), "--cluster", "0")
    assert r.returncode == 0, r.stderr

    # Start the same training and SIGKILL it once a checkpoint is published but before the end.
    latest = stores["killed"] / "models/tiny/experts/0/latest.json"
    proc = subprocess.Popen([sys.executable, "-m", "paris", "train", "expert", str(cfgs["killed"]), "-k", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.time() + 300
    while time.time() < deadline:
        if latest.exists() and json.loads(latest.read_text())["step"] >= 10:
            break
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(latest.read_text())["step"]
    assert 10 <= killed_at < STEPS, f"the run ended before it could be killed (step {killed_at})"

    r = paris_cli("train", "expert", str(cfgs["killed"]), "--cluster", "0")
    assert r.returncode == 0, r.stderr
    assert "resuming from the checkpoint" in r.stderr
    progress = json.loads((stores["killed"] / "models/tiny/experts/0/progress.json").read_text())
    assert progress["resumed_from"] is not None and progress["step"] == STEPS

    for which in ("model", "ema"):
        a, b = _final_weights(stores["straight"], which), _final_weights(stores["killed"], which)
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=f"{which}/{name}")


def test_a_sigtermed_expert_checkpoints_the_step_it_stopped_at_and_loses_nothing(dataset: Path, tmp_path: Path) -> None:
    """A preemption's SIGTERM: the trainer finishes its step, writes a checkpoint there (between
    two checkpoint_every marks), says so in one line and exits 143; the resume ends with the
    weights of an uninterrupted run."""
    train = {"steps": STEPS, "checkpoint_every": 50, "log_every": 1, "threads": 1, "window": 1}
    stores = {name: _store_with_data(dataset, tmp_path / name) for name in ("straight", "stopped")}
    cfgs = {name: write_config(tmp_path / f"{name}.yaml", tiny_config(f"file://{s}", train=train,
                                                                      data={"shard_size": 30}))
            for name, s in stores.items()}
    assert paris_cli("train", "expert", str(cfgs["straight"]), "--cluster", "0").returncode == 0

    progress = stores["stopped"] / "models/tiny/experts/0/progress.json"
    proc = subprocess.Popen([sys.executable, "-m", "paris", "train", "expert", str(cfgs["stopped"]), "-k", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    deadline = time.time() + 300
    while not (progress.exists() and json.loads(progress.read_text())["step"] >= 3):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    stopped_at = json.loads((stores["stopped"] / "models/tiny/experts/0/latest.json").read_text())["step"]
    assert 3 <= stopped_at < 50, "a checkpoint where it stopped, not at a checkpoint_every mark"
    said = f"expert 0: stopped on SIGTERM after writing the checkpoint at step {stopped_at}"
    assert err.strip().splitlines()[-1] == said
    assert "Traceback" not in err

    r = paris_cli("train", "expert", str(cfgs["stopped"]), "--cluster", "0")
    assert r.returncode == 0 and f"resuming from the checkpoint at step {stopped_at}" in r.stderr, r.stderr
    for which in ("model", "ema"):
        a, b = _final_weights(stores["straight"], which), _final_weights(stores["stopped"], which)
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=f"{which}/{name}")
