"""ParisPipeline: save/load round trip in the design's layout, routing at the pipeline level
(only chosen experts run; `full` is exactly the router-weighted sum of guided velocities)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
