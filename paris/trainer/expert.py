"""`paris train expert`: one DiT on one cluster's shards, and nothing else.

The expert reads only `datasets/<d>/clusters/<k>/` (plus the manifest and the empty
caption's encoding), a window of part files at a time, and writes only
`models/<m>/experts/<k>/`: no gradient, parameter or activation ever leaves the process.
"""

from __future__ import annotations

import torch

from paris.config import RunConfig, TrainConfig
from paris.data.shards import load_manifest, load_null_text, split_shards
from paris.data.stream import Batches, ShardStream
from paris.fingerprint import check_resume, dataset_checksum, expert_fingerprint
from paris.layout import dataset_prefix, expert_prefix
from paris.plots import save_loss_plot
from paris.storage import Store
from paris.trainer.checkpoint import checkpoint_fingerprint
from paris.trainer.distributed import local_part
from paris.trainer.flow import flow_loss, interpolate, model_timestep, sample_t
from paris.trainer.loop import LossFn, TrainResult, train
from paris.trainer.model import build_expert, count_params, expert_velocity, trim_text


def expert_loss(stream: Batches, null_states: torch.Tensor, null_mask: torch.Tensor, cfg: TrainConfig) -> LossFn:
    b = cfg.batch_size
    null_states = null_states.float()

    def loss_fn(model: torch.nn.Module, g: torch.Generator, device: torch.device) -> torch.Tensor:
        data, idx = stream.batch(g, b)
        x0 = data.latents[idx]
        text, mask = data.text_states[idx].float(), data.text_mask[idx]
        drop = torch.rand(b, generator=g) < cfg.caption_dropout  # empty caption: learns p(x) for CFG
        text[drop], mask[drop] = null_states, null_mask
        text, mask = trim_text(text, mask)  # on the CPU: no device sync
        t = sample_t(b, cfg.timestep_sampling, g, cfg.logit_mean, cfg.logit_std, cfg.mode_scale)
        eps = torch.randn(x0.shape, generator=g)
        x_t = interpolate(x0, eps, t)
        x0, eps, x_t, t, text, mask = local_part(x0, eps, x_t, t, text, mask)  # this rank's slice
        v = expert_velocity(model, x_t.to(device), model_timestep(t).to(device), text.to(device), mask.to(device))
        return flow_loss(v, x0.to(device), eps.to(device))

    return loss_fn


def train_expert(cfg: RunConfig, cluster: int, store: Store, prefix: str | None = None) -> TrainResult:
    """Train (or resume) the expert of `cluster` into `prefix` (default: its usual prefix,
    models/<model>/experts/<k>; the operator passes a versioned one). Checkpoints of other
    settings there are refused, naming what changed (paris.fingerprint)."""
    manifest = load_manifest(store, cfg.data.name)
    parts = split_shards(manifest, cluster)
    null_states, null_mask = load_null_text(store, manifest)
    # Each expert has its own random streams: weight init and the loop's per-step draws.
    tcfg = cfg.train.model_copy(update={"seed": cfg.train.seed * 100_003 + cluster})
    torch.manual_seed(tcfg.seed)
    model = build_expert(cfg.expert, manifest["latent"], manifest["text"]["dim"])
    prefix = prefix or expert_prefix(cfg.model, cluster)
    fp = expert_fingerprint(cfg.expert, cfg.train, cfg.data.name, dataset_checksum(manifest, [cluster]), cluster)
    check_resume(checkpoint_fingerprint(store, prefix), fp, store.uri(prefix))
    stream = ShardStream(
        store, dataset_prefix(cfg.data.name), parts, tcfg.batch_size * tcfg.grad_accum, tcfg.window, tcfg.seed
    )
    meta = {"cluster": cluster, "samples": stream.samples, "params": count_params(model), "fingerprint": fp.record()}
    try:
        result = train(
            model,
            expert_loss(stream, null_states, null_mask, tcfg),
            tcfg,
            store,
            prefix,
            f"expert {cluster}",
            meta,
            on_step=stream.at_step,
        )
    finally:
        stream.close()
    if result.main:  # under torchrun, rank 0 alone writes
        save_loss_plot(store, f"{prefix}/loss.png", {f"expert {cluster}": result.history})
    return result
