"""ParisPipeline: per-expert CFG velocities mixed by the router, integrated with Euler.

A diffusers DiffusionPipeline whose experts are components `expert_0 .. expert_{K-1}`. K is
known only from the saved model, while diffusers derives component names from the
`__init__` signature, so the two class methods that read that signature are extended to
include the registered experts, and `from_pretrained` reads `model_index.json` directly.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.utils import BaseOutput
from PIL import Image

from paris.config import parse_routing
from paris.data.encoders import tensor_to_images
from paris.router.model import ParisRouter
from paris.router.routing import guided, mix, routing_weights
from paris.trainer.loop import attention_backend
from paris.trainer.model import expert_velocity


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
        """Load from a local directory only (never a hub)."""
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
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError("this pipeline has no text encoder: pass prompt_embeds and prompt_mask")
        tok = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=self.config.text_max_length, return_tensors="pt"
        )
        out = self.text_encoder(
            input_ids=tok.input_ids.to(self.device), attention_mask=tok.attention_mask.to(self.device)
        )
        return out.last_hidden_state.float(), tok.attention_mask.bool().to(self.device)

    # ---- sampling --------------------------------------------------------------------------

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
    ) -> ParisPipelineOutput:
        keep = parse_routing(routing)
        device = self.device
        if prompt_embeds is None:
            if prompt is None:
                raise ValueError("pass a prompt or prompt_embeds")
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            prompt_embeds, prompt_mask = self.encode_prompt(prompts)
        if prompt_mask is None:
            raise ValueError("prompt_embeds needs prompt_mask")
        if null_embeds is None or null_mask is None:
            null_embeds, null_mask = self.encode_prompt([""])  # the unconditional input for CFG
        text = prompt_embeds.repeat_interleave(num_images_per_prompt, 0).to(device)
        mask = prompt_mask.repeat_interleave(num_images_per_prompt, 0).to(device)
        b = text.shape[0]
        cfg_r = self.router.config
        shape = torch.Size((b, cfg_r.in_channels, cfg_r.sample_size, cfg_r.sample_size))
        x = torch.randn(shape, generator=generator).to(device)  # noise drawn on the CPU: same on any device

        if shift is not None:
            self.scheduler.register_to_config(shift=shift)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        k_all = cfg_r.num_clusters
        usage = torch.zeros(k_all, dtype=torch.float64)
        calls = [0] * k_all
        do_cfg = guidance_scale != 1.0
        with attention_backend(device):
            for t in self.progress_bar(self.scheduler.timesteps):
                ts = t.expand(b).to(device)
                logits = self.router(
                    x, ts, text if cfg_r.caption_channels else None, mask if cfg_r.caption_channels else None
                )
                w = routing_weights(logits.float().softmax(-1), keep)
                usage += w.sum(0).double().cpu()
                velocities = {}
                for k, expert in enumerate(self.experts):
                    rows = (w[:, k] > 0).nonzero().squeeze(1)
                    if len(rows) == 0:
                        continue  # only the chosen experts run
                    calls[k] += len(rows)
                    n = len(rows)
                    if do_cfg:
                        xx = torch.cat([x[rows], x[rows]])
                        tt = torch.cat([ts[rows], ts[rows]])
                        cc = torch.cat([text[rows], null_embeds.expand(n, -1, -1).to(device)])
                        mm = torch.cat([mask[rows], null_mask.expand(n, -1).to(device)])
                        v_c, v_u = expert_velocity(expert, xx, tt, cc, mm).float().chunk(2)
                        velocities[k] = (rows, guided(v_c, v_u, guidance_scale))
                    else:
                        velocities[k] = (rows, expert_velocity(expert, x[rows], ts[rows], text[rows], mask[rows]))
                v = mix(w, velocities, shape)
                x = self.scheduler.step(v, t, x).prev_sample

        images = self.decode(x)
        usage = usage / usage.sum()
        out: Any = images
        if output_type == "pil":
            out = tensor_to_images(images)
        elif output_type == "np":
            out = ((images.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
        return ParisPipelineOutput(images=out, usage=usage.tolist(), expert_calls=calls)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1]."""
        if self.vae is None:
            return latents.float()
        z = latents / self.config.latent_scaling + self.config.latent_shift
        return self.vae.decode(z.to(self.vae.dtype)).sample.float()
