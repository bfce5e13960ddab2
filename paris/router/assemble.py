"""Experts' and router's last checkpoints -> one ParisPipeline in the store, and back.

Publishing is atomic: each pipeline goes into a folder of its own, models/<m>/pipelines/<version>/,
and only then does the pointer models/<m>/pipeline.json (with every file's checksum and the
pipeline's fingerprint) move to it. A loader reads the pointer, so a publish that crashes
midway leaves the previous pipeline served, and a serve pod that restarts meanwhile never
loads a mix of two."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffusers import FlowMatchEulerDiscreteScheduler, PixArtTransformer2DModel

from paris.config import ExpertModelConfig, RouterModelConfig, RunConfig
from paris.data.encoders import minilm_path, open_clip_files
from paris.data.shards import load_manifest
from paris.data.weights import Weights
from paris.errors import ParisError, StorageError
from paris.fingerprint import Fingerprint
from paris.layout import expert_prefix, pipeline_pointer, pipeline_prefix, pipeline_versions, router_prefix
from paris.progress import console
from paris.storage import Store
from paris.trainer.checkpoint import fetch_weights, file_sums

from .model import ParisRouter
from .pipeline import ParisPipeline

KEEP_PIPELINES = 2  # versions kept: the one served, and the one before it (pods may still load it)


def expert_prefixes(cfg: RunConfig, manifest: dict[str, Any], experts_at: Mapping[int, str] | None) -> dict[int, str]:
    """cluster -> store prefix of its expert: the given ones, else every cluster's usual prefix."""
    if experts_at:
        return dict(experts_at)
    return {i: expert_prefix(cfg.model, i) for i in range(manifest["num_clusters"])}


def build_pipeline(
    cfg: RunConfig, store: Store, experts_at: Mapping[int, str] | None = None, router_at: str | None = None
) -> ParisPipeline:
    """Gather the EMA weights of the experts (cluster -> store prefix; default: every cluster's
    expert at its usual prefix) and of the router (default: its usual prefix) into a pipeline.
    Component `expert_i` is the expert of the router's class i, i.e. of the i-th of those
    clusters in order."""
    manifest = load_manifest(store, cfg.data.name)
    at = expert_prefixes(cfg, manifest, experts_at)
    with tempfile.TemporaryDirectory() as tmp:
        experts = {
            f"expert_{i}": PixArtTransformer2DModel.from_pretrained(
                fetch_weights(store, at[k], Path(tmp) / f"e{k}")
            )
            for i, k in enumerate(sorted(at))
        }
        router_at = router_at or router_prefix(cfg.model)
        router = ParisRouter.from_pretrained(fetch_weights(store, router_at, Path(tmp) / "r"))
    routed = router.config.clusters or list(range(router.config.num_clusters))
    if routed != sorted(at):
        raise ParisError(
            f"the router at {store.uri(router_at)} routes over clusters {routed}, not the experts' "
            f"{sorted(at)}: train the router over these experts first"
        )
    # The encoders the data was prepared with, by the manifest's settings: s3:// weights are
    # fetched from this store's server (this may be a router pod on another machine).
    weights = Weights(store, cfg.data.weights_cache)
    text_encoder = tokenizer = vae = None
    if manifest["text"]["kind"] == "minilm":
        from transformers import AutoModel, AutoTokenizer

        text_encoder = AutoModel.from_pretrained(minilm_path(), local_files_only=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    elif manifest["text"]["kind"] == "open_clip":
        from .text import OpenClipTextModel  # carries its own tokenizer

        text = manifest["text"]
        settings = ("data.text_encoder.model", "data.text_encoder.pretrained")
        model, pretrained = open_clip_files(text["model"], text.get("pretrained"), weights, settings)
        text_encoder = OpenClipTextModel.from_local(model, pretrained)
    if manifest["latent"]["space"] == "vae":
        from diffusers import AutoencoderKL

        path = weights.local(manifest["latent"]["vae"], "data.vae")
        if not Path(path).is_dir():  # e.g. prepared on a laptop, assembled in a pod
            raise ParisError(
                f"the dataset was encoded with the VAE at {manifest['latent']['vae']}, which this machine does not "
                "have: keep encoder weights in the store (data.vae: s3://...), where every pod can read them"
            )
        vae = AutoencoderKL.from_pretrained(path, local_files_only=True)
    return ParisPipeline(
        router=router,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=cfg.sample.shift),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        vae=vae,
        text_max_length=manifest["text"]["max_length"],
        latent_scaling=manifest["latent"]["scaling_factor"],
        latent_shift=manifest["latent"]["shift_factor"],
        **experts,
    )


