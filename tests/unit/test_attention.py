"""paris's attention processor computes what diffusers' AttnProcessor2_0 computes, with
either kernel and with fused projections, and leaves the checkpoint layout alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from paris.config import ExpertModelConfig, RouterModelConfig
from paris.router.model import build_router
from paris.trainer.attention import ParisAttnProcessor, matmul_attention, set_attention
from paris.trainer.model import build_expert, expert_velocity


@pytest.mark.parametrize("kernel", ["sdpa", "matmul"])
@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("cross", [False, True])
def test_the_processor_matches_diffusers(kernel: str, fuse: bool, cross: bool) -> None:
    torch.manual_seed(0)
    attn = Attention(32, cross_attention_dim=24 if cross else None, heads=4, dim_head=8, bias=True)
    x = torch.randn(3, 10, 32)
    ctx = torch.randn(3, 6, 24) if cross else None
    bias = None
    if cross:  # PixArt's caption mask: a [B, 1, L] additive bias
        keep = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]])
        bias = ((1 - keep.float()) * -10000.0).unsqueeze(1)
    with torch.no_grad():
        attn.set_processor(AttnProcessor2_0())
        want = attn(x, encoder_hidden_states=ctx, attention_mask=bias)
        attn.set_processor(ParisAttnProcessor(kernel, fuse))  # type: ignore[arg-type]
        got = attn(x, encoder_hidden_states=ctx, attention_mask=bias)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_an_expert_and_a_router_compute_the_same_with_paris_attention() -> None:
    torch.manual_seed(0)
    small = {"hidden_size": 32, "depth": 2, "heads": 2}
    expert = build_expert(ExpertModelConfig(**small), {"size": 8, "channels": 1}, 16)
    torch.nn.init.normal_(expert.proj_out.weight, std=0.5)
    router = build_router(RouterModelConfig(**small, condition_on_text=True), 3, {"size": 8, "channels": 1}, 16)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([100.0, 900.0])
    text, mask = torch.randn(2, 5, 16), torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    keys = set(expert.state_dict()) | {f"r.{k}" for k in router.state_dict()}
    with torch.no_grad():
        want = expert_velocity(expert, x, t, text, mask), router(x, t, text, mask)
        assert set_attention(expert, "matmul") == 4 and set_attention(router, "matmul") == 4
        got = expert_velocity(expert, x, t, text, mask), router(x, t, text, mask)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert set(expert.state_dict()) | {f"r.{k}" for k in router.state_dict()} == keys


def test_the_matmul_kernel_in_bf16_stays_within_bf16_rounding_of_fp32_attention() -> None:
    """The scores and the softmax stay in bf16 (paris.trainer.attention.matmul_attention):
    forward and input gradients must still match fp32 SDPA to bf16's precision."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 64, 32) for _ in range(3))
    bias = torch.zeros(2, 1, 1, 64)
    bias[0, ..., 40:] = -10000.0  # a masked caption tail
    grad = torch.randn(2, 3, 64, 32)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    want = F.scaled_dot_product_attention(leaves[0], leaves[1], leaves[2], attn_mask=bias)
    want_grads = torch.autograd.grad(want, leaves, grad)
    half = [t.to(torch.bfloat16).requires_grad_() for t in (q, k, v)]
    got = matmul_attention(half[0], half[1], half[2], bias)
    assert got.dtype == torch.bfloat16
    got_grads = torch.autograd.grad(got, half, grad.to(torch.bfloat16))
    torch.testing.assert_close(got.float(), want, rtol=0.02, atol=0.02)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g.float(), w, rtol=0.05, atol=0.05)
