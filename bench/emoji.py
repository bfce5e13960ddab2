"""The Noto emoji as a captioned image folder: the harder real text-to-image set of the study.

    python -m bench.emoji --out runs/emoji16 [--size 16] [--cache ~/.cache/paris/emoji]

Fetches the npm package emoji-datasource-google (pinned) with the ordinary npm client
(`npm pack`), once, into a cache outside the clone; then writes `captions.jsonl` and one PNG
per emoji: the 64 px RGBA image composited on white and downsized (area filter). Captions are
the emoji's name ("tropical fish", "romania flag"); `label` is the index of its category in
CATEGORIES, for the study's judge only: clustering still comes from the images.

Skin-tone variants are left out (they would double "People & Body" with near-duplicates), as
is the 5-image "Component" category (skin-tone swatches and hair pieces, not emoji of their own).
paris itself never depends on npm: it reads the folder through its `folder` source.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import tarfile
from pathlib import Path

from PIL import Image

PACKAGE = "emoji-datasource-google"
VERSION = "16.0.0"
CATEGORIES = [
    "Smileys & Emotion",
    "People & Body",
    "Animals & Nature",
    "Food & Drink",
    "Travel & Places",
    "Activities",
    "Objects",
    "Symbols",
    "Flags",
]
DEFAULT_CACHE = Path.home() / ".cache" / "paris" / "emoji"


def fetch(cache: Path) -> Path:
    """The package tarball, from the cache or `npm pack` (the registry's own client)."""
    cache.mkdir(parents=True, exist_ok=True)
    tgz = cache / f"{PACKAGE}-{VERSION}.tgz"
    if not tgz.exists():
        subprocess.run(["npm", "pack", f"{PACKAGE}@{VERSION}", "--silent"], cwd=cache, check=True)
    return tgz


def caption(entry: dict[str, object]) -> str:
    name = entry.get("name") or str(entry["short_name"]).replace("_", " ")
    return " ".join(str(name).lower().split())


def build(out: Path, size: int, cache: Path = DEFAULT_CACHE, limit: int | None = None) -> int:
    """Write the folder; returns the number of images."""
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    # One pass over the gzip stream: random access to members would re-read it from the start.
    with tarfile.open(fetch(cache), "r:gz") as tar:
        files = {
            m.name.removeprefix("package/"): f.read()
            for m in tar
            if m.name == "package/emoji.json" or m.name.startswith("package/img/google/64/")
            if (f := tar.extractfile(m)) is not None
        }
    entries = [e for e in json.loads(files["emoji.json"]) if e["category"] in CATEGORIES and e["has_img_google"]]
    entries.sort(key=lambda e: e["sort_order"])
    (out / "images").mkdir(exist_ok=True)
    for e in entries[:limit]:
        rgba = Image.open(io.BytesIO(files[f"img/google/64/{e['image']}"])).convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(white, rgba).convert("RGB").resize((size, size), Image.Resampling.BOX)
        file = f"images/{e['unified'].lower()}.png"
        rgb.save(out / file)
        lines.append({"file": file, "caption": caption(e), "label": CATEGORIES.index(e["category"])})
    (out / "captions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return len(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder to write (captions.jsonl + images/)")
    ap.add_argument("--size", type=int, default=16, help="pixels per side")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the npm tarball is kept")
    ap.add_argument("--limit", type=int, default=None, help="only the first N emoji (tests)")
    args = ap.parse_args()
    n = build(args.out, args.size, args.cache, args.limit)
    print(f"wrote {n} emoji ({args.size}x{args.size}) and captions.jsonl to {args.out}")


if __name__ == "__main__":
    main()
