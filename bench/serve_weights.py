"""What `paris serve` pays to load a pipeline: seconds and memory, fp32 against bf16 weights.

Each model size is saved once as a pipeline folder (untrained weights: the values do not
change the cost), then loaded in a fresh process per precision, the way the server's loader
does it (ParisPipeline.from_pretrained, then paris.router.runner.serving_dtype), until every
weight has been read once. The folder is in the page cache (it was just written), so this is
the load without the download from the store. Variants are interleaved over rounds and the
median is reported.

    python bench/serve_weights.py [--rounds 3] [--sizes digits,B]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SIZES = {
    # name: (experts, expert preset, router preset, latent side, latent channels)
    "digits": (4, "tiny", "tiny", 8, 1),  # examples/digits.yaml
    "S": (4, "S", "S", 32, 4),  # DiT-S/2 experts on 256px images through a VAE
    "B": (2, "B", "B", 32, 4),  # the paper's DiT-B/2 experts, two of them
}


def _status_mib(field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak resident) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build(name: str, folder: Path) -> None:
    from paris.config import ExpertModelConfig, RouterModelConfig
    from paris.router.assemble import random_pipeline

    k, ep, rp, side, ch = SIZES[name]
    pipe = random_pipeline(k, ExpertModelConfig(preset=ep), RouterModelConfig(preset=rp, condition_on_text=True),
                           {"size": side, "channels": ch})
    pipe.save_pretrained(folder)


def measure(folder: Path, precision: str) -> dict[str, Any]:
    """In a fresh process: import, then time the load as the server does it."""
    import torch

    from paris.router.pipeline import ParisPipeline
    from paris.router.runner import parameter_bytes, serving_dtype

    torch.set_num_threads(1)
    before = _status_mib("VmRSS")
    t0 = time.perf_counter()
    pipe = ParisPipeline.from_pretrained(folder).to("cpu")
    dtype = serving_dtype(pipe, precision)
    for p in pipe.components.values():  # read every weight once, as the first request does
        if isinstance(p, torch.nn.Module):
            sum(float(t.float().sum()) for t in p.parameters())
    seconds = time.perf_counter() - t0
    return {"load_s": seconds, "weights_mib": parameter_bytes(pipe) / 2**20,
            "resident_mib": _status_mib("VmRSS") - before, "peak_mib": _status_mib("VmHWM") - before,
            "dtype": str(dtype or torch.float32)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", default="digits,S,B")
    ap.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), args.measure[1])))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sizes.split(","):
            folder = Path(tmp) / name
            build(name, folder)
            disk = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20
            runs: dict[str, list[dict[str, Any]]] = {"no": [], "bf16": []}
            for _ in range(args.rounds):
                for precision in runs:
                    out = subprocess.run([sys.executable, __file__, "--measure", str(folder), precision],
                                         capture_output=True, text=True, check=True)
                    runs[precision].append(json.loads(out.stdout.strip().splitlines()[-1]))
            for precision, rs in runs.items():
                rows.append({
                    "size": name, "precision": "fp32" if precision == "no" else "bf16", "disk_mib": round(disk, 1),
                    "load_s": round(statistics.median(r["load_s"] for r in rs), 2),
                    "weights_mib": round(rs[0]["weights_mib"], 1),
                    "resident_mib": round(statistics.median(r["resident_mib"] for r in rs), 1),
                    "peak_mib": round(statistics.median(r["peak_mib"] for r in rs), 1),
                })
    print("| model | precision | on disk (MiB) | load (s) | weights (MiB) | resident after load (MiB) | peak (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['precision']} | {r['disk_mib']} | {r['load_s']} | {r['weights_mib']} | "
              f"{r['resident_mib']} | {r['peak_mib']} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
