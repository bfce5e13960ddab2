"""bench/emoji.py: the npm package's layout -> a folder paris's `folder` source reads, with
transparent pixels on white and the category as the label (checked on a package-shaped
tarball, so the test needs neither npm nor the network)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

from PIL import Image

from bench.emoji import CATEGORIES, PACKAGE, VERSION, build


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(f"package/{name}")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_emoji_become_captioned_white_backed_images_labelled_by_category(tmp_path: Path) -> None:
    entries: list[dict[str, Any]] = [
        {"name": "GRINNING FACE", "short_name": "grinning", "image": "1f600.png", "unified": "1F600",
         "category": "Smileys & Emotion", "has_img_google": True, "sort_order": 1},
        {"name": None, "short_name": "flag_fr", "image": "1f1eb.png", "unified": "1F1EB",
         "category": "Flags", "has_img_google": True, "sort_order": 2},
        {"name": "LIGHT SKIN TONE", "short_name": "skin-tone-2", "image": "1f3fb.png", "unified": "1F3FB",
         "category": "Component", "has_img_google": True, "sort_order": 3},
    ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        _add(tar, "emoji.json", json.dumps(entries).encode())
        for e in entries:
            im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # transparent but for a red square
            im.paste((255, 0, 0, 255), (16, 16, 48, 48))
            png = io.BytesIO()
            im.save(png, format="PNG")
            _add(tar, f"img/google/64/{e['image']}", png.getvalue())
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / f"{PACKAGE}-{VERSION}.tgz").write_bytes(buf.getvalue())

    assert build(tmp_path / "out", 16, tmp_path / "cache") == 2  # no Component
    lines = [json.loads(x) for x in (tmp_path / "out" / "captions.jsonl").read_text().splitlines()]
    assert [(x["caption"], x["label"]) for x in lines] == [
        ("grinning face", CATEGORIES.index("Smileys & Emotion")), ("flag fr", CATEGORIES.index("Flags"))]
    im = Image.open(tmp_path / "out" / lines[0]["file"])
    assert im.size == (16, 16) and im.mode == "RGB"
    assert im.getpixel((0, 0)) == (255, 255, 255) and im.getpixel((8, 8)) == (255, 0, 0)
