"""The training loop turns a diverging run into one clear error, not a FloatingPointError."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from paris.config import ExpertModelConfig, TrainConfig
from paris.errors import TrainingError
from paris.storage import LocalStore
from paris.trainer.loop import train
from paris.trainer.model import build_expert, expert_velocity


def test_a_nan_loss_stops_training_with_a_training_error(tmp_path: Path) -> None:
    model = build_expert(ExpertModelConfig(hidden_size=16, depth=1, heads=2), {"size": 4, "channels": 1}, 8)
    cfg = TrainConfig(steps=5, batch_size=1, warmup_steps=0, log_every=1, checkpoint_every=100, lr=0.5)
    calls = []

    def loss_fn(m: torch.nn.Module, g: torch.Generator, device: torch.device) -> torch.Tensor:
        calls.append(1)
        x, t = torch.ones(1, 1, 4, 4), torch.full((1,), 500.0)
        out = expert_velocity(m, x, t, torch.ones(1, 2, 8), torch.ones(1, 2, dtype=torch.bool)).square().mean()
        return out * (float("nan") if len(calls) == 3 else 1.0)

    with pytest.raises(TrainingError, match=r"loss became nan at step 3 \(lr 0.5\); lower train.lr"):
        train(model, loss_fn, cfg, LocalStore(tmp_path), "m", "test")
    assert not (tmp_path / "m/latest.json").exists()  # nothing published from a diverged run
