"""Checkpoints in the store: written file by file, published by rewriting `latest.json` last.

<prefix>/checkpoints/step-000500/model/   live weights (ModelMixin.save_pretrained)
<prefix>/checkpoints/step-000500/ema/     EMA weights as a plain model folder, + ema_state.json
<prefix>/checkpoints/step-000500/optimizer.pt, state.json
<prefix>/latest.json                       {"step": 500, "prefix": ".../step-000500"}

Files go through local disk and stream to and from the store (multipart on S3), so a 10 GB
checkpoint never sits in RAM as bytes; only the last `train.keep_checkpoints` are kept.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers.training_utils import EMAModel

from paris.storage import Store

_STEP = re.compile(r"^step-(\d+)/")


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
    keep: int | None = None,
) -> str:
    """Write the checkpoint's files to local disk, stream them to the store, publish them by
    rewriting latest.json, and only then delete all but the newest `keep` checkpoints."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        model.save_pretrained(d / "model")
        save_ema(ema, model, d / "ema")
        torch.save(optimizer.state_dict(), d / "optimizer.pt")
        (d / "state.json").write_text(json.dumps({**state, "step": step}))
        target = step_dir(prefix, step)
        store.publish(d, target, f"{prefix}/latest.json", {"step": step})
    if keep is not None:
        prune_checkpoints(store, prefix, keep)
    return target


EMA_STATE = "ema_state.json"


def save_ema(ema: EMAModel, model: Any, path: Path) -> None:
    """The EMA weights as a clean model folder, and the EMA's own state beside it.

    diffusers' EMAModel.save_pretrained registers decay, inv_gamma, optimization_step, ...
    into the model's config.json: every later from_pretrained then warns that they are "not
    expected", and the pipeline assembled from these weights saved them into its components."""
    averaged = type(model).from_config(model.config)
    ema.copy_to(averaged.parameters())
    averaged.save_pretrained(path)
    state = ema.state_dict()
    state.pop("shadow_params", None)
    (path / EMA_STATE).write_text(json.dumps(state))


def load_ema(path: Path, model_cls: Any) -> EMAModel:
    """The EMA that save_ema wrote (or, from an older checkpoint, EMAModel.save_pretrained)."""
    state_file = path / EMA_STATE
    if not state_file.is_file():
        return EMAModel.from_pretrained(str(path), model_cls=model_cls)
    model = model_cls.from_pretrained(path)
    ema = EMAModel(model.parameters(), model_cls=model_cls, model_config=model.config)
    ema.load_state_dict(json.loads(state_file.read_text()))
    return ema


def prune_checkpoints(store: Store, prefix: str, keep: int) -> list[int]:
    """Delete the checkpoints older than the newest `keep` ones; never the one latest.json
    names. Returns the steps deleted. Safe at any moment: latest.json already points past them."""
    pointer = store.get_json_or_none(f"{prefix}/latest.json")
    if pointer is None:
        return []
    base = f"{prefix}/checkpoints/"
    steps = sorted({int(m.group(1)) for k in store.keys(base) if (m := _STEP.match(k[len(base) :]))})
    doomed = [s for s in steps[: max(0, len(steps) - keep)] if step_dir(prefix, s) != pointer["prefix"]]
    for s in doomed:
        store.delete_prefix(step_dir(prefix, s))
    return doomed



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
