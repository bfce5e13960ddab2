"""The expert: diffusers' PixArt-alpha transformer (adaLN-single + cross-attention to text).

Presets follow DiT's names (hidden size, depth, heads); `tiny` is the ~1M-parameter model
that learns the digits on a CPU in minutes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import torch
from diffusers import PixArtTransformer2DModel
from diffusers.models.normalization import AdaLayerNormSingle
from torch import nn

from paris.config import ExpertModelConfig
from paris.errors import ConfigError


def expert_kwargs(cfg: ExpertModelConfig, latent: dict[str, Any], text_dim: int) -> dict[str, Any]:
    hidden, depth, heads = cfg.arch()
    if latent["size"] % cfg.patch_size:
        raise ConfigError(
            f"expert.patch_size {cfg.patch_size} does not divide the latent size {latent['size']} of this dataset"
        )
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


def init_dit(
    model: nn.Module, blocks: Iterable[nn.Module], adaln_single: AdaLayerNormSingle, out: nn.Linear | None
) -> None:
    """PixArt/DiT initialization: xavier linears, zero output and cross-attention projections.

    diffusers leaves PyTorch's default init; zeroing the residual-branch outputs makes every
    block start as the identity, which small models need to learn quickly. Modules are named
    directly (as DiT's initialize_weights does), so a rename in diffusers fails here loudly.
    """
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    embedder = cast(Any, adaln_single).emb.timestep_embedder
    nn.init.normal_(embedder.linear_1.weight, std=0.02)
    nn.init.normal_(embedder.linear_2.weight, std=0.02)
    zero: list[nn.Linear] = [cast(Any, block).attn2.to_out[0] for block in blocks if block.attn2 is not None]
    for m in [*zero, *([out] if out is not None else [])]:
        nn.init.zeros_(m.weight)
        nn.init.zeros_(m.bias)


def build_expert(cfg: ExpertModelConfig, latent: dict[str, Any], text_dim: int) -> PixArtTransformer2DModel:
    model = PixArtTransformer2DModel(**expert_kwargs(cfg, latent, text_dim))
    init_dit(model, model.transformer_blocks, model.adaln_single, model.proj_out)
    return model


def expert_velocity(
    model: nn.Module, x_t: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """v_theta(x_t, t, c); `timestep` on the 0..1000 scale (see paris.trainer.flow)."""
    out = model(
        x_t, encoder_hidden_states=text, timestep=timestep, encoder_attention_mask=mask.long(), return_dict=False
    )[0]
    return out


# Trimmed caption lengths are rounded up to this multiple: a few static shapes for
# torch.compile (each compiled once, so a resumed run replays the bits of a straight one).
TEXT_MULTIPLE = 8


def text_length(*masks: torch.Tensor, multiple: int = TEXT_MULTIPLE) -> int:
    """Caption columns up to the last one any row of any mask attends to, rounded up to
    `multiple` (at most the masks' width)."""
    width = masks[0].shape[-1]
    keep = torch.cat([m.reshape(-1, width) for m in masks]).any(0).nonzero()
    n = int(keep.max()) + 1 if len(keep) else 1
    return min(width, -(-n // multiple) * multiple)


def trim_text(text: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the caption columns that no row attends to (the tokenizer's right padding).

    Cross-attention gives a masked column a -10000 bias, so its softmax weight is exactly 0
    in fp32: dropping it is the same result for less work (77 CLIP tokens are mostly
    padding). Reading the mask is a host sync on a GPU: call this where the mask is still
    on the CPU (the training loss) or once per sampling call."""
    n = text_length(mask)
    return text[:, :n], mask[:, :n]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
