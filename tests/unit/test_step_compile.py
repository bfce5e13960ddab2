"""A machine without a compiler (the trainer image ships none) trains eager, not a traceback."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention import BasicTransformerBlock

from paris.config import ExpertModelConfig, TrainConfig
from paris.trainer.model import build_expert, expert_velocity
from paris.trainer.step import StepOptions, compiler_found, prepare_model


def test_without_a_compiler_the_blocks_stay_eager_and_the_model_still_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    cpu = torch.device("cpu")
    assert not compiler_found(cpu)
    model = build_expert(ExpertModelConfig(hidden_size=16, depth=1, heads=2), {"size": 4, "channels": 1}, 8)
    options = StepOptions.for_config(TrainConfig(), cpu, None)
    assert options.compile, "the default asks for compilation"
    prepare_model(model, cpu, options)
    blocks = [m for m in model.modules() if isinstance(m, BasicTransformerBlock)]
    assert blocks and all(getattr(b, "_compiled_call_impl", None) is None for b in blocks)
    said = capsys.readouterr()
    assert "running eager" in said.out + said.err
    out = expert_velocity(
        model, torch.ones(1, 1, 4, 4), torch.full((1,), 500.0), torch.ones(1, 2, 8), torch.ones(1, 2, dtype=torch.bool)
    )
    assert out.shape == (1, 1, 4, 4) and torch.isfinite(out).all()
