"""Image-caption sources: the built-in digits, a folder with captions.jsonl, WebDataset tars."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from paris.config import DataConfig
from paris.errors import DataError

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")


@dataclass
class Sample:
    image: Image.Image
    caption: str
    label: int = -1  # a known class (digits), -1 when the source has none


def digit_caption(label: int) -> str:
    return f"a handwritten digit {DIGIT_NAMES[label]}"


def _digits() -> list[Sample]:
    from sklearn.datasets import load_digits  # ships its data inside the package: offline

    ds = load_digits()
    out = []
    for img, label in zip(ds.images, ds.target, strict=True):
        pixels = (img * (255.0 / 16.0)).clip(0, 255).astype("uint8")
        out.append(Sample(Image.fromarray(pixels, mode="L"), digit_caption(int(label)), int(label)))
    return out


def _folder(path: Path) -> list[Sample]:
    if not path.is_dir():
        raise DataError(f"dataset folder not found: {path}")
    captions = path / "captions.jsonl"
    if not captions.is_file():
        raise DataError(f'{path} has no captions.jsonl (lines of {{"file": ..., "caption": ...}})')
    out = []
    for n, line in enumerate(captions.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            file, caption = rec["file"], rec["caption"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f'{captions}:{n}: expected {{"file": ..., "caption": ...}}') from None
        if not isinstance(file, str) or Path(file).is_absolute() or ".." in Path(file).parts:
            raise DataError(f"{captions}:{n}: file {file!r} must be a path inside {path} (no absolute paths, no '..')")
        img_path = path / file
        if not img_path.is_file():
            raise DataError(f"{captions}:{n}: image not found: {img_path}")
        try:
            with Image.open(img_path) as im:
                image = im.convert("RGB")
        except OSError as err:
            raise DataError(f"{img_path}: not a readable image ({err})") from None
        out.append(Sample(image, str(caption), int(rec.get("label", -1))))
    if not out:
        raise DataError(f"{captions} is empty: no samples to prepare")
    return out


# Members decoded on read. Anything else is ignored, except formats whose decoding runs code
# (pickle, torch.load): those make the tar refused, since it may come from anywhere.
_TEXT_EXTS = ("txt", "caption", "json")
_UNSAFE_EXTS = ("pyd", "pkl", "pickle", "pth", "pt", "ckpt", "npy", "npz", "mp", "msgpack")


def _webdataset(path: Path) -> list[Sample]:
    import webdataset as wds

    tars = sorted(path.glob("*.tar")) if path.is_dir() else [path]
    if not tars or not all(t.is_file() for t in tars):
        raise DataError(f"no WebDataset .tar shards at {path}")
    out = []
    # No .decode(): webdataset's default decoders unpickle .pyd/.pkl and torch.load .pth members.
    ds = wds.WebDataset([str(t) for t in tars], shardshuffle=False, empty_check=False)
    try:
        for rec in ds:
            where = f"{rec.get('__url__')}: {rec.get('__key__')}"
            unsafe = sorted(k for k in rec if k.rsplit(".", 1)[-1].lower() in _UNSAFE_EXTS)
            if unsafe:
                raise DataError(
                    f"{where}.{unsafe[0]}: refusing a serialized-object member (only images and text are read)"
                )
            img_key = next((k for k in _IMAGE_EXTS if k in rec), None)
            cap_key = next((k for k in _TEXT_EXTS if k in rec), None)
            if img_key is None or cap_key is None:
                raise DataError(f"{where}: sample lacks an image or a caption")
            caption = rec[cap_key].decode()
            if cap_key == "json":
                meta = json.loads(caption)
                caption = meta.get("caption", "") if isinstance(meta, dict) else ""
            with Image.open(io.BytesIO(rec[img_key])) as im:
                image = im.convert("RGB")
            out.append(Sample(image, str(caption).strip()))
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read WebDataset shards at {path}: {err}") from None
    if not out:
        raise DataError(f"WebDataset shards at {path} hold no samples")
    return out


def load_samples(cfg: DataConfig) -> list[Sample]:
    if cfg.source == "digits":
        samples = _digits()
    else:
        if not cfg.path:
            raise DataError(f"data.path is required for source {cfg.source!r}")
        path = Path(cfg.path).expanduser()
        if not path.exists():
            raise DataError(f"dataset not found: {path}")
        samples = _folder(path) if cfg.source == "folder" else _webdataset(path)
    return samples[: cfg.limit] if cfg.limit else samples
