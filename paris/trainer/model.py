"""The expert: diffusers' PixArt-alpha transformer (adaLN-single + cross-attention to text).

Presets follow DiT's names (hidden size, depth, heads); `tiny` is the ~1M-parameter model
that learns the digits on a CPU in minutes.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import PixArtTransformer2DModel
from torch import nn

from paris.config import ExpertModelConfig, RouterModelConfig

# (hidden size, depth, heads) — DiT-S/B/L/XL; tiny is ours.
PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (128, 4, 4),
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "XL": (1152, 28, 16),
}


def resolve_arch(cfg: ExpertModelConfig | RouterModelConfig) -> tuple[int, int, int]:
    hidden, depth, heads = PRESETS[cfg.preset]
    hidden, depth, heads = cfg.hidden_size or hidden, cfg.depth or depth, cfg.heads or heads
    if hidden % heads:
        raise ValueError(f"hidden size {hidden} is not divisible by {heads} heads")
    return hidden, depth, heads


def expert_kwargs(cfg: ExpertModelConfig, latent: dict[str, Any], text_dim: int) -> dict[str, Any]:
    hidden, depth, heads = resolve_arch(cfg)
    if latent["size"] % cfg.patch_size:
        raise ValueError(f"latent size {latent['size']} is not divisible by patch size {cfg.patch_size}")
    return dict(
        sample_size=latent["size"],
        in_channels=latent["channels"],
        out_channels=latent["channels"],
        patch_size=cfg.patch_size,
        num_layers=depth,
        num_attention_heads=heads,
        attention_head_dim=hidden // heads,
        cross_attention_dim=hidden,
        caption_channels=text_dim,
        use_additional_conditions=False,
        norm_type="ada_norm_single",
        interpolation_scale=1,
    )


def init_weights(model: nn.Module) -> None:
    """PixArt/DiT initialization: xavier linears, zero output and cross-attention projections.

    diffusers leaves PyTorch's default init; zeroing the residual-branch outputs makes every
    block start as the identity, which small models need to learn quickly.
    """
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for name, m in model.named_modules():
        if name.endswith("attn2.to_out.0") or name == "proj_out":
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        if "timestep_embedder" in name and isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)


def build_expert(cfg: ExpertModelConfig, latent: dict[str, Any], text_dim: int) -> PixArtTransformer2DModel:
    model = PixArtTransformer2DModel(**expert_kwargs(cfg, latent, text_dim))
    init_weights(model)
    return model


def expert_velocity(
    model: nn.Module, x_t: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """v_theta(x_t, t, c); `timestep` on the 0..1000 scale (see paris.trainer.flow)."""
    out = model(
        x_t, encoder_hidden_states=text, timestep=timestep, encoder_attention_mask=mask.long(), return_dict=False
    )[0]
    return out


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
