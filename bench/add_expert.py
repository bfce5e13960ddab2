"""Adding an expert to a trained ensemble: what the router's update costs against one expert's
training, and what it does to the judge's scores. Everything in one run, on this machine.

1. Prepare the digits without the nines (`data.labels` 0-8, K=4), train the 4 experts and the
   router, publish the pipeline.
2. Score it: the judge's accuracy per prompted digit (top2 routing), with two sampling seeds
   (their difference is the noise of the score).
3. `paris data add` the nines: cluster 4. Train its expert alone (timed).
4. Grow the router by one class from the trained one and fine-tune it for --grow-steps (timed),
   publish the pipeline over the 5 experts.
5. Score again. Check that the old experts' files are byte for byte what they were.

Reported: the router update's cost over one expert's training (loop seconds, and whole calls
with data loading and the router's held-out evaluation), the nines' accuracy before and after,
the other digits' accuracy before and after.

    python bench/add_expert.py [--expert-steps 800] [--router-steps 500] [--grow-steps 40]
                               [--json out.json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from paris.config import DataConfig, RunConfig, parse_config
from paris.data.add import add_cluster
from paris.data.prepare import prepare_dataset
from paris.data.shards import load_manifest, load_split
from paris.evaluate import Judge, digit_prompts
from paris.layout import expert_prefix, router_prefix
from paris.router.assemble import load_pipeline, publish_ensemble
from paris.router.generate import sample_prompts
from paris.router.train import train_router
from paris.storage import LocalStore
from paris.trainer.expert import train_expert

REPO = Path(__file__).resolve().parents[1]


def config(root: Path, expert_steps: int, router_steps: int, grow_steps: int) -> RunConfig:
    import yaml

    raw = yaml.safe_load((REPO / "examples" / "digits.yaml").read_text())
    raw["model"] = "digits-add"
    raw["storage"] = {"uri": f"file://{root}"}
    raw["data"].update(name="digits-no-nines", labels=list(range(9)))
    raw["train"].update(steps=expert_steps, checkpoint_every=expert_steps, threads=2)
    raw["router"]["train"].update(steps=router_steps, checkpoint_every=router_steps, threads=2)
    raw["router"]["grow_steps"] = grow_steps
    raw["sample"].update(per_prompt=16, routing=["top2"])
    return parse_config(raw)


def digests(root: Path) -> dict[str, str]:
    files = (p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def scores(cfg: RunConfig, store: LocalStore, judge: Judge, seed: int) -> dict[int, float]:
    """The judge's accuracy on the images sampled for each digit's prompt."""
    with tempfile.TemporaryDirectory() as tmp:
        pipe = load_pipeline(store, cfg.model, Path(tmp))
    pipe.set_progress_bar_config(disable=True)
    prompts = digit_prompts()
    sample = cfg.sample.model_copy(update={"seed": seed})
    images = sample_prompts(pipe, [p for p, _ in prompts], "top2", sample).images
    n = sample.per_prompt
    return {d: judge.score(images[i * n : (i + 1) * n], np.full(n, d))["accuracy"] for i, (_, d) in enumerate(prompts)}


def old_mean(acc: dict[int, float]) -> float:
    return float(np.mean([acc[d] for d in range(9)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--expert-steps", type=int, default=800)
    ap.add_argument("--router-steps", type=int, default=500)
    ap.add_argument("--grow-steps", type=int, default=40)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", type=Path, help="leave the store here for inspection (default: a temporary folder)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    out: dict[str, Any] = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        cfg = config(root, args.expert_steps, args.router_steps, args.grow_steps)
        store = LocalStore(root)
        t = time.perf_counter()
        prepare_dataset(cfg.data, store)
        k = load_manifest(store, cfg.data.name)["num_clusters"]
        for i in range(k):
            train_expert(cfg, i, store)
        train_router(cfg, store)
        publish_ensemble(cfg, store)
        out["ensemble_seconds"] = round(time.perf_counter() - t, 1)

        # The judge sees every digit, the nines included: fit on a full held-out set of digits.
        everything = DataConfig.model_validate({**cfg.data.model_dump(), "name": "judge-digits", "labels": None})
        prepare_dataset(everything, store)
        judge_manifest = load_manifest(store, "judge-digits")
        judge = Judge.fit(load_split(store, judge_manifest, "holdout"), 0)
        out["judge_cv_accuracy"] = round(judge.cv_accuracy, 3)
        before = [scores(cfg, store, judge, seed) for seed in (0, 1)]
        old_files = {i: digests(root / expert_prefix(cfg.model, i)) for i in range(k)}

        nines = DataConfig.model_validate({**cfg.data.model_dump(), "labels": [9]})
        add_cluster(cfg.data, nines, store)
        t = time.perf_counter()
        expert = train_expert(cfg, k, store)
        expert_call = time.perf_counter() - t
        grown = f"{router_prefix(cfg.model)}/grown"
        experts = {i: expert_prefix(cfg.model, i) for i in range(k + 1)}
        t = time.perf_counter()
        router, _ = train_router(cfg, store, experts, grown, grow_from=router_prefix(cfg.model))
        router_call = time.perf_counter() - t
        publish_ensemble(cfg, store, experts, grown)
        after = [scores(cfg, store, judge, seed) for seed in (0, 1)]
        untouched = all(digests(root / expert_prefix(cfg.model, i)) == old_files[i] for i in range(k))

    out |= {
        "expert_train_seconds": round(expert.seconds, 1),
        "router_update_seconds": round(router.seconds, 1),
        "ratio_loops": round(router.seconds / expert.seconds, 4),
        "expert_call_seconds": round(expert_call, 1),
        "router_call_seconds": round(router_call, 1),
        "ratio_calls": round(router_call / expert_call, 4),
        "nine_accuracy_before": [round(b[9], 3) for b in before],
        "nine_accuracy_after": [round(a[9], 3) for a in after],
        "old_digits_accuracy_before": [round(old_mean(b), 3) for b in before],
        "old_digits_accuracy_after": [round(old_mean(a), 3) for a in after],
        "noise_old_digits": round(abs(old_mean(before[0]) - old_mean(before[1])), 3),
        "per_digit_before": before[0],
        "per_digit_after": after[0],
        "old_experts_byte_identical": untouched,
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
