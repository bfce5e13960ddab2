"""Experts' and router's last checkpoints -> one ParisPipeline in the store, and back."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

from diffusers import FlowMatchEulerDiscreteScheduler, PixArtTransformer2DModel

from paris.config import ExpertModelConfig, RouterModelConfig, RunConfig
from paris.data.encoders import minilm_path
from paris.data.shards import load_manifest
from paris.errors import ParisError
from paris.layout import expert_prefix, pipeline_prefix, router_prefix
from paris.storage import Store
from paris.trainer.checkpoint import fetch_weights

from .model import ParisRouter
from .pipeline import ParisPipeline


def build_pipeline(cfg: RunConfig, store: Store, experts_at: Mapping[int, str] | None = None) -> ParisPipeline:
    """Gather the EMA weights of the experts (cluster -> store prefix; default: every cluster's
    expert at its usual prefix) and of the router into a pipeline. Component `expert_i` is the
    expert of the router's class i, i.e. of the i-th of those clusters in order."""
    manifest = load_manifest(store, cfg.data.name)
    at = dict(experts_at) if experts_at else {i: expert_prefix(cfg.model, i) for i in range(manifest["num_clusters"])}
    with tempfile.TemporaryDirectory() as tmp:
        experts = {
            f"expert_{i}": PixArtTransformer2DModel.from_pretrained(
                fetch_weights(store, at[k], Path(tmp) / f"e{k}")
            )
            for i, k in enumerate(sorted(at))
        }
        router = ParisRouter.from_pretrained(fetch_weights(store, router_prefix(cfg.model), Path(tmp) / "r"))
    routed = router.config.clusters or list(range(router.config.num_clusters))
    if routed != sorted(at):
        raise ParisError(
            f"the router at {store.uri(router_prefix(cfg.model))} routes over clusters {routed}, not the experts' "
            f"{sorted(at)}: train the router over these experts first"
        )
    text_encoder = tokenizer = vae = None
    if manifest["text"]["kind"] == "minilm":
        from transformers import AutoModel, AutoTokenizer

        text_encoder = AutoModel.from_pretrained(minilm_path(), local_files_only=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    elif manifest["text"]["kind"] == "open_clip":
        from .text import OpenClipTextModel  # carries its own tokenizer

        text_encoder = OpenClipTextModel.from_local(manifest["text"]["model"], manifest["text"].get("pretrained"))
    if manifest["latent"]["space"] == "vae":
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(manifest["latent"]["vae"], local_files_only=True)
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


def publish_pipeline(pipe: ParisPipeline, store: Store, model: str) -> str:
    """save_pretrained into the store; model_index.json goes last so loaders never see half."""
    prefix = pipeline_prefix(model)
    with tempfile.TemporaryDirectory() as tmp:
        pipe.save_pretrained(tmp)
        index = Path(tmp) / "model_index.json"
        body = index.read_bytes()
        index.unlink()
        store.upload_dir(Path(tmp), prefix)
        store.put_bytes(f"{prefix}/model_index.json", body)
    return store.uri(prefix)


def load_pipeline(store: Store, model: str, local: Path) -> ParisPipeline:
    prefix = pipeline_prefix(model)
    if not store.exists(f"{prefix}/model_index.json"):
        raise ParisError(f"no pipeline at {store.uri(prefix)}: run `paris train router` (or `paris run`) first")
    store.download_dir(prefix, local)
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
