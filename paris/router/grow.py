"""Growing a trained router by new experts' clusters (`paris train router --grow-from`).

The grown router keeps its parent's trunk and head rows, and its head gets one row per new
cluster. Fine-tuning alone teaches a new row slowly: in a few dozen steps it stayed below the
old classes' logits, and the new domain was never routed to its expert. So before fine-tuning,
the head's last layer is fitted on the trunk's features of a few training batches (a linear
probe, then fine-tuning: LP-FT, Kumar et al. 2022), which puts each new class where its data
lies in the parent's feature space at the cost of a few forward passes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from paris.errors import ConfigError
from paris.fingerprint import Fingerprint
from paris.storage import Store
from paris.trainer.checkpoint import checkpoint_fingerprint, fetch_weights

from .model import ParisRouter
from .objective import Draw, router_logits, targets

PROBE_BATCHES = 8  # training batches the head is fitted on (x batch_size rows)
PROBE_SEED = 1_000_003  # their generators' seeds start here, apart from the training steps'


def parent_digest(store: Store, grow_from: str, fp: Fingerprint) -> str:
    """What a router grown from `grow_from` records as its parent (its fingerprint's digest),
    once it is sure that `grow_from` holds a trained router of this architecture: anything
    else is a user's mistake, said in one line before any training starts."""
    where = store.uri(grow_from)
    if not store.exists(f"{grow_from}/latest.json"):
        raise ConfigError(f"--grow-from {where}: no trained router there (no latest.json)")
    found = checkpoint_fingerprint(store, grow_from)
    if found is None:  # a router trained before fingerprints: its weights will tell
        return grow_from
    fields = found.get("fields") or {}
    if "router.clusters" not in fields:
        raise ConfigError(f"--grow-from {where}: holds the checkpoints of an expert, not of a router")
    arch = {k: v for k, v in fp.fields.items() if k.startswith("router.model.")}
    old = {k: v for k, v in fields.items() if k.startswith("router.model.")}
    if old != arch:
        changed = "; ".join(Fingerprint(arch).changes(old))
        raise ConfigError(f"--grow-from {where}: a router of another architecture ({changed}): it cannot grow")
    return str(found.get("digest") or grow_from)


def grow(old: ParisRouter, new: ParisRouter) -> ParisRouter:
    """`new` (more classes) with every weight of `old`: the trunk as it is, and the head's rows
    of the old classes moved to their new positions. A new class starts at the mean of the
    old ones (no preference), so fine-tuning only has to teach it."""
    before = old.config.clusters or list(range(old.config.num_clusters))
    after = new.config.clusters or list(range(new.config.num_clusters))
    if not set(before) <= set(after):
        raise ConfigError(f"--grow-from: that router routes over clusters {before}, not a subset of {after}")
    state = old.state_dict()
    head = f"head.{len(old.head) - 1}"  # the Linear to one logit per class
    w_old, b_old = state[f"{head}.weight"], state[f"{head}.bias"]
    w = w_old.mean(0, keepdim=True).repeat(len(after), 1)
    b = b_old.mean().repeat(len(after))
    for i, k in enumerate(before):
        w[after.index(k)], b[after.index(k)] = w_old[i], b_old[i]
    state[f"{head}.weight"], state[f"{head}.bias"] = w, b
    try:
        new.load_state_dict(state)
    except RuntimeError as err:  # a parent of another architecture (one trained before fingerprints)
        why = str(err).splitlines()[-1].strip()
        raise ConfigError(f"--grow-from: a router of another architecture: {why}") from None
    return new


def grown_router(store: Store, grow_from: str, new: ParisRouter) -> ParisRouter:
    """`new` grown from the EMA weights of the router at `grow_from`."""
    with tempfile.TemporaryDirectory() as tmp:
        weights = fetch_weights(store, grow_from, Path(tmp), which="ema")
        try:
            old = ParisRouter.from_pretrained(weights)
        except (TypeError, ValueError, OSError) as err:  # only a parent from before fingerprints gets here
            raise ConfigError(f"--grow-from {store.uri(grow_from)}: not a router's weights ({err})") from None
    return grow(old, new)


def fit_head(
    model: ParisRouter,
    drawn: list[Draw],
    null_text: tuple[torch.Tensor, torch.Tensor],
    label_of: torch.Tensor,
    device: torch.device,
) -> float:
    """Fit the head's last layer, every class at once, to the cross-entropy of the batches
    `drawn` on the trunk's features (computed once, the trunk frozen). Returns the loss."""
    last = model.head[-1]
    features: list[torch.Tensor] = []
    hook = last.register_forward_hook(lambda _m, inputs, _out: features.append(inputs[0].detach().float()))
    model.to(device).eval()
    try:
        with torch.no_grad():
            for data, idx, t, eps, rows in drawn:
                router_logits(model, data, idx, t, eps, device, (rows, *null_text))
    finally:
        hook.remove()
    x = torch.cat(features)
    y = torch.cat([targets(data, idx, label_of) for data, idx, *_ in drawn]).to(device)
    # Full-batch L-BFGS on a convex problem of a few thousand parameters: deterministic, and
    # a few milliseconds against the fine-tuning's seconds.
    opt = torch.optim.LBFGS(last.parameters(), max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(last(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(F.cross_entropy(last(x), y))
