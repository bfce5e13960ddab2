"""The router: a DiT classifier with a CLS token, predicting the cluster of x_0 from (x_t, t).

Trained with cross-entropy against the cluster of the clean image, its softmax estimates
p(k | x_t, t), the weight of expert k in the decentralized flow (DDM eq. 4, 7). With
`condition_on_text` it also cross-attends to the caption and estimates p(k | x_t, t, c).

Built from diffusers' blocks (PatchEmbed, AdaLayerNormSingle, BasicTransformerBlock); only the
CLS token and the classification head are ours, since diffusers has no DiT classifier.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.embeddings import PatchEmbed, PixArtAlphaTextProjection
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNormSingle
from torch import nn

from paris.config import RouterModelConfig
from paris.errors import ConfigError
from paris.trainer.model import init_dit


class ParisRouter(ModelMixin, ConfigMixin):
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        num_clusters: int,
        sample_size: int = 8,
        in_channels: int = 1,
        patch_size: int = 2,
        hidden_size: int = 128,
        depth: int = 4,
        heads: int = 4,
        caption_channels: int | None = None,
        clusters: list[int] | None = None,  # the data cluster of each class; None: class k is cluster k
    ) -> None:
        super().__init__()
        self.gradient_checkpointing = False
        self.patch = PatchEmbed(sample_size, sample_size, patch_size, in_channels, hidden_size, interpolation_scale=1)
        self.cls = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.adaln_single = AdaLayerNormSingle(hidden_size)
        self.caption_projection = PixArtAlphaTextProjection(caption_channels, hidden_size) if caption_channels else None
        self.blocks = nn.ModuleList(
            [
                BasicTransformerBlock(
                    hidden_size,
                    heads,
                    hidden_size // heads,
                    norm_type="ada_norm_single",
                    cross_attention_dim=hidden_size if caption_channels else None,
                    norm_elementwise_affine=False,
                    norm_eps=1e-6,
                    attention_bias=True,
                    activation_fn="gelu-approximate",
                )
                for _ in range(depth)
            ]
        )
        self.head = nn.Sequential(
            nn.LayerNorm(hidden_size),
            nn.Linear(hidden_size, hidden_size),
            nn.GELU(),
            nn.Linear(hidden_size, num_clusters),
        )

    def forward(
        self,
        x_t: torch.Tensor,  # [B, C, H, W]
        timestep: torch.Tensor,  # [B], 0..1000 scale
        text: torch.Tensor | None = None,  # [B, L, D]
        text_mask: torch.Tensor | None = None,  # [B, L] bool
    ) -> torch.Tensor:
        """Cluster logits [B, K]."""
        b = x_t.shape[0]
        h = self.patch(x_t)  # [B, N, D]
        h = torch.cat([self.cls.to(h.dtype).expand(b, -1, -1), h], dim=1)  # [B, 1 + N, D]
        t6, _ = self.adaln_single(timestep, {"resolution": None, "aspect_ratio": None}, b, h.dtype)
        enc, enc_bias = None, None
        if self.caption_projection is not None:
            if text is None or text_mask is None:
                raise ValueError("this router is text-conditioned: pass the caption's token states")
            enc = self.caption_projection(text)
            enc_bias = ((1 - text_mask.to(h.dtype)) * -10000.0).unsqueeze(1)  # [B, 1, L]
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                h = self._gradient_checkpointing_func(block, h, None, enc, enc_bias, t6)
            else:
                h = block(h, encoder_hidden_states=enc, encoder_attention_mask=enc_bias, timestep=t6)
        return self.head(h[:, 0])


def build_router(
    cfg: RouterModelConfig,
    num_clusters: int,
    latent: dict[str, int],
    text_dim: int,
    clusters: list[int] | None = None,
) -> ParisRouter:
    hidden, depth, heads = cfg.arch()
    if latent["size"] % cfg.patch_size:
        raise ConfigError(
            f"router.model.patch_size {cfg.patch_size} does not divide the latent size {latent['size']} of this dataset"
        )
    model = ParisRouter(
        num_clusters=num_clusters,
        sample_size=latent["size"],
        in_channels=latent["channels"],
        patch_size=cfg.patch_size,
        hidden_size=hidden,
        depth=depth,
        heads=heads,
        caption_channels=text_dim if cfg.condition_on_text else None,
        clusters=clusters,
    )
    init_dit(model, model.blocks, model.adaln_single, None)
    nn.init.normal_(model.cls, std=0.02)
    return model
