"""Does memory stay flat as the data grows? Peak RSS and throughput, side by side in one run:

* `paris data prepare` on N and factor*N synthetic RGB images in folder form;
* an expert training from a cluster of one part file and from a cluster of many.

Each measurement runs in its own process (peak RSS is that process's ru_maxrss), one after
the other, so they compete for the machine alike. The result is the ratios; the goal is
peak RSS at factor*N <= 1.3x that at N, and an expert's peak RSS bounded by its window.

    python bench/prepare_scale.py [--n 1500] [--factor 8] [--size 32] [--parts 50] [--out result.json]
    python bench/prepare_scale.py --quick      # a small run (the test suite runs this)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

COLORS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}


def make_folder(root: Path, n: int, size: int) -> Path:
    """n RGB images (a coloured square on noise) with captions, as a `folder` source."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    names = list(COLORS)
    with (root / "captions.jsonl").open("w") as captions:
        for i in range(n):
            color = names[i % len(names)]
            img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            x, y, s = (int(v) for v in rng.integers(0, size // 2, 3))
            img[y : y + s + 4, x : x + s + 4] = COLORS[color]
            Image.fromarray(img).save(root / f"{i:06d}.png")
            captions.write(json.dumps({"file": f"{i:06d}.png", "caption": f"a {color} square at {x},{y}"}) + "\n")
    return root


def config(store: Path, data: dict[str, Any], **over: Any) -> dict[str, Any]:
    return {
        "model": "bench",
        "storage": {"uri": f"file://{store}"},
        "data": {"name": "bench", "clusters": 4, "fine_clusters": 32, "text_encoder": {"max_length": 16}, **data},
        "expert": {"preset": "tiny", "hidden_size": 32, "depth": 1, "heads": 2, "patch_size": 4},
        **over,
    }


def make_cluster(store: Path, parts: int, per_part: int, size: int) -> None:
    """A prepared dataset whose cluster 0 has `parts` part files (random latents and token
    states of the sizes prepare writes for size x size RGB and MiniLM), through PartWriter."""
    import torch
    from safetensors.torch import save as st_save

    from paris.data.shards import FORMAT, PartWriter
    from paris.storage import LocalStore

    st = LocalStore(store)
    writer = PartWriter(st, "datasets/bench", index=0, shard_size=per_part)
    g = torch.Generator().manual_seed(0)
    for _ in range(parts):
        rows = {
            "latents": torch.rand(per_part, 3, size, size, generator=g) * 2 - 1,
            "text_states": torch.randn(per_part, 16, 384, generator=g).half(),
            "text_mask": torch.ones(per_part, 16, dtype=torch.bool),
            "labels": torch.full((per_part,), -1),
            "clusters": torch.zeros(per_part, dtype=torch.long),
        }
        writer.add(0, rows, ["a caption"] * per_part, [f"k{i}" for i in range(per_part)])
    infos = writer.close()
    null = {"text_states": torch.zeros(16, 384).half(), "text_mask": torch.ones(16, dtype=torch.bool)}
    st.put_bytes("datasets/bench/null_text.safetensors", st_save(null))
    shards = [{k: i[k] for k in ("key", "samples", "sha256")} for i in infos]
    st.put_json(
        "datasets/bench/manifest.json",
        {
            "format": FORMAT,
            "name": "bench",
            "num_clusters": 1,
            "num_samples": parts * per_part,
            "latent": {"space": "pixels", "channels": 3, "size": size, "scaling_factor": 1.0, "shift_factor": 0.0},
            "text": {"kind": "minilm", "dim": 384, "max_length": 16},
            "clusters": [{"id": 0, "size": parts * per_part, "shards": shards}],
            "holdout": {"size": 0, "shards": []},
        },
    )


# ---- what each child process runs ------------------------------------------------------


def child(kind: str, cfg_path: str) -> None:
    from paris.config import load_config
    from paris.storage import open_store

    cfg = load_config(cfg_path)
    store = open_store(cfg.storage)
    t0 = time.perf_counter()
    if kind == "prepare":
        from paris.data.prepare import prepare_dataset

        manifest = prepare_dataset(cfg.data, store)
        work = float(manifest["num_samples"])
    else:
        from paris.trainer.expert import train_expert

        result = train_expert(cfg, 0, store)
        work = float(result.step * cfg.train.batch_size)
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"seconds": seconds, "work": work, "peak_rss_mib": rss}))


def measure(kind: str, cfg: dict[str, Any], path: Path) -> dict[str, float]:
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, __file__, "--child", kind, str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{r.stderr[-3000:]}")
    out: dict[str, float] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--factor", type=int, default=8)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--parts", type=int, default=50, help="part files in the big cluster")
    ap.add_argument("--per-part", type=int, default=500, help="samples per part file")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="small sizes: checks that the bench runs")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", nargs=2, metavar=("KIND", "CONFIG"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.quick:
        args.n, args.factor, args.parts, args.per_part, args.steps = 40, 2, 5, 20, 12

    result: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if k not in ("child", "out")}}
    with tempfile.TemporaryDirectory(prefix="paris-bench-") as tmp:
        root = Path(tmp)
        prep = {}
        for n in (args.n, args.n * args.factor):
            folder = make_folder(root / f"imgs-{n}", n, args.size)
            data = {"source": "folder", "path": str(folder), "image_size": args.size, "part_size": 500}
            m = measure("prepare", config(root / f"store-{n}", data), root / f"prepare-{n}.yaml")
            prep[n] = m | {"images_per_s": m["work"] / m["seconds"]}
        small, big = prep[args.n], prep[args.n * args.factor]
        result["prepare"] = {str(n): v for n, v in prep.items()}
        result["prepare_rss_ratio"] = big["peak_rss_mib"] / small["peak_rss_mib"]

        train = {}
        for parts in (1, args.parts):
            store = root / f"train-{parts}"
            make_cluster(store, parts, args.per_part, args.size)
            tr = {"steps": args.steps, "batch_size": 64, "window": 4, "checkpoint_every": args.steps,
                  "log_every": 10, "threads": 1}
            m = measure("train", config(store, {"image_size": args.size}, train=tr), root / f"train-{parts}.yaml")
            part_mib = args.per_part * (3 * args.size**2 * 4 + 16 * 384 * 2 + 16 + 16) / 2**20
            train[parts] = m | {"samples_per_s": m["work"] / m["seconds"], "cluster_mib": parts * part_mib}
        result["train"] = {str(p): v for p, v in train.items()}
        result["train_rss_ratio"] = train[args.parts]["peak_rss_mib"] / train[1]["peak_rss_mib"]

    print(f"paris data prepare, {args.size}x{args.size} RGB images in a folder (one process each)")
    print(f"{'images':>8} {'peak RSS MiB':>13} {'images/s':>9}")
    for n, v in prep.items():
        print(f"{n:>8} {v['peak_rss_mib']:>13.0f} {v['images_per_s']:>9.1f}")
    print(f"peak RSS ratio {args.factor}N / N: {result['prepare_rss_ratio']:.2f} (goal <= 1.3)")
    print(f"\nexpert training, window of 4 parts of {args.per_part} samples, {args.steps} steps")
    print(f"{'parts':>8} {'cluster MiB':>12} {'peak RSS MiB':>13} {'samples/s':>10}")
    for p, v in train.items():
        print(f"{p:>8} {v['cluster_mib']:>12.0f} {v['peak_rss_mib']:>13.0f} {v['samples_per_s']:>10.1f}")
    print(f"peak RSS ratio {args.parts} parts / 1 part: {result['train_rss_ratio']:.2f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
