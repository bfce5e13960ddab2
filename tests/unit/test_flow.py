"""The flow-matching convention: x_t = (1-t) x0 + t eps, v = eps - x0, t=1 is noise."""

import torch

from paris.trainer.flow import TIMESTEP_SCALE, flow_loss, interpolate, model_timestep, sample_t, velocity_target


def test_endpoints_and_direction() -> None:
    x0, eps = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    assert torch.allclose(interpolate(x0, eps, torch.zeros(4)), x0)
    assert torch.allclose(interpolate(x0, eps, torch.ones(4)), eps)
    # v is the time derivative of the path: a finite difference recovers it.
    t, h = torch.full((4,), 0.3), 1e-3
    fd = (interpolate(x0, eps, t + h) - interpolate(x0, eps, t)) / h
    assert torch.allclose(fd, velocity_target(x0, eps), atol=1e-2)


def test_loss_is_zero_for_the_true_velocity_and_mse_otherwise() -> None:
    x0, eps = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    assert flow_loss(eps - x0, x0, eps).item() == 0.0
    assert torch.isclose(flow_loss(torch.zeros_like(x0), x0, eps), (eps - x0).pow(2).mean())


def test_euler_step_with_the_true_velocity_lands_on_x0() -> None:
    # One Euler step from t=1 to t=0 along v gives x0: the sampler's sign convention.
    x0, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    x1 = interpolate(x0, eps, torch.ones(2))
    assert torch.allclose(x1 + (0.0 - 1.0) * velocity_target(x0, eps), x0, atol=1e-6)


def test_timestep_sampling_stays_in_unit_interval_and_is_seeded() -> None:
    for scheme in ("logit_normal", "uniform", "mode"):
        a = sample_t(1000, scheme, torch.Generator().manual_seed(0))
        b = sample_t(1000, scheme, torch.Generator().manual_seed(0))
        assert torch.equal(a, b)
        assert a.min() >= 0 and a.max() <= 1
    ln = sample_t(20000, "logit_normal", torch.Generator().manual_seed(1))
    assert abs(ln.mean().item() - 0.5) < 0.02 and ln.std().item() < torch.rand(20000).std().item()
    assert model_timestep(torch.tensor([1.0])).item() == TIMESTEP_SCALE
