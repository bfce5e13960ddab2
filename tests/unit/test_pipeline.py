"""ParisPipeline: save/load round trip in the design's layout, routing at the pipeline level
(only chosen experts run; `full` is exactly the router-weighted sum of guided velocities)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from transformers import AutoModel, AutoTokenizer

from paris.config import ExpertModelConfig, RouterModelConfig
from paris.data.encoders import minilm_path
from paris.router.model import build_router
from paris.router.pipeline import ParisPipeline
from paris.router.routing import guided
from paris.trainer.model import build_expert, expert_velocity

LATENT = {"size": 8, "channels": 1}
K = 3


@pytest.fixture(scope="module")
def pipe() -> ParisPipeline:
    torch.manual_seed(0)
    small = {"hidden_size": 32, "depth": 1, "heads": 2}
    experts = {f"expert_{i}": build_expert(ExpertModelConfig(**small), LATENT, 384) for i in range(K)}
    for e in experts.values():  # zero-init outputs would make every velocity 0: randomize them
        torch.nn.init.normal_(e.proj_out.weight, std=0.5)
    router = build_router(RouterModelConfig(**small), K, LATENT, 384)
    return ParisPipeline(
        router=router, scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=AutoModel.from_pretrained(minilm_path(), local_files_only=True).eval(),
        tokenizer=AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True),
        text_max_length=8, **experts,
    )


def test_save_and_load_round_trip(pipe: ParisPipeline, tmp_path: Path) -> None:
    pipe.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"model_index.json", "router", "scheduler", "text_encoder",
                                                     "tokenizer", "expert_0", "expert_1", "expert_2"}
    loaded = ParisPipeline.from_pretrained(tmp_path)
    kw: dict[str, Any] = {"num_inference_steps": 2, "routing": "top2", "output_type": "pt"}
    a = pipe("a handwritten digit one", generator=torch.Generator().manual_seed(3), **kw).images
    b = loaded("a handwritten digit one", generator=torch.Generator().manual_seed(3), **kw).images
    assert isinstance(a, torch.Tensor) and a.shape == (1, 1, 8, 8)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(("routing", "per_step"), [("top1", 1), ("top2", 2), ("full", K)])
def test_only_the_chosen_experts_run(pipe: ParisPipeline, routing: str, per_step: int) -> None:
    out = pipe(["a", "b"], num_inference_steps=3, routing=routing, num_images_per_prompt=2, output_type="pt",
               generator=torch.Generator().manual_seed(0))
    assert sum(out.expert_calls) == 4 * 3 * per_step  # samples x steps x experts kept
    assert abs(sum(out.usage) - 1) < 1e-6


def test_full_routing_is_the_weighted_sum_of_guided_velocities(pipe: ParisPipeline) -> None:
    prompt, scale = "a handwritten digit two", 2.5
    out = pipe(prompt, num_inference_steps=1, guidance_scale=scale, routing="full", output_type="pt",
               generator=torch.Generator().manual_seed(7))
    # Recompute the single Euler step (t = 1 -> 0) by hand from the same noise.
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    text, mask = pipe.encode_prompt([prompt])
    null, null_mask = pipe.encode_prompt([""])
    t = torch.full((1,), 1000.0)
    with torch.no_grad():
        p = pipe.router(x, t).softmax(-1)[0]
        v = sum(
            p[k] * guided(expert_velocity(e, x, t, text, mask), expert_velocity(e, x, t, null, null_mask), scale)
            for k, e in enumerate(pipe.experts)
        )
    assert isinstance(out.images, torch.Tensor)
    torch.testing.assert_close(out.images, x - v, rtol=1e-4, atol=1e-4)


def test_the_shift_changes_the_sigma_schedule(pipe: ParisPipeline) -> None:
    kw: dict[str, Any] = {"num_inference_steps": 4, "routing": "top1", "output_type": "pt"}
    schedules = []
    for shift in (1.0, 3.0):
        pipe("a", shift=shift, generator=torch.Generator().manual_seed(0), **kw)
        schedules.append(pipe.scheduler.sigmas.clone())
    assert not torch.allclose(schedules[0], schedules[1])
    # shift s maps sigma to s*sigma / (1 + (s - 1)*sigma), step by step
    base = schedules[0][:-1]
    torch.testing.assert_close(schedules[1][:-1], 3 * base / (1 + 2 * base))


@pytest.mark.parametrize("routing", ["top1", "top2", "full"])
def test_a_batch_equals_its_samples_generated_alone(pipe: ParisPipeline, routing: str) -> None:
    # Per-expert row gathering must not mix samples: generating [a, b] equals generating a and
    # b alone from the same starting noise.
    prompts = ["a handwritten digit one", "a handwritten digit eight"]
    kw: dict[str, Any] = {"num_inference_steps": 3, "routing": routing, "output_type": "pt", "guidance_scale": 2.0}
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    both = pipe(prompts, latents=noise, **kw).images
    assert isinstance(both, torch.Tensor)
    for i, p in enumerate(prompts):
        alone = pipe(p, latents=noise[i : i + 1], **kw).images
        assert isinstance(alone, torch.Tensor)
        torch.testing.assert_close(both[i : i + 1], alone, rtol=1e-5, atol=1e-5)


def test_latents_replace_the_generator_draw(pipe: ParisPipeline) -> None:
    kw: dict[str, Any] = {"num_inference_steps": 2, "routing": "top2", "output_type": "pt"}
    a = pipe("a", generator=torch.Generator().manual_seed(9), **kw).images
    b = pipe("a", latents=torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(9)), **kw).images
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="latents"):
        pipe("a", latents=torch.zeros(2, 1, 8, 8), **kw)


def test_model_index_cannot_choose_what_gets_imported(pipe: ParisPipeline, tmp_path: Path) -> None:
    import json

    from paris.errors import ParisError

    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    index["router"] = ["os", "system"]
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ParisError, match="not a class paris writes"):
        ParisPipeline.from_pretrained(tmp_path)


def test_separate_guidance_routing_routes_the_empty_caption_on_its_own() -> None:
    # With a caption-aware router, "separate" weights the unconditional branch by the router's
    # output for the empty caption: the result differs from "shared" and matches a hand
    # computation of one Euler step.
    torch.manual_seed(1)
    small = {"hidden_size": 32, "depth": 1, "heads": 2}
    experts = {f"expert_{i}": build_expert(ExpertModelConfig(**small), LATENT, 384) for i in range(K)}
    for e in experts.values():
        torch.nn.init.normal_(e.proj_out.weight, std=0.5)
    router = build_router(RouterModelConfig(**small, condition_on_text=True), K, LATENT, 384)
    torch.nn.init.normal_(cast(Any, router.head[-1]).weight, std=2.0)
    for block in router.blocks:  # zero-initialized cross-attention would make the caption moot
        torch.nn.init.normal_(cast(Any, block).attn2.to_out[0].weight, std=0.5)
    p = ParisPipeline(
        router=router, scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=AutoModel.from_pretrained(minilm_path(), local_files_only=True).eval(),
        tokenizer=AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True),
        text_max_length=8, **experts,
    )
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    kw: dict[str, Any] = {"num_inference_steps": 1, "routing": "full", "output_type": "pt", "guidance_scale": 3.0}
    shared = p("a handwritten digit two", latents=x, **kw).images
    separate = p("a handwritten digit two", latents=x, guidance_routing="separate", **kw).images
    text, mask = p.encode_prompt(["a handwritten digit two"])
    null, null_mask = p.encode_prompt([""])
    t = torch.full((1,), 1000.0)
    with torch.no_grad():
        w_c = p.router(x, t, text, mask).softmax(-1)[0]
        w_u = p.router(x, t, null, null_mask).softmax(-1)[0]
        v_c = sum(w_c[k] * expert_velocity(e, x, t, text, mask) for k, e in enumerate(p.experts))
        v_u = sum(w_u[k] * expert_velocity(e, x, t, null, null_mask) for k, e in enumerate(p.experts))
    assert isinstance(shared, torch.Tensor) and isinstance(separate, torch.Tensor)
    torch.testing.assert_close(separate, x - guided(v_c, v_u, 3.0), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(shared, separate, atol=1e-4)
