"""ParisPipeline: per-expert CFG velocities mixed by the router, integrated with Euler.

A diffusers DiffusionPipeline whose experts are components `expert_0 .. expert_{K-1}`. K is
known only from the saved model, while diffusers derives component names from the
`__init__` signature, so the two class methods that read that signature are extended to
include the registered experts, and `from_pretrained` reads `model_index.json` directly.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.utils import BaseOutput
from PIL import Image

from paris.config import parse_routing
from paris.data.encoders import tensor_to_images
from paris.errors import ParisError
from paris.router.model import ParisRouter
from paris.router.routing import guided, mix, routing_weights
from paris.trainer.loop import attention_backend
from paris.trainer.model import expert_velocity, text_length

GUIDANCE_ROUTING = ("shared", "separate")  # SampleConfig.guidance_routing

# What model_index.json may name: the classes paris puts into a pipeline, nothing else.
ALLOWED_COMPONENTS = frozenset(
    {
        ("paris.router.model", "ParisRouter"),
        ("paris.router.text", "OpenClipTextModel"),
        ("diffusers", "PixArtTransformer2DModel"),
        ("diffusers", "FlowMatchEulerDiscreteScheduler"),
        ("diffusers", "AutoencoderKL"),
        ("transformers", "BertModel"),
        ("transformers", "BertTokenizerFast"),
        ("transformers", "BertTokenizer"),
    }
)


@dataclass
class Branch:
    """One CFG branch of a batch: its caption states, and the routing weights of this step."""

    text: torch.Tensor  # [B, L, D]
    mask: torch.Tensor  # [B, L]
    weights: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # [B, K]


@dataclass
class ParisPipelineOutput(BaseOutput):
    images: list[Image.Image] | np.ndarray | torch.Tensor
    usage: list[float]  # share of the routing weight each expert received, over all steps
    expert_calls: list[int]  # samples x steps each expert actually ran on


class ParisPipeline(DiffusionPipeline):
    _optional_components = ["text_encoder", "tokenizer", "vae"]  # noqa: RUF012 (diffusers' API)

    def __init__(
        self,
        router: ParisRouter,
        scheduler: FlowMatchEulerDiscreteScheduler,
        text_encoder: Any = None,
        tokenizer: Any = None,
        vae: Any = None,
        text_max_length: int = 77,
        latent_scaling: float = 1.0,
        latent_shift: float = 0.0,
        **experts: torch.nn.Module,
    ) -> None:
        super().__init__()
        names = sorted(experts, key=lambda n: int(n.removeprefix("expert_")))
        if names != [f"expert_{i}" for i in range(len(names))] or len(names) != router.config.num_clusters:
            raise ValueError(f"need experts expert_0..expert_{router.config.num_clusters - 1}, got {names}")
        self.register_modules(
            router=router,
            scheduler=scheduler,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            vae=vae,
            **{n: experts[n] for n in names},
        )
        self.register_to_config(
            text_max_length=text_max_length, latent_scaling=latent_scaling, latent_shift=latent_shift
        )

    # ---- diffusers integration for a variable number of experts ------------------------

    @classmethod
    def _get_signature_keys(cls, obj: Any) -> tuple[list[str], list[str]]:
        expected, optional = super()._get_signature_keys(obj)
        expected = [e for e in expected if e != "experts"]
        if not isinstance(obj, type):
            expected += [k for k in obj.config if k.startswith("expert_")]
        return sorted(expected), optional

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> ParisPipeline:
        """Load from a local directory only (never a hub).

        `model_index.json` comes from the store, so it must not choose what gets imported:
        only the (library, class) pairs that paris itself writes are accepted."""
        path = Path(path)
        index = json.loads((path / "model_index.json").read_text())
        parts: dict[str, Any] = {}
        for name, value in index.items():
            if name.startswith("_"):
                continue
            if isinstance(value, list) and len(value) == 2:
                library, class_name = value
                if library is None:
                    continue
                if (library, class_name) not in ALLOWED_COMPONENTS:
                    raise ParisError(
                        f"{path / 'model_index.json'}: component {name!r} names {library}.{class_name}, "
                        "which is not a class paris writes; refusing to import it"
                    )
                klass = getattr(importlib.import_module(library), class_name)
                parts[name] = klass.from_pretrained(path / name, local_files_only=True)
            else:
                parts[name] = value
        pipe = cls(**parts)
        return pipe.to(kwargs["device"]) if "device" in kwargs else pipe

    @property
    def experts(self) -> list[torch.nn.Module]:
        return [getattr(self, f"expert_{i}") for i in range(self.router.config.num_clusters)]

    # ---- text ----------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        # A text encoder may carry its own tokenizer (paris.router.text.OpenClipTextModel).
        tokenizer = self.tokenizer if self.tokenizer is not None else getattr(self.text_encoder, "tokenizer", None)
        if self.text_encoder is None or tokenizer is None:
            raise ValueError("this pipeline has no text encoder: pass prompt_embeds and prompt_mask")
        tok = tokenizer(
            prompts, padding="max_length", truncation=True, max_length=self.config.text_max_length, return_tensors="pt"
        )
        out = self.text_encoder(
            input_ids=tok.input_ids.to(self.device), attention_mask=tok.attention_mask.to(self.device)
        )
        return out.last_hidden_state.float(), tok.attention_mask.bool().to(self.device)

    # ---- sampling --------------------------------------------------------------------------

    def check_inputs(
        self,
        prompt: str | list[str] | None,
        num_inference_steps: int,
        guidance_scale: float,
        routing: str,
        prompt_embeds: torch.Tensor | None,
        prompt_mask: torch.Tensor | None,
        output_type: str,
        guidance_routing: str,
    ) -> int | None:
        """Reject bad arguments before any work; returns the routing mode's expert count."""
        if prompt is None and prompt_embeds is None:
            raise ValueError("pass a prompt or prompt_embeds")
        if prompt_embeds is not None and prompt_mask is None:
            raise ValueError("prompt_embeds needs prompt_mask")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be pil, np or pt, got {output_type!r}")
        if guidance_routing not in GUIDANCE_ROUTING:
            raise ValueError(f"guidance_routing must be one of {GUIDANCE_ROUTING}, got {guidance_routing!r}")
        return parse_routing(routing)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
        routing: str = "top2",
        num_images_per_prompt: int = 1,
        generator: torch.Generator | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
        null_embeds: torch.Tensor | None = None,
        null_mask: torch.Tensor | None = None,
        output_type: str = "pil",
        shift: float | None = None,
        guidance_routing: str = "shared",
        latents: torch.Tensor | None = None,
    ) -> ParisPipelineOutput:
        """Sample with per-expert CFG mixed by the router (see paris.router.routing).

        `guidance_routing`: "shared" weights the unconditional branch with the conditional
        branch's routing (the default, measured in the README); "separate" routes the
        unconditional branch with the router's weights for the empty caption.
        `latents` is the starting noise [B, C, H, W] (B = prompts x images per prompt);
        without it the noise comes from `generator`. `output_type="pt"` returns images in [-1, 1].
        """
        # 1. Check inputs
        keep = self.check_inputs(
            prompt, num_inference_steps, guidance_scale, routing, prompt_embeds, prompt_mask, output_type,
            guidance_routing,
        )
        device = self.device

        # 2. Encode the prompts and the empty caption (the unconditional input for CFG)
        if prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
            prompt_embeds, prompt_mask = self.encode_prompt(prompts)
        assert prompt_mask is not None  # check_inputs
        do_cfg = guidance_scale != 1.0
        if do_cfg and (null_embeds is None or null_mask is None):
            null_embeds, null_mask = self.encode_prompt([""])
        text = prompt_embeds.repeat_interleave(num_images_per_prompt, 0).to(device)
        mask = prompt_mask.repeat_interleave(num_images_per_prompt, 0).to(device)
        b = text.shape[0]

        # 3. Prepare the noise: drawn on the CPU, so a seed gives the same images on any device
        cfg_r = self.router.config
        shape = torch.Size((b, cfg_r.in_channels, cfg_r.sample_size, cfg_r.sample_size))
        if latents is not None and latents.shape != shape:
            raise ValueError(f"latents must have shape {tuple(shape)}, got {tuple(latents.shape)}")
        x = (latents.float() if latents is not None else torch.randn(shape, generator=generator)).to(device)

        # 4. Prepare the timesteps (set_shift: the shift read by set_timesteps, not the config)
        if shift is not None:
            self.scheduler.set_shift(shift)
        self.scheduler.set_timesteps(num_inference_steps, device=device)

        # 5. Denoise: route, run only the chosen experts, mix, Euler step
        branches = [Branch(text, mask)]
        if do_cfg:
            assert null_embeds is not None and null_mask is not None
            branches.append(Branch(null_embeds.expand(b, -1, -1).to(device), null_mask.expand(b, -1).to(device)))
        # Drop the caption columns no branch attends to (exact, see trim_text): once per call.
        length = text_length(*(br.mask for br in branches))
        for br in branches:
            br.text, br.mask = br.text[:, :length], br.mask[:, :length]
        k_all = cfg_r.num_clusters
        usage = torch.zeros(k_all, dtype=torch.float64)
        calls = [0] * k_all
        with attention_backend(device):
            for t in self.progress_bar(self.scheduler.timesteps):
                ts = t.expand(b).to(device)
                for i, br in enumerate(branches):
                    if k_all == 1:  # one expert: nothing to route
                        br.weights = torch.ones(b, 1, device=device)
                    elif i == 0 or (guidance_routing == "separate" and cfg_r.caption_channels):
                        br.weights = routing_weights(self._route(x, ts, br).softmax(-1), keep)
                    else:
                        br.weights = branches[0].weights
                usage += branches[0].weights.sum(0).double().cpu()
                mixed = self._mixed_velocities(x, ts, branches, calls)
                v = guided(mixed[0], mixed[1], guidance_scale) if do_cfg else mixed[0]
                x = self.scheduler.step(v, t, x).prev_sample

        # 6. Decode and convert
        images = self.decode(x)
        usage = usage / usage.sum()
        out: Any = images
        if output_type == "pil":
            out = tensor_to_images(images)
        elif output_type == "np":
            out = ((images.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
        return ParisPipelineOutput(images=out, usage=usage.tolist(), expert_calls=calls)

    def _route(self, x: torch.Tensor, ts: torch.Tensor, br: Branch) -> torch.Tensor:
        """Router logits [B, K]; the caption goes in only for a text-conditioned router."""
        if self.router.config.caption_channels:
            return self.router(x, ts, br.text, br.mask).float()
        return self.router(x, ts).float()

    def _mixed_velocities(
        self, x: torch.Tensor, ts: torch.Tensor, branches: list[Branch], calls: list[int]
    ) -> list[torch.Tensor]:
        """Per branch, sum_k w_k v_k(x, c_branch). Each expert runs once per step, on the rows
        routed to it in any branch, cond and uncond stacked into one batch."""
        per_branch: list[dict[int, tuple[torch.Tensor, torch.Tensor]]] = [{} for _ in branches]
        for k, expert in enumerate(self.experts):
            picked = [(br.weights[:, k] > 0).nonzero().squeeze(1) for br in branches]
            if all(len(rows) == 0 for rows in picked):
                continue  # only the chosen experts run
            calls[k] += len(set().union(*(rows.tolist() for rows in picked)))
            v = expert_velocity(
                expert,
                torch.cat([x[rows] for rows in picked]),
                torch.cat([ts[rows] for rows in picked]),
                torch.cat([br.text[rows] for br, rows in zip(branches, picked, strict=True)]),
                torch.cat([br.mask[rows] for br, rows in zip(branches, picked, strict=True)]),
            )
            for i, part in enumerate(v.split([len(rows) for rows in picked])):
                per_branch[i][k] = (picked[i], part)
        return [mix(br.weights, vs, x.shape) for br, vs in zip(branches, per_branch, strict=True)]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1]."""
        if self.vae is None:
            return latents.float()
        z = latents / self.config.latent_scaling + self.config.latent_shift
        return self.vae.decode(z.to(self.vae.dtype)).sample.float()