def publish_pipeline(
    pipe: ParisPipeline, store: Store, model: str, fingerprint: Fingerprint | None = None, **about: Any
) -> str:
    """Save the pipeline into a new version folder, then move the pointer to it (last, on
    purpose); older versions beyond KEEP_PIPELINES go after that. `about` (e.g. the experts'
    prefixes) is recorded in the pointer."""
    version = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + (f"-{fingerprint.digest[:8]}" if fingerprint else "")
    prefix = f"{pipeline_versions(model)}/{version}"
    with tempfile.TemporaryDirectory() as tmp:
        pipe.save_pretrained(tmp)
        files = file_sums(Path(tmp))
        store.upload_dir(Path(tmp), prefix)
    pointer = {
        "prefix": prefix,
        "version": version,
        "files": files,
        "fingerprint": fingerprint.record() if fingerprint else None,
        "published": time.time(),
        **about,
    }
    store.put_json(pipeline_pointer(model), pointer)
    _prune_versions(store, model, keep=KEEP_PIPELINES, current=version)
    return store.uri(prefix)


def _prune_versions(store: Store, model: str, keep: int, current: str) -> None:
    base = f"{pipeline_versions(model)}/"
    versions = sorted({k[len(base) :].split("/", 1)[0] for k in store.keys(base)})
    for v in [v for v in versions if v < current][: max(0, len(versions) - keep)]:
        store.delete_prefix(f"{base}{v}")


def publish_ensemble(
    cfg: RunConfig, store: Store, experts_at: Mapping[int, str] | None = None, router_at: str | None = None
) -> str:
    """Assemble the pipeline of these experts and this router and publish it, fingerprinted
    with the router's and each expert's fingerprint (from their checkpoints)."""
    from paris.fingerprint import pipeline_fingerprint
    from paris.router.train import router_fingerprint_of
    from paris.trainer.checkpoint import checkpoint_fingerprint

    manifest = load_manifest(store, cfg.data.name)
    at = expert_prefixes(cfg, manifest, experts_at)
    router_at = router_at or router_prefix(cfg.model)
    pipe = build_pipeline(cfg, store, at, router_at)
    router_fp = checkpoint_fingerprint(store, router_at) or router_fingerprint_of(cfg, manifest, at).record()
    fp = pipeline_fingerprint(router_fp, {k: checkpoint_fingerprint(store, p) for k, p in at.items()})
    experts = {str(k): p for k, p in sorted(at.items())}
    return publish_pipeline(pipe, store, cfg.model, fp, experts=experts, router=router_at)


def published(store: Store, model: str) -> dict[str, Any] | None:
    """The pointer to the served pipeline version (None: none published with versions)."""
    pointer = store.get_json_or_none(pipeline_pointer(model))
    return None if pointer is None else dict(pointer)


def load_pipeline(store: Store, model: str, local: Path) -> ParisPipeline:
    """The pipeline the pointer names, its files verified (a pipeline published in place,
    before versions, when there is no pointer)."""
    pointer = published(store, model)
    if pointer is None:
        prefix = pipeline_prefix(model)
        if not store.exists(f"{prefix}/model_index.json"):
            raise ParisError(f"no pipeline at {store.uri(prefix)}: run `paris train router` (or `paris run`) first")
        store.download_dir(prefix, local)
        return ParisPipeline.from_pretrained(local)
    store.download_dir(pointer["prefix"], local)
    have = file_sums(local)
    bad = sorted(rel for rel, want in (pointer.get("files") or {}).items() if have.get(rel) != want)
    if bad:
        raise StorageError(f"the pipeline at {store.uri(pointer['prefix'])} does not match its checksums: {bad[0]}")
    console.print(f"pipeline {pointer['version']} from {store.uri(pointer['prefix'])}")
    return ParisPipeline.from_pretrained(local)


def random_pipeline(
    experts: int = 3,
    expert: ExpertModelConfig | None = None,
    router: RouterModelConfig | None = None,
    latent: dict[str, int] | None = None,
    text_max_length: int = 12,
    seed: int = 0,
) -> ParisPipeline:
    """Untrained experts and router with the real architecture and the real text encoder.

    For measuring and testing serving, where what the weights compute matters but not how
    well: the output projections are randomized (DiT zero-initializes them, which would make
    every velocity 0 and every image the same)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from paris.router.model import build_router
    from paris.trainer.model import build_expert

    torch.manual_seed(seed)
    expert = expert or ExpertModelConfig(hidden_size=32, depth=1, heads=2)
    router = router or RouterModelConfig(hidden_size=32, depth=1, heads=2, condition_on_text=True)
    latent = latent or {"size": 8, "channels": 1}
    text_encoder = AutoModel.from_pretrained(minilm_path(), local_files_only=True).eval()
    text_dim = int(text_encoder.config.hidden_size)
    parts = {f"expert_{i}": build_expert(expert, latent, text_dim) for i in range(experts)}
    for e in parts.values():
        torch.nn.init.normal_(e.proj_out.weight, std=0.5)
    r = build_router(router, experts, latent, text_dim)
    last = r.head[-1]
    assert isinstance(last, torch.nn.Linear)
    torch.nn.init.normal_(last.weight, std=0.5)
    pipe = ParisPipeline(
        router=r,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=text_encoder,
        tokenizer=AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True),
        text_max_length=text_max_length,
        **parts,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
