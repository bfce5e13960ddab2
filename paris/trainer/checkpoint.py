"""Checkpoints in the store: written file by file, published by rewriting `latest.json` last.

<prefix>/checkpoints/step-000500/model/   live weights (ModelMixin.save_pretrained)
<prefix>/checkpoints/step-000500/ema/     EMA weights as a plain model folder, + ema_state.json
<prefix>/checkpoints/step-000500/optimizer.pt, state.json
<prefix>/checkpoints/step-000500/checkpoint.json   written after its files: the folder is complete
<prefix>/latest.json                       {"step": 500, "prefix": ".../step-000500", "files": {...}}

Files go through local disk and stream to and from the store (multipart on S3), so a 10 GB
checkpoint never sits in RAM as bytes; only the last `train.keep_checkpoints` are kept.

`latest.json` and each folder's `checkpoint.json` carry the sha256 and size of every file and
the fingerprint of what trained it (paris.fingerprint). A resume verifies the files it
downloads and falls back to the previous complete checkpoint when they do not match; a folder
without `checkpoint.json` is what a crash mid-upload left, and is deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from diffusers.training_utils import EMAModel

from paris.errors import StorageError
from paris.progress import console
from paris.storage import Store

_STEP = re.compile(r"^step-(\d+)/")


def step_dir(prefix: str, step: int) -> str:
    return f"{prefix}/checkpoints/step-{step:06d}"


COMPLETE = "checkpoint.json"  # written into a checkpoint folder after every other file of it


def file_sums(local: Path) -> dict[str, dict[str, Any]]:
    """relative path -> {sha256, size} of every file under `local` (read in chunks)."""
    out: dict[str, dict[str, Any]] = {}
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        out[f.relative_to(local).as_posix()] = {"sha256": h.hexdigest(), "size": f.stat().st_size}
    return out


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
    """Write the checkpoint's files to local disk, stream them to the store, mark the folder
    complete, publish it by rewriting latest.json, and only then delete all but the newest
    `keep` checkpoints. `state["fingerprint"]`, when given, is recorded in both records."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        model.save_pretrained(d / "model")
        save_ema(ema, model, d / "ema")
        torch.save(optimizer.state_dict(), d / "optimizer.pt")
        (d / "state.json").write_text(json.dumps({**state, "step": step}))
        target = step_dir(prefix, step)
        record = {"step": step, "files": file_sums(d), "fingerprint": state.get("fingerprint")}
        store.upload_dir(d, target)
        store.put_json(f"{target}/{COMPLETE}", record)
        store.put_json(f"{prefix}/latest.json", {**record, "prefix": target})
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
    steps = [s for s in _steps(store, prefix) if store.exists(f"{step_dir(prefix, s)}/{COMPLETE}")]
    doomed = [s for s in steps[: max(0, len(steps) - keep)] if step_dir(prefix, s) != pointer["prefix"]]
    for s in doomed:
        store.delete_prefix(step_dir(prefix, s))
    return doomed



def _records(store: Store, prefix: str) -> Iterator[dict[str, Any]]:
    """Every checkpoint that may be resumed, best first: the one latest.json names, then the
    complete folders (with checkpoint.json) from the newest. A record lacking `files` is one
    written before checksums existed: trusted as it is. Lazy: a caller content with the first
    good one reads no other folder's record."""
    try:
        pointer = store.get_json_or_none(f"{prefix}/latest.json")
    except StorageError as err:  # a torn or hand-edited pointer: the folders still say what is complete
        console.print(f"warning: {err}; looking for the newest complete checkpoint instead")
        pointer = None
    if isinstance(pointer, dict) and "prefix" in pointer:
        yield pointer
    for step in reversed(_steps(store, prefix)):
        target = step_dir(prefix, step)
        if pointer is not None and target == pointer.get("prefix"):
            continue
        if store.exists(f"{target}/{COMPLETE}"):
            try:
                record = store.get_json(f"{target}/{COMPLETE}")
            except StorageError:
                continue
            yield {**record, "prefix": target}


def _steps(store: Store, prefix: str) -> list[int]:
    base = f"{prefix}/checkpoints/"
    return sorted({int(m.group(1)) for k in store.keys(base) if (m := _STEP.match(k[len(base) :]))})


def _verify(local: Path, files: dict[str, dict[str, Any]] | None, under: str = "") -> str | None:
    """Why the downloaded files do not match their record (None: they do)."""
    if files is None:
        return None
    have = file_sums(local)
    for rel, want in files.items():
        if under and not rel.startswith(under):
            continue
        got = have.get(rel[len(under) :] if under else rel)
        if got is None:
            return f"{rel} is missing"
        if got != want:
            return f"{rel} does not match its checksum"
    return None


def _first_good(
    store: Store, prefix: str, local: Path, fetch: Callable[[dict[str, Any], Path], Path], under: str = ""
) -> tuple[dict[str, Any], Path] | None:
    """The best checkpoint whose files are all there and match their checksums, downloaded."""
    for n, record in enumerate(_records(store, prefix)):
        dest = local / f"try-{n}"
        try:
            got = fetch(record, dest)
        except StorageError as err:  # files gone (pruned meanwhile, or never uploaded)
            problem: str | None = str(err)
        else:
            problem = _verify(got, record.get("files"), under)
            if problem is None:
                return record, got
        console.print(
            f"warning: the checkpoint at {store.uri(record['prefix'])} is damaged ({problem}); "
            "falling back to the previous complete checkpoint"
        )
    return None


def clean_incomplete(store: Store, prefix: str) -> list[int]:
    """Delete the checkpoint folders a crash left half-uploaded (no checkpoint.json). Only a
    trainer about to resume calls this: no other writer of the prefix runs then."""
    pointer = store.get_json_or_none(f"{prefix}/latest.json")
    named = pointer.get("prefix") if isinstance(pointer, dict) else None
    doomed = [s for s in _steps(store, prefix) if step_dir(prefix, s) != named]
    doomed = [s for s in doomed if not store.exists(f"{step_dir(prefix, s)}/{COMPLETE}")]
    for s in doomed:
        store.delete_prefix(step_dir(prefix, s))
    return doomed


def fetch_checkpoint(store: Store, prefix: str, local: Path) -> tuple[int, Path] | None:
    """Download the newest complete checkpoint whose files verify; None when there is none.
    Half-uploaded folders are deleted on the way."""
    with contextlib.suppress(StorageError):  # a read-only or flaky store: resuming matters more
        clean_incomplete(store, prefix)
    got = _first_good(store, prefix, local, lambda r, d: store.download_dir(r["prefix"], d))
    return None if got is None else (int(got[0]["step"]), got[1])


def checkpoint_fingerprint(store: Store, prefix: str) -> dict[str, Any] | None:
    """The fingerprint record of the checkpoints in `prefix` (None: none, or from before
    fingerprints). Every checkpoint of one prefix has the same: a mismatch is never resumed."""
    for record in _records(store, prefix):
        if record.get("fingerprint"):
            return dict(record["fingerprint"])
    return None


def fetch_weights(store: Store, prefix: str, local: Path, which: str = "ema") -> Path:
    """Only the model (or EMA) folder of the last good checkpoint: what sampling needs."""
    got = _first_good(
        store, prefix, local, lambda r, d: store.download_dir(f"{r['prefix']}/{which}", d / which), f"{which}/"
    )
    if got is None:
        raise StorageError(f"no finished checkpoint at {store.uri(prefix)}: train it first")
    return got[1]
