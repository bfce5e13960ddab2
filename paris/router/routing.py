"""Routing math: router probabilities -> expert weights, and the weighted velocity.

v(x_t) = sum_k w_k(x_t, t) * v_k(x_t),   w = p(k | x_t, t) restricted to the chosen experts
                                          and renormalized to sum to 1.
"""

from __future__ import annotations

import torch


def routing_weights(probs: torch.Tensor, keep: int | None) -> torch.Tensor:
    """probs [B, K] (rows sum to 1) -> weights [B, K]: top-`keep` per row, renormalized.

    keep=None is the full ensemble (the weights are the probabilities themselves).
    """
    if keep is None or keep >= probs.shape[-1]:
        return probs / probs.sum(-1, keepdim=True)
    top = probs.topk(keep, dim=-1)
    w = torch.zeros_like(probs).scatter_(-1, top.indices, top.values)
    return w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(probs.dtype).tiny)


def guided(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (per expert, before mixing): scale=1 is the conditional model."""
    return v_uncond + scale * (v_cond - v_uncond)


def mix(
    weights: torch.Tensor, velocities: dict[int, tuple[torch.Tensor, torch.Tensor]], shape: torch.Size
) -> torch.Tensor:
    """Weighted sum of per-expert velocities.

    velocities[k] = (rows, v_k[rows]): each expert ran only on the samples routed to it.
    """
    out = torch.zeros(shape, dtype=torch.float32, device=weights.device)
    for k, (rows, v) in velocities.items():
        w = weights[rows, k].view(-1, *([1] * (len(shape) - 1)))
        out[rows] += w * v.float()
    return out
