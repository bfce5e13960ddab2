"""The training step's EMA is diffusers' EMAModel computed as one lerp per tensor: same
averages, same decay schedule, same saved state."""

from __future__ import annotations

import torch
from diffusers.training_utils import EMAModel

from paris.trainer.step import LerpEMA


def test_the_lerp_ema_follows_diffusers_ema_step_by_step() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    kwargs = {"decay": 0.9, "use_ema_warmup": True, "power": 0.75}  # a schedule that moves every step
    want = EMAModel(model.parameters(), foreach=True, **kwargs)
    got = LerpEMA(model.parameters(), foreach=True, **kwargs)
    for _ in range(6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        want.step(model.parameters())
        got.step(model.parameters())
        assert got.cur_decay_value == want.cur_decay_value and got.optimization_step == want.optimization_step
        for a, b in zip(got.shadow_params, want.shadow_params, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert got.state_dict().keys() == want.state_dict().keys()
    moved = max((a - p).abs().max().item() for a, p in zip(got.shadow_params, model.parameters(), strict=True))
    assert moved > 0.1, "the average lags the weights: the update did something"
