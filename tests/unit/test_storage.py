"""Local store semantics and checkpoint atomicity (the S3 backend runs the same checks in
tests/integration against a real MinIO)."""

from __future__ import annotations

from pathlib import Path

import pytest

from paris.config import StorageConfig
from paris.errors import StorageError
from paris.storage import LocalStore, Store, open_store


def check_store_contract(store: Store, tmp_path: Path) -> None:
    """Shared by the file:// and s3:// tests: one contract, two backends."""
    store.put_bytes("a/b/c.bin", b"123")
    store.put_json("a/x.json", {"k": 1})
    assert store.get_bytes("a/b/c.bin") == b"123"
    assert store.get_json("a/x.json") == {"k": 1}
    assert store.exists("a/b/c.bin") and not store.exists("a/b/nope")
    assert store.keys("a/") == ["a/b/c.bin", "a/x.json"]
    assert store.get_json_or_none("missing.json") is None
    with pytest.raises(StorageError, match="not found"):
        store.get_bytes("missing.bin")

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "one.txt").write_text("1")
    (src / "sub" / "two.txt").write_text("2")
    store.publish(src, "ckpt/step-1", "ckpt/latest.json", {"step": 1})
    assert store.get_json("ckpt/latest.json") == {"step": 1, "prefix": "ckpt/step-1"}
    out = store.download_dir("ckpt/step-1", tmp_path / "dst")
    assert (out / "sub" / "two.txt").read_text() == "2"


class FailingStore(LocalStore):
    """Dies after `budget` writes, like a pod killed in the middle of an upload."""

    def __init__(self, root: Path, budget: int) -> None:
        super().__init__(root)
        self.budget = budget

    def _spend(self) -> None:
        if self.budget == 0:
            raise OSError("killed mid-upload")
        self.budget -= 1

    def put_bytes(self, key: str, data: bytes) -> None:
        self._spend()
        super().put_bytes(key, data)

    def put_file(self, key: str, path: Path) -> None:
        self._spend()
        super().put_file(key, path)


def test_local_store_contract(tmp_path: Path) -> None:
    check_store_contract(LocalStore(tmp_path / "store"), tmp_path)


def test_a_crash_mid_publish_leaves_the_previous_checkpoint_visible(tmp_path: Path) -> None:
    root = tmp_path / "store"
    ok = LocalStore(root)
    first = tmp_path / "c1"
    first.mkdir()
    (first / "w.bin").write_bytes(b"old")
    ok.publish(first, "m/step-1", "m/latest.json", {"step": 1})

    second = tmp_path / "c2"
    second.mkdir()
    for i in range(3):
        (second / f"w{i}.bin").write_bytes(b"new")
    with pytest.raises(OSError, match="killed"):
        FailingStore(root, budget=2).publish(second, "m/step-2", "m/latest.json", {"step": 2})
    # Two of three files of step 2 were uploaded, but nothing points at them.
    assert ok.get_json("m/latest.json")["step"] == 1
    assert len(ok.keys("m/step-2")) == 2


def test_local_writes_never_leave_temporary_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for i in range(5):
        store.put_bytes("k", str(i).encode())
    assert [p.name for p in tmp_path.iterdir()] == ["k"]


def test_keys_cannot_escape_the_store(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="escapes"):
        LocalStore(tmp_path / "s").put_bytes("../outside", b"x")


def test_open_store_errors_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PARIS_S3_ENDPOINT", raising=False)
    with pytest.raises(StorageError, match="endpoint"):
        open_store(StorageConfig(uri="s3://bucket/x"))
    monkeypatch.setenv("PARIS_S3_ENDPOINT", "127.0.0.1:1")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    with pytest.raises(StorageError, match="AWS_ACCESS_KEY_ID"):
        open_store(StorageConfig(uri="s3://bucket/x"))
