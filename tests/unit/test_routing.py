"""Routing math: weights sum to 1, top-k renormalization, full = weighted sum of all experts."""

import pytest
import torch

from paris.config import parse_routing
from paris.router.routing import guided, mix, routing_weights


def _probs(b: int = 6, k: int = 5) -> torch.Tensor:
    return torch.randn(b, k, generator=torch.Generator().manual_seed(0)).softmax(-1)


@pytest.mark.parametrize("keep", [1, 2, 3, None])
def test_weights_sum_to_one_and_keep_k(keep: int | None) -> None:
    p = _probs()
    w = routing_weights(p, keep)
    assert torch.allclose(w.sum(-1), torch.ones(len(p)))
    assert ((w > 0).sum(-1) == (keep or p.shape[1])).all()


def test_topk_renormalizes_over_the_chosen_experts() -> None:
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    w = routing_weights(p, 2)
    assert torch.allclose(w, torch.tensor([[0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0]]))
    assert torch.equal(routing_weights(p, 1), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))


def test_full_equals_the_weighted_sum_over_all_experts() -> None:
    p = _probs(4, 3)
    v = torch.randn(3, 4, 1, 2, 2)  # per expert, per sample
    rows = torch.arange(4)
    mixed = mix(routing_weights(p, None), {k: (rows, v[k]) for k in range(3)}, torch.Size((4, 1, 2, 2)))
    expected = torch.stack([p[:, k].view(4, 1, 1, 1) * v[k] for k in range(3)]).sum(0)
    assert torch.allclose(mixed, expected, atol=1e-6)


def test_mix_only_touches_rows_routed_to_an_expert() -> None:
    w = routing_weights(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), 1)
    out = mix(w, {0: (torch.tensor([0]), torch.ones(1, 1)), 1: (torch.tensor([1]), 2 * torch.ones(1, 1))},
              torch.Size((2, 1)))
    assert out.tolist() == [[1.0], [2.0]]


def test_guidance_one_is_the_conditional_velocity() -> None:
    c, u = torch.randn(3), torch.randn(3)
    assert torch.allclose(guided(c, u, 1.0), c)
    assert torch.allclose(guided(c, u, 0.0), u)


@pytest.mark.parametrize(("mode", "keep"), [("top1", 1), ("top2", 2), ("topk:3", 3), ("full", None)])
def test_parse_routing(mode: str, keep: int | None) -> None:
    assert parse_routing(mode) == keep


@pytest.mark.parametrize("mode", ["top0", "topk:0", "best", "topk:", ""])
def test_parse_routing_rejects_unknown_modes(mode: str) -> None:
    with pytest.raises(ValueError, match="routing mode"):
        parse_routing(mode)
