"""The sigmoid form of the feed-forward's GELU is diffusers' tanh GELU: same values, same
gradients, same parameters and checkpoint keys."""

from __future__ import annotations

import torch
from diffusers.models.activations import GELU

from paris.config import ExpertModelConfig
from paris.trainer.gelu import SigmoidGELU, set_sigmoid_gelu
from paris.trainer.model import build_expert, expert_velocity


def test_x_sigmoid_2u_equals_the_tanh_gelu_in_value_and_gradient() -> None:
    torch.manual_seed(0)
    x = (torch.randn(4096, dtype=torch.float64) * 4).requires_grad_()
    want = torch.nn.functional.gelu(x, approximate="tanh")
    (gw,) = torch.autograd.grad(want.sum(), x)
    layer = GELU(1, 1, approximate="tanh")
    layer.__class__ = SigmoidGELU
    got = layer.gelu(x)
    (gg,) = torch.autograd.grad(got.sum(), x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gg, gw, rtol=1e-12, atol=1e-12)


def test_an_expert_with_sigmoid_gelus_computes_the_same_and_keeps_its_keys() -> None:
    torch.manual_seed(0)
    expert = build_expert(ExpertModelConfig(hidden_size=32, depth=2, heads=2), {"size": 8, "channels": 1}, 16)
    torch.nn.init.normal_(expert.proj_out.weight, std=0.5)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([100.0, 900.0])
    text, mask = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)
    state = {k: v.clone() for k, v in expert.state_dict().items()}
    with torch.no_grad():
        want = expert_velocity(expert, x, t, text, mask)
        assert set_sigmoid_gelu(expert) == 2  # one feed-forward per block
        got = expert_velocity(expert, x, t, text, mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert set_sigmoid_gelu(expert) == 0, "already swapped: nothing left to change"
    after = expert.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
