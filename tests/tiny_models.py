"""Small randomly initialized models saved to local folders: the VAE, DINOv2 and open_clip
code paths run offline with them (real runs point the same settings at real weights)."""

from __future__ import annotations

import json
from pathlib import Path


def tiny_vae(path: Path) -> Path:
    from diffusers import AutoencoderKL

    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                  sample_size=16).save_pretrained(path)
    return path


def tiny_dinov2(path: Path) -> Path:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    # transformers types config kwargs loosely: these are Dinov2Config's documented fields.
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             image_size=28, patch_size=14)).save_pretrained(path)  # type: ignore[call-arg]
    BitImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(path)
    return path


def tiny_open_clip(folder: Path, name: str = "paris-tiny-clip") -> Path:
    """An open_clip model config (CLIP's tokenizer, a one-layer text and image tower), as the
    local `.json` that `model:` accepts."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }))
    return path


def tiny_open_clip_checkpoint(config: Path, path: Path, seed: int = 1) -> Path:
    """Random weights of the model `config` describes, as the safetensors checkpoint that
    `pretrained:` takes (a seed other than the random init's, so loading it shows)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    open_clip.add_model_config(str(config))
    torch.manual_seed(seed)
    model = open_clip.create_model(config.stem, pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path
