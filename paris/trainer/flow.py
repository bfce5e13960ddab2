"""The one place the flow-matching convention is written down (diffusers / SD3 convention).

    x_t = (1 - t) * x_0 + t * eps,   t in [0, 1],   t = 1 is pure noise
    v   = eps - x_0                  (velocity target)
    L   = || v_theta(x_t, t, c) - v ||^2

The models take the timestep on diffusers' 0..1000 scale (the scheduler's `timesteps` are
`sigmas * 1000`), so `TIMESTEP_SCALE` converts once, here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_density_for_timestep_sampling

TIMESTEP_SCALE = 1000.0


def interpolate(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.view(-1, *([1] * (x0.ndim - 1)))
    return (1 - t) * x0 + t * eps


def velocity_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    return eps - x0


def flow_loss(v_pred: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(v_pred.float(), velocity_target(x0, eps).float())


def sample_t(
    n: int,
    scheme: str,
    generator: torch.Generator,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
) -> torch.Tensor:
    """Training timesteps in [0, 1]: logit-normal by default (SD3), via diffusers."""
    if scheme == "uniform":
        return torch.rand(n, generator=generator)
    return compute_density_for_timestep_sampling(
        weighting_scheme=scheme,
        batch_size=n,
        logit_mean=logit_mean,
        logit_std=logit_std,
        mode_scale=mode_scale,
        generator=generator,
    )


def model_timestep(t: torch.Tensor) -> torch.Tensor:
    return t * TIMESTEP_SCALE
