"""Sampling a grid of prompts for one routing mode, and scoring every mode (shared by
`paris generate`, `paris eval` and `paris run`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from paris.config import RunConfig, SampleConfig
from paris.data.encoders import tensor_to_images
from paris.data.shards import ShardSet, load_manifest, load_split, read_captions, split_shards
from paris.errors import DataError
from paris.evaluate import MIN_HOLDOUT, Judge, judgeable, labelled_prompts
from paris.layout import dataset_prefix, router_prefix, samples_prefix
from paris.plots import grid, png_bytes
from paris.progress import console
from paris.storage import Store

from .pipeline import ParisPipeline


@dataclass
class Samples:
    images: torch.Tensor  # [N, C, H, W] in [-1, 1], prompt-major
    usage: list[float]
    expert_calls: list[int]


def sample_prompts(
    pipe: ParisPipeline, prompts: list[str], routing: str, cfg: SampleConfig, per_prompt: int | None = None
) -> Samples:
    g = torch.Generator().manual_seed(cfg.seed)
    out = pipe(
        prompts,
        num_inference_steps=cfg.steps,
        guidance_scale=cfg.guidance,
        routing=routing,
        num_images_per_prompt=per_prompt or cfg.per_prompt,
        generator=g,
        output_type="pt",
        shift=cfg.shift,
        guidance_routing=cfg.guidance_routing,
    )
    assert isinstance(out.images, torch.Tensor)
    return Samples(out.images.cpu(), out.usage, out.expert_calls)


DEFAULT_PROMPTS = 8
PROMPT_PARTS = 16  # part files whose captions default_prompts reads, at most


def default_prompts(store: Store, manifest: dict[str, Any], seed: int, n: int = DEFAULT_PROMPTS) -> list[str]:
    """Distinct captions of held-out images (or, with no held-out split, of cluster 0): what
    the data is about, so a dataset without `sample.prompts` still gets meaningful grids.

    Bounded at any dataset size: only the caption headers of at most PROMPT_PARTS parts
    (drawn by the seed) are read, one at a time, and only the n distinct captions with the
    smallest hash of (seed, caption) are kept, which is a uniform draw of n distinct captions
    of those parts that does not depend on the order they are read in."""
    split: int | str = "holdout" if manifest["holdout"]["size"] else 0
    infos = split_shards(manifest, split)
    if len(infos) > PROMPT_PARTS:
        chosen = np.random.default_rng(seed).choice(len(infos), PROMPT_PARTS, replace=False)
        infos = [infos[i] for i in sorted(chosen)]
    root = dataset_prefix(manifest["name"])
    kept: dict[str, int] = {}
    for info in infos:
        for caption in read_captions(store, root, info):
            if caption in kept or not caption.strip():
                continue
            score = int.from_bytes(hashlib.blake2b(f"{seed}\0{caption}".encode(), digest_size=8).digest(), "little")
            if len(kept) < n:
                kept[caption] = score
            else:
                worst = max(kept, key=kept.__getitem__)
                if score < kept[worst]:
                    del kept[worst]
                    kept[caption] = score
    if not kept:
        raise DataError(f"dataset {manifest['name']!r} has no captions to sample: set sample.prompts")
    return sorted(kept)


def grid_png(images: torch.Tensor, cols: int) -> bytes:
    pics = tensor_to_images(images)
    scale = max(1, 64 // pics[0].size[0])  # digits are 8x8: enlarge for a person to see
    return png_bytes(grid(pics, cols=cols, scale=scale))


def judged_prompts(
    cfg: RunConfig, store: Store, manifest: dict[str, Any]
) -> tuple[list[str], list[int] | None, ShardSet | None]:
    """The prompts to sample and, for labelled pixel-space data with no `sample.prompts`, the
    class of each (what the judge checks: `sample.prompts_per_class` held-out captions per
    class) and the held-out split they came from (what a judge is fitted on)."""
    if cfg.sample.prompts:
        return cfg.sample.prompts, None, None
    if manifest["holdout"]["size"] >= MIN_HOLDOUT and manifest["latent"]["space"] == "pixels":
        holdout = load_split(store, manifest, "holdout")
        if judgeable(holdout):
            pairs = labelled_prompts(holdout, cfg.sample.prompts_per_class, cfg.sample.seed)
            return [p for p, _ in pairs], [y for _, y in pairs], holdout
    return default_prompts(store, manifest, cfg.sample.seed), None, None


def fit_judge(cfg: RunConfig, store: Store) -> Judge:
    manifest = load_manifest(store, cfg.data.name)
    return Judge.fit(load_split(store, manifest, "holdout"), cfg.sample.seed)


def sample_and_score(
    cfg: RunConfig, store: Store, pipe: ParisPipeline, judge: Judge | None = None
) -> dict[str, Any]:
    """Per routing mode: a grid in the store, the judge's scores (labelled data), expert usage.
    `judge`: one already fitted on this data (the study scores many pipelines with one)."""
    manifest = load_manifest(store, cfg.data.name)
    prompts, labels, holdout = judged_prompts(cfg, store, manifest)
    if holdout is None:
        judge = None
    elif judge is None:
        judge = Judge.fit(holdout, cfg.sample.seed)
    results: dict[str, Any] = {
        "modes": {},
        "prompts": prompts,
        "labels": labels,
        "judge_cv_accuracy": judge.cv_accuracy if judge else None,
    }
    for mode in cfg.sample.routing:
        s = sample_prompts(pipe, prompts, mode, cfg.sample)
        key = f"{samples_prefix(cfg.model)}/{mode.replace(':', '-')}.png"
        store.put_bytes(key, grid_png(s.images, cols=cfg.sample.per_prompt))
        row: dict[str, Any] = {"grid": store.uri(key), "usage": s.usage, "expert_calls": s.expert_calls}
        if judge is not None and labels is not None:
            row |= judge.score(s.images, np.repeat(labels, cfg.sample.per_prompt))
        results["modes"][mode] = row
        console.print(
            f"sampled {mode}: "
            + (f"accuracy {row['accuracy']:.2f}, Fréchet {row['frechet']:.2f}" if "accuracy" in row else row["grid"])
        )
    acc = store.get_json_or_none(f"{router_prefix(cfg.model)}/accuracy.json")
    results["router_accuracy"] = acc["held_out"] if acc else None
    return results
