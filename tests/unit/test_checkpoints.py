"""Checkpoint pruning: only the newest `keep` remain, and none is deleted before latest.json
points past it (the S3 backend runs the same check in tests/integration)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.training_utils import EMAModel

from paris.config import ExpertModelConfig
from paris.storage import LocalStore, Store
from paris.trainer.checkpoint import fetch_checkpoint, save_checkpoint
from paris.trainer.model import build_expert


class _WatchesDeletes(LocalStore):
    """Records which step latest.json named whenever something is deleted."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.latest_at_delete: list[tuple[str, int]] = []

    def delete(self, key: str) -> None:
        self.latest_at_delete.append((key, self.get_json("m/latest.json")["step"]))
        super().delete(key)


def check_pruning(store: Store, tmp_path: Path) -> None:
    """Shared by the file:// and s3:// tests."""
    model = build_expert(ExpertModelConfig(hidden_size=16, depth=1, heads=2), {"size": 4, "channels": 1}, 8)
    ema = EMAModel(model.parameters(), model_cls=type(model), model_config=model.config)
    opt = torch.optim.AdamW(model.parameters())
    for step in (1, 2, 3, 4):
        save_checkpoint(store, "m", step, model, ema, opt, {"history": []}, keep=2)
    steps = sorted({k.split("/")[2] for k in store.keys("m/checkpoints/")})
    assert steps == ["step-000003", "step-000004"]
    got = fetch_checkpoint(store, "m", tmp_path / "restore")
    assert got is not None and got[0] == 4 and (got[1] / "optimizer.pt").is_file()


def test_only_the_newest_checkpoints_are_kept_and_deleted_after_latest_moves(tmp_path: Path) -> None:
    store = _WatchesDeletes(tmp_path / "store")
    check_pruning(store, tmp_path)
    assert store.latest_at_delete, "nothing was pruned"
    for key, latest in store.latest_at_delete:
        step = int(key.split("/")[2].removeprefix("step-"))
        assert latest >= step + 2, f"{key} deleted while latest.json named step {latest}"
