"""Router training: `train.caption_dropout` feeds a caption-aware router the empty caption."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import torch

from paris.config import RouterModelConfig, TrainConfig
from paris.data.shards import ShardSet
from paris.data.stream import InMemory
from paris.router.model import build_router
from paris.router.objective import router_loss

LATENT = {"size": 8, "channels": 1}


def _data(n: int = 16, length: int = 4, dim: int = 16) -> ShardSet:
    g = torch.Generator().manual_seed(0)
    return ShardSet(
        latents=torch.randn(n, 1, 8, 8, generator=g),
        text_states=torch.randn(n, length, dim, generator=g).half(),
        text_mask=torch.ones(n, length, dtype=torch.bool),
        labels=torch.full((n,), -1),
        clusters=torch.randint(3, (n,), generator=g),
        captions=[f"c{i}" for i in range(n)],
    )


def test_caption_dropout_replaces_captions_with_the_empty_one() -> None:
    torch.manual_seed(0)
    data = _data()
    null = (torch.zeros(4, 16), torch.tensor([True, False, False, False]))
    model = build_router(RouterModelConfig(hidden_size=32, depth=1, heads=2, condition_on_text=True), 3, LATENT, 16)
    for block in model.blocks:  # zero-initialized cross-attention would ignore the caption
        torch.nn.init.normal_(cast(Any, block).attn2.to_out[0].weight, std=0.5)
    nulled = dataclasses.replace(
        data, text_states=null[0].half().expand(16, -1, -1), text_mask=null[1].expand(16, -1)
    )
    cpu = torch.device("cpu")

    def loss(d: ShardSet, p: float) -> torch.Tensor:
        cfg = TrainConfig(batch_size=8, caption_dropout=p)
        return router_loss(InMemory(d), null, cfg)(model, torch.Generator().manual_seed(1), cpu)

    # p=1 drops every caption: the same loss as data whose captions are all empty (1e-9: the
    # same random draws, but nothing dropped).
    torch.testing.assert_close(loss(data, 1.0), loss(nulled, 1e-9))
    assert not torch.allclose(loss(data, 1.0), loss(data, 1e-9))
