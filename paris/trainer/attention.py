"""The attention processor of the expert and the router: kernel choice and fused projections.

diffusers' AttnProcessor2_0 calls torch's scaled_dot_product_attention, whose CPU kernels
(flash and math) are slow in bf16 at DiT's sizes: PyTorch's CPU flash kernel runs its
bf16 matmuls in small tiles, and the math kernel adds a masked-softmax pass. Two plain bf16
matmuls around a softmax run at oneDNN's matmul speed instead (bench/README.md,
"attention kernel"). CUDA keeps SDPA (flash / memory-efficient kernels).

The projections read one concatenated weight (q, k, v for self-attention; k, v for
cross-attention) so that one larger GEMM replaces three small ones. The parameters stay the
separate `to_q`, `to_k`, `to_v` of diffusers, so checkpoints keep diffusers' layout.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

Kernel = Literal["sdpa", "matmul"]


def _linear(x: torch.Tensor, layers: list[nn.Linear]) -> torch.Tensor:
    """x @ [W_1; W_2; ...]^T + [b_1; b_2; ...]: one GEMM for several projections of x."""
    weight = torch.cat([m.weight for m in layers])
    bias = torch.cat([m.bias for m in layers]) if layers[0].bias is not None else None
    return F.linear(x, weight, bias)


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v, all in q's dtype.

    The scale goes on q (d per row, not one per key) and the scores stay in q's dtype: a bf16
    product is rounded to bf16 when it is written, so an fp32 softmax over it reads no more
    precision, and it moves twice the bytes and keeps an fp32 copy for the backward pass.
    The softmax itself reduces in fp32 inside the kernel, eager and compiled alike."""
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))
    if bias is not None:
        scores = scores + bias.to(scores.dtype)
    return torch.matmul(scores.softmax(-1), v)


class ParisAttnProcessor:
    """AttnProcessor2_0's computation with a chosen kernel and fused projections, for the
    attention blocks paris builds (no group norm, spatial norm, q/k norms or residual)."""

    def __init__(self, kernel: Kernel = "sdpa", fuse_projections: bool = True) -> None:
        self.kernel = kernel
        self.fuse_projections = fuse_projections

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **_: Any,
    ) -> torch.Tensor:
        b = hidden_states.shape[0]
        cross = encoder_hidden_states is not None
        context = encoder_hidden_states if cross else hidden_states
        assert context is not None
        if not self.fuse_projections:
            q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        elif cross:
            q = attn.to_q(hidden_states)
            k, v = _linear(context, [attn.to_k, attn.to_v]).chunk(2, dim=-1)
        else:
            q, k, v = _linear(hidden_states, [attn.to_q, attn.to_k, attn.to_v]).chunk(3, dim=-1)
        heads = attn.heads
        d = q.shape[-1] // heads
        q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))

        bias = None
        if attention_mask is not None:
            if attention_mask.ndim == 3 and attention_mask.shape[1] == 1:  # [B, 1, L]: one row for all heads
                bias = attention_mask.unsqueeze(1)
            else:
                bias = attn.prepare_attention_mask(attention_mask, k.shape[2], b).view(b, heads, -1, k.shape[2])
        if self.kernel == "matmul":
            out = matmul_attention(q, k, v, bias)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if bias is None else bias.to(q.dtype))
        out = out.transpose(1, 2).reshape(b, -1, heads * d).to(q.dtype)
        return attn.to_out[1](attn.to_out[0](out))


def supported(attn: Attention) -> bool:
    """Whether ParisAttnProcessor computes exactly what AttnProcessor2_0 would for `attn`."""
    return (
        attn.spatial_norm is None
        and attn.group_norm is None
        and attn.norm_q is None
        and attn.norm_k is None
        and not attn.norm_cross
        and not attn.residual_connection
        and attn.rescale_output_factor == 1.0
    )


def default_kernel(device: torch.device, dtype: torch.dtype | None) -> Kernel:
    """matmul on the CPU (faster than both SDPA CPU kernels in bf16 and in fp32, bench/README.md);
    SDPA elsewhere."""
    return "matmul" if device.type == "cpu" else "sdpa"


def set_attention(model: nn.Module, kernel: Kernel, fuse_projections: bool = True) -> int:
    """Give every supported Attention of `model` a ParisAttnProcessor; returns how many."""
    n = 0
    for m in model.modules():
        if isinstance(m, Attention):
            if supported(m):
                m.set_processor(ParisAttnProcessor(kernel, fuse_projections))
                n += 1
            else:
                m.set_processor(AttnProcessor2_0())
    return n
