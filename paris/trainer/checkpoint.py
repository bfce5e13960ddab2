"""Checkpoints in the store: written file by file, published by rewriting `latest.json` last.

<prefix>/checkpoints/step-000500/model/   live weights (ModelMixin.save_pretrained)
<prefix>/checkpoints/step-000500/ema/     EMA weights (EMAModel.save_pretrained)
<prefix>/checkpoints/step-000500/optimizer.pt, state.json
<prefix>/latest.json                       {"step": 500, "prefix": ".../step-000500"}
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers.training_utils import EMAModel

from paris.storage import Store


def step_dir(prefix: str, step: int) -> str:
    return f"{prefix}/checkpoints/step-{step:06d}"


def save_checkpoint(
    store: Store,
    prefix: str,
    step: int,
    model: Any,
    ema: EMAModel,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        model.save_pretrained(d / "model")
        ema.save_pretrained(str(d / "ema"))
        torch.save(optimizer.state_dict(), d / "optimizer.pt")
        (d / "state.json").write_text(json.dumps({**state, "step": step}))
        target = step_dir(prefix, step)
        store.publish(d, target, f"{prefix}/latest.json", {"step": step})
    return target



def fetch_checkpoint(store: Store, prefix: str, local: Path) -> tuple[int, Path] | None:
    """Download the last *published* checkpoint; None when there is none yet."""
    pointer = store.get_json_or_none(f"{prefix}/latest.json")
    if pointer is None:
        return None
    return int(pointer["step"]), store.download_dir(pointer["prefix"], local)


def fetch_weights(store: Store, prefix: str, local: Path, which: str = "ema") -> Path:
    """Only the model (or EMA) folder of the last checkpoint: what sampling needs."""
    pointer = store.get_json_or_none(f"{prefix}/latest.json")
    if pointer is None:
        from paris.errors import StorageError

        raise StorageError(f"no finished checkpoint at {store.uri(prefix)}: train it first")
    return store.download_dir(f"{pointer['prefix']}/{which}", local / which)
