"""Checkpoints: only the newest `keep` remain, and none is deleted before latest.json points
past it (the S3 backend runs the same check in tests/integration); every file's checksum is
recorded, a resume verifies them and falls back to the previous complete checkpoint, and a
folder a crash left half-uploaded is never resumed and is cleaned up."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.training_utils import EMAModel

from paris.config import ExpertModelConfig
from paris.storage import LocalStore, Store
from paris.trainer.checkpoint import (
    checkpoint_fingerprint,
    clean_incomplete,
    fetch_checkpoint,
    fetch_weights,
    save_checkpoint,
)
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


def _saved(store: Store, steps: tuple[int, ...], fingerprint: dict | None = None) -> None:
    model = build_expert(ExpertModelConfig(hidden_size=16, depth=1, heads=2), {"size": 4, "channels": 1}, 8)
    ema = EMAModel(model.parameters(), model_cls=type(model), model_config=model.config)
    opt = torch.optim.AdamW(model.parameters())
    for step in steps:
        save_checkpoint(store, "m", step, model, ema, opt, {"history": [], "fingerprint": fingerprint}, keep=3)


def test_latest_json_carries_the_checksum_of_every_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    _saved(store, (1,), {"digest": "abc", "fields": {}})
    latest = store.get_json("m/latest.json")
    root = tmp_path / "s" / latest["prefix"]
    on_disk = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert sorted(latest["files"]) == sorted(f for f in on_disk if f != "checkpoint.json")
    assert latest["files"]["optimizer.pt"]["size"] == (root / "optimizer.pt").stat().st_size
    assert latest["fingerprint"] == {"digest": "abc", "fields": {}}
    assert store.get_json(f"{latest['prefix']}/checkpoint.json")["files"] == latest["files"]


def test_a_damaged_checkpoint_falls_back_to_the_previous_complete_one(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    _saved(store, (1, 2))
    weights = tmp_path / "s/m/checkpoints/step-000002/model/diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7] + b"garbage")  # a torn or bit-rotted file
    got = fetch_checkpoint(store, "m", tmp_path / "r")
    assert got is not None and got[0] == 1
    # A missing file is damage too, and a pointer that does not parse is no pointer.
    (tmp_path / "s/m/checkpoints/step-000001/state.json").unlink()
    (tmp_path / "s/m/latest.json").write_text("{torn")
    _saved(store, (3,))
    (tmp_path / "s/m/latest.json").write_text("{torn")
    got = fetch_checkpoint(store, "m", tmp_path / "r2")
    assert got is not None and got[0] == 3
    assert fetch_weights(store, "m", tmp_path / "w").name == "ema"


def test_a_folder_a_crash_left_half_uploaded_is_never_resumed_and_is_cleaned_up(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    _saved(store, (1,))
    store.put_bytes("m/checkpoints/step-000002/model/config.json", b"{}")  # the upload died here
    assert clean_incomplete(store, "m") == [2]
    assert store.keys("m/checkpoints/step-000002") == []
    store.put_bytes("m/checkpoints/step-000003/optimizer.pt", b"x")
    got = fetch_checkpoint(store, "m", tmp_path / "r")
    assert got is not None and got[0] == 1 and store.keys("m/checkpoints/step-000003") == []
    assert checkpoint_fingerprint(store, "m") is None, "no fingerprint recorded: resumed as before"
