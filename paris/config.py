"""Pydantic models: the one source of truth for YAML configs, CRD schemas and API requests.

Every knob a user can turn lives here once, with its default and its bounds, so that the
CLI, the operator (CRDs are generated from these models) and the HTTP endpoint agree.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from paris.errors import ConfigError


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# --------------------------------------------------------------------------------------
# Routing modes
# --------------------------------------------------------------------------------------

_ROUTING_RE = re.compile(r"^(top1|top2|topk:(\d+)|full)$")


def parse_routing(mode: str) -> int | None:
    """How many experts a routing mode keeps per sample; None means all of them (`full`)."""
    m = _ROUTING_RE.match(mode.strip())
    if m is None:
        raise ValueError(f"unknown routing mode {mode!r}: use top1, top2, topk:K or full")
    if m.group(1) == "full":
        return None
    k = 1 if m.group(1) == "top1" else 2 if m.group(1) == "top2" else int(m.group(2))
    if k < 1:
        raise ValueError(f"routing mode {mode!r} must keep at least one expert")
    return k


def _check_routing(mode: str) -> str:
    parse_routing(mode)
    return mode.strip()


Routing = Annotated[
    str,
    Field(pattern=r"^(top1|top2|topk:[1-9][0-9]*|full)$", description="top1, top2, topk:K or full"),
    AfterValidator(_check_routing),
]


# --------------------------------------------------------------------------------------
# Sampling bounds, shared by the YAML config, the CRDs and every HTTP request model
# --------------------------------------------------------------------------------------

Steps = Annotated[int, Field(ge=1, le=1000, description="Sampling steps")]
Guidance = Annotated[float, Field(ge=0, le=50, description="Classifier-free guidance scale per expert")]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1, description="Noise seed")]
ImagesPerPrompt = Annotated[int, Field(ge=1, le=256, description="Images per prompt (offline sampling)")]
# One HTTP request is one share of a pipeline call: far fewer images than an offline grid.
ImagesPerRequest = Annotated[int, Field(ge=1, le=16, description="Images in one HTTP request")]
ImageSide = Annotated[int, Field(ge=8, le=1024, description="Output pixels per side")]


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # tab, LF and CR are fine


def _has_text(prompt: str) -> str:
    if not prompt.strip():
        raise ValueError("the prompt is blank")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the prompt is not valid Unicode text (a lone surrogate)") from None
    if _CONTROL.search(prompt):
        raise ValueError("the prompt contains control characters")
    return prompt


Prompt = Annotated[str, Field(min_length=1, max_length=1000), AfterValidator(_has_text)]


# --------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------


class StorageConfig(_Model):
    """Where every artifact lives. Credentials never appear here: they come from the
    environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), e.g. through a Secret."""

    uri: str = Field(
        "file://runs/store",
        description="file://<path> (local, the embedded default) or s3://<bucket>[/<prefix>]",
        pattern=r"^(file|s3)://.+",
    )
    endpoint: str | None = Field(
        None, description="S3 endpoint host:port (MinIO); the env var PARIS_S3_ENDPOINT overrides it"
    )
    secure: bool = Field(False, description="Use TLS for the S3 endpoint")
    region: str | None = Field(None, description="S3 region, if the server needs one")
    retry_deadline: float = Field(
        900.0,
        ge=0,
        le=7 * 86400,
        description="Seconds an s3 call keeps retrying an unreachable store (exponential backoff, jitter) "
        "before the command fails naming the endpoint",
    )

    def resolved_endpoint(self) -> str | None:
        return os.environ.get("PARIS_S3_ENDPOINT") or self.endpoint


# --------------------------------------------------------------------------------------
# Data preparation
# --------------------------------------------------------------------------------------


class TextEncoderConfig(_Model):
    kind: Literal["minilm", "open_clip"] = Field(
        "minilm", description="minilm: all-MiniLM-L6-v2 shipped in a pip package (offline); open_clip"
    )
    model: str = Field(
        "ViT-L-14",
        description="open_clip: an architecture name open_clip ships, or a model-config .json (local path or "
        "s3://bucket/key on the storage's server)",
    )
    pretrained: str | None = Field(
        None,
        description="open_clip: checkpoint file, a local path or s3://bucket/key on the storage's server; "
        "None = random init (tests only)",
    )
    max_length: int = Field(77, ge=4, le=512, description="Token states kept per caption")


class FeatureConfig(_Model):
    """The per-image feature that k-means clusters (DINOv2 in the paper)."""

    kind: Literal["pixels", "dinov2", "open_clip"] = Field(
        "pixels", description="pixels: PCA of the downsampled image (offline default)"
    )
    path: str | None = Field(
        None,
        description="dinov2: transformers model dir; open_clip: checkpoint file (unset: random). A local path or "
        "s3://bucket/key on the storage's server",
    )
    model: str = Field(
        "ViT-L-14",
        description="open_clip: an architecture name open_clip ships, or a model-config .json (local path or "
        "s3://bucket/key on the storage's server)",
    )
    pca_dim: int = Field(32, ge=2, le=1024, description="PCA dimensions before k-means")


class DataConfig(_Model):
    name: str = Field("digits", pattern=r"^[a-z0-9][a-z0-9._-]*$", description="Dataset name in the store")
    source: Literal["digits", "folder", "webdataset"] = "digits"
    path: str | None = Field(
        None, description="folder: dir with captions.jsonl; webdataset: a .tar or a dir of .tar shards"
    )
    image_size: int = Field(8, ge=4, le=1024, description="Pixels per side (digits: native 8)")
    grayscale: bool | None = Field(None, description="Single-channel images; default: true for digits")
    vae: str | None = Field(
        None,
        description="AutoencoderKL dir (save_pretrained's), a local path or s3://bucket/key on the storage's "
        "server; unset = pixel space",
    )
    text_encoder: TextEncoderConfig = Field(default_factory=TextEncoderConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    clusters: int = Field(4, ge=1, le=1024, description="K: number of clusters = experts")
    fine_clusters: int = Field(64, ge=1, description="Stage-one k-means centroids, merged to K")
    balance: bool = Field(False, description="Cap cluster sizes so no cluster swallows the data")
    max_cluster_fraction: float = Field(
        0.5, gt=0, le=1, description="Warn (or, with balance, cap) above this share of the data"
    )
    holdout_fraction: float = Field(
        0.2, ge=0, lt=1, description="Share held out for router/eval scoring (decided per sample by a hash of its key)"
    )
    shard_size: int = Field(4096, ge=1, description="Samples per safetensors shard")
    limit: int | None = Field(None, ge=1, description="Use only the first N samples")
    labels: list[Annotated[int, Field(ge=0, le=9)]] | None = Field(
        None,
        min_length=1,
        description="digits: keep only images of these digits (e.g. leave one out, to add it later with "
        "`paris data add`)",
    )
    seed: int = 0
    # How preparation scales: parts -> work units (indexes) -> batches on a device.
    part_size: int = Field(
        1000, ge=1, description="folder, digits: samples per input part (a WebDataset tar is one part)"
    )
    indexes: int | None = Field(
        None, ge=1, le=100_000, description="Work units per stage, each a range of parts; default: one per part"
    )
    cluster_sample: int = Field(
        200_000, ge=1, description="Training samples (a uniform sample) that two-stage k-means is fitted on"
    )
    kmeans: Literal["auto", "faiss", "sklearn"] = Field(
        "auto",
        description="Fine k-means: auto = scikit-learn KMeans up to 50k samples, then faiss if installed, "
        "else MiniBatchKMeans",
    )
    on_error: Literal["fail", "skip"] = Field(
        "fail", description="An unreadable image: fail the work unit, or skip it (named in the manifest)"
    )
    batch_size: int = Field(64, ge=1, le=65536, description="Images per encoder batch")
    device: str = Field("auto", description="Encoders' device: auto (CUDA when present), cpu, cuda, cuda:N or mps")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="Encoders' autocast: auto = bf16 where the device runs it fast"
    )
    weights_cache: str | None = Field(
        None,
        description="Local folder where encoder weights given as s3:// are downloaded, and reused while the "
        "stored files are unchanged; default: $XDG_CACHE_HOME/paris/weights (~/.cache/paris/weights)",
    )

    @property
    def is_grayscale(self) -> bool:
        return self.grayscale if self.grayscale is not None else self.source == "digits"


# --------------------------------------------------------------------------------------
# Models and training
# --------------------------------------------------------------------------------------

Preset = Literal["tiny", "S", "B", "L", "XL"]
Precision = Literal["auto", "no", "bf16", "fp16"]

# (hidden size, depth, heads) — DiT-S/B/L/XL; tiny is ours (~1M parameters at the digits' size).
PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (128, 4, 4),
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "XL": (1152, 28, 16),
}


class _Arch(_Model):
    """A transformer's shape: a preset, optionally overridden field by field."""

    preset: Preset = "tiny"
    patch_size: int = Field(2, ge=1, le=8)
    hidden_size: int | None = Field(None, ge=8, description="Override the preset")
    depth: int | None = Field(None, ge=1, description="Override the preset")
    heads: int | None = Field(None, ge=1, description="Override the preset")

    def arch(self) -> tuple[int, int, int]:
        """(hidden size, depth, heads) after overrides."""
        hidden, depth, heads = PRESETS[self.preset]
        return self.hidden_size or hidden, self.depth or depth, self.heads or heads

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> _Arch:
        hidden, _, heads = self.arch()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {heads} heads")
        return self


class ExpertModelConfig(_Arch):
    """A PixArt-alpha DiT: adaLN-single timestep conditioning + cross-attention to text."""


class RouterModelConfig(_Arch):
    """A DiT classifier with a CLS token: predicts the cluster of x_0 from (x_t, t)."""

    preset: Literal["tiny", "S", "B"] = "tiny"
    condition_on_text: bool = Field(
        False,
        description="Also attend to the caption: estimates p(k | x_t, t, c) instead of p(k | x_t, t)",
    )


def weights_settings(data: DataConfig) -> dict[str, str]:
    """The data settings that name model weights (a path or a store URI), by their config key."""
    refs = {
        "vae": data.vae,
        "features.path": data.features.path,
        "features.model": data.features.model if data.features.model.endswith(".json") else None,
        "text_encoder.model": data.text_encoder.model if data.text_encoder.model.endswith(".json") else None,
        "text_encoder.pretrained": data.text_encoder.pretrained,
    }
    return {k: v for k, v in refs.items() if v}


def check_patch_sizes(data: DataConfig, *models: _Arch) -> None:
    """In pixel space the latent size is the image size, so a patch that does not divide it is
    a config mistake caught before any work (with a VAE, once the VAE's factor is known)."""
    if data.vae is None:
        for m in models:
            if data.image_size % m.patch_size:
                raise ValueError(f"data.image_size {data.image_size} is not divisible by patch size {m.patch_size}")


DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"


class TrainConfig(_Model):
    steps: int = Field(1500, ge=1, description="Optimizer steps")
    batch_size: int = Field(64, ge=1)
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(50, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    caption_dropout: float = Field(0.1, ge=0, le=1, description="Share of empty captions, for CFG")
    timestep_sampling: Literal["logit_normal", "uniform", "mode"] = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = Field(1.0, gt=0)
    mode_scale: float = 1.29
    mixed_precision: Precision = Field(
        "auto",
        description="auto: bf16 where the device runs it faster than fp32 (CUDA with bf16; a CPU with AMX "
        "or AVX-512 BF16, measured in bench/README.md)",
    )
    compile: bool = Field(True, description="torch.compile each transformer block (CPU and CUDA)")
    gradient_checkpointing: bool = Field(
        False, description="Recompute block activations in the backward pass: less memory, ~30% more compute"
    )
    device: str = Field("auto", pattern=DEVICE_PATTERN, description="auto, cpu, cuda, cuda:N or mps")
    threads: int | None = Field(None, ge=1, description="CPU threads (default: torch's choice)")
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(
        2, ge=1, le=1000, description="Checkpoints kept; older ones are deleted once latest.json points past them"
    )
    window: int = Field(
        4, ge=1, le=4096, description="Part files of the split held in memory at once (one more window prefetches)"
    )
    log_every: int = Field(10, ge=1)
    seed: int = 0


class RouterConfig(_Model):
    model: RouterModelConfig = Field(default_factory=RouterModelConfig)
    grow_steps: int | None = Field(
        None,
        ge=1,
        description="Fine-tuning steps when the router grows by new experts (`paris train router --grow-from`; "
        "default: a tenth of train.steps)",
    )
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(
            steps=1000, lr=5e-4, caption_dropout=0.0, timestep_sampling="uniform", ema_decay=0.99
        )
    )


DEFAULT_ROUTING = "top2"  # `paris generate` and the endpoint, when no mode is asked for


class SampleConfig(_Model):
    steps: Steps = 20
    guidance: Guidance = 3.0
    shift: float = Field(1.0, gt=0, description="FlowMatchEulerDiscreteScheduler shift")
    guidance_routing: Literal["shared", "separate"] = Field(
        "shared",
        description="CFG's unconditional branch: weighted by the caption's routing (shared) or by the "
        "router's output for the empty caption (separate); see paris/router/routing.py",
    )
    routing: list[Routing] = Field(default_factory=lambda: ["top1", "top2", "full"])
    prompts: list[str] | None = Field(
        None,
        description="Default: for labelled data (digits, a folder with labels) prompts_per_class held-out captions "
        "per class, scored by the judge; else some held-out captions",
    )
    prompts_per_class: int = Field(1, ge=1, le=64, description="Labelled data: held-out captions sampled per class")
    per_prompt: ImagesPerPrompt = 8
    seed: int = 0
    device: str = Field("auto", pattern=DEVICE_PATTERN, description="auto, cpu, cuda, cuda:N or mps")


SERVE_TOKEN_ENV = "PARIS_SERVE_TOKEN"  # `paris serve`'s bearer token (a Secret key, on Kubernetes)
SERVE_TOKEN_FILE_ENV = "PARIS_SERVE_TOKEN_FILE"  # or a file that holds it


class ServeConfig(_Model):
    """`paris serve`: batching, backpressure and limits. The bearer token is never here: it
    comes from $PARIS_SERVE_TOKEN or the file named by $PARIS_SERVE_TOKEN_FILE (a Secret)."""

    max_batch: int = Field(
        16, ge=1, le=256, description="Images per pipeline call across requests; 1 turns batching off"
    )
    max_wait_ms: float = Field(
        30.0, ge=0, le=1000, description="How long the first request of a batch waits for others to join"
    )
    max_queue: int = Field(32, ge=1, le=4096, description="Requests waiting for the pipeline; more get 429")
    timeout_s: float = Field(120.0, gt=0, le=3600, description="Per request, queueing included; then 504")
    max_body_bytes: int = Field(65536, ge=1024, le=16 * 2**20, description="Larger request bodies get 413")
    precision: Precision = Field(
        "auto", description="auto: bf16 where the device runs it fast (CUDA with bf16, CPU with AMX), else fp32"
    )


class StudyConfig(_Model):
    """`paris study`: the ensemble against a monolith trained on all the data with the same FLOPs."""

    seeds: int = Field(3, ge=1, le=20, description="Training seeds of the main comparison (mean and spread)")
    budgets: list[Annotated[float, Field(gt=0, le=4)]] = Field(
        default_factory=lambda: [0.25, 0.5, 1.0],
        min_length=1,
        description="The compute curve (seed 0): fractions of train.steps and router.train.steps; 1.0 reuses seed 0",
    )
    quick: float = Field(
        0.1, gt=0, le=1,
        description="`--quick`: train this fraction of the steps, one seed unless --seeds, one image per prompt",
    )
    text_blind_router: bool = Field(
        True, description="Also train the paper's (x_t, t) router on the same experts (the router ablation)"
    )
    expert_steps: Literal["equal", "by_size"] = Field(
        "equal",
        description="The ensemble's steps: train.steps for every expert (the paper's recipe), or the same total "
        "split in proportion to the clusters' sizes (every training image seen as often as by the monolith)",
    )


class RunConfig(_Model):
    """Everything `paris run` needs; each stage reads its part."""

    model: str = Field("digits", pattern=r"^[a-z0-9][a-z0-9._-]*$", description="Model name in the store")
    storage: StorageConfig = Field(default_factory=StorageConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    expert: ExpertModelConfig = Field(default_factory=ExpertModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    parallel: int = Field(2, ge=1, description="`paris run`: experts trained at once (one process each)")
    study: StudyConfig = Field(default_factory=StudyConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)

    @model_validator(mode="after")
    def _patches_fit(self) -> RunConfig:
        check_patch_sizes(self.data, self.expert, self.router.model)
        return self

    @model_validator(mode="after")
    def _store_weights_need_the_store(self) -> RunConfig:
        """Weights in s3:// are read from the storage's server: caught here, not at the first
        encoder load after the input has been listed."""
        if not self.storage.uri.startswith("s3://"):
            for setting, ref in weights_settings(self.data).items():
                if ref.startswith("s3://"):
                    raise ValueError(f"data.{setting} {ref!r} is in s3://, which needs s3:// storage (the same server)")
        return self


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def describe_errors(
    errors: ValidationError | Sequence[Mapping[str, Any]], root: str = "", whole: str = "config"
) -> str:
    """The first validation error as one line, `where: message (and N more)`.

    The one formatter for every surface: config files, custom resource specs (root="spec")
    and HTTP request bodies (FastAPI's `body` location element is dropped). `whole` names an
    error about the whole object."""
    items = list(errors.errors() if isinstance(errors, ValidationError) else errors)
    if not items:
        return f"{root or whole}: invalid"
    first = items[0]
    parts = [str(p) for p in first.get("loc", ()) if p != "body"]
    where = ".".join([root, *parts] if root else parts) or whole
    more = f" (and {len(items) - 1} more)" if len(items) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"


def parse_config(data: Any, source: str = "config") -> RunConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: {describe_errors(err)}") from None


def sample_overrides(base: SampleConfig, over: dict[str, Any], source: str) -> SampleConfig:
    """`base` with some fields replaced, validated against SampleConfig's own bounds (a
    model_copy would skip validation), so command-line flags share the config's limits."""
    try:
        return SampleConfig.model_validate({**base.model_dump(), **over})
    except ValidationError as err:
        raise ConfigError(f"{source}: {describe_errors(err, root='sample')}") from None


def load_config(path: str | Path | None) -> RunConfig:
    """Read a YAML config from a path, or from $PARIS_CONFIG (YAML text) when path is None.

    Pods get their config through the environment so that no file has to be mounted.
    """
    if path is None:
        text = os.environ.get("PARIS_CONFIG")
        if text is None:
            raise ConfigError("no config given: pass a YAML file or set PARIS_CONFIG")
        source = "$PARIS_CONFIG"
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        text = p.read_text()
        source = str(p)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML ({str(err).splitlines()[0]})") from None
    return parse_config(data, source)


# --------------------------------------------------------------------------------------
# Kubernetes resources: the ParisExpert / ParisRouter specs (crds/ is generated from these),
# the operator's own settings, and the generation API's request.
#
# Kubernetes-native fields are camelCase (nodeSelector, backoffLimit) as in any manifest; the
# embedded training sections (data, expert, train, router) are the YAML config's own models,
# snake_case, so a block can be copied between a `paris run` config and a manifest.
# --------------------------------------------------------------------------------------

API_GROUP = "paris.dev"
API_VERSION = "v1alpha1"

_NAME = r"^[a-z0-9][a-z0-9._-]*$"
_NUMBER = r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
_QUANTITY = rf"^(\+|-)?{_NUMBER}(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?{_NUMBER}))?$"

Quantity = Annotated[int | Annotated[str, Field(pattern=_QUANTITY)], Field(description="A Kubernetes quantity")]


class Toleration(_Model):
    key: str | None = Field(None, description="Taint key; empty with operator Exists matches every taint")
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Empty matches every effect"
    )
    toleration_seconds: int | None = Field(None, alias="tolerationSeconds", ge=0)


class Resources(_Model):
    requests: dict[str, Quantity] | None = Field(None, description="e.g. {cpu: 2, memory: 8Gi}")
    limits: dict[str, Quantity] | None = Field(None, description="e.g. {nvidia.com/gpu: 1}")


class PodPlacement(_Model):
    """How and where one kind of pod runs: image, resources, node pool and scheduling knobs."""

    image: str | None = Field(None, description="Trainer image; default: the operator's trainerImage setting")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field("IfNotPresent", alias="imagePullPolicy")
    pool: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
        description="Node pool: selects nodes labelled <poolLabel>=<pool> and applies the pool's defaults",
    )
    resources: Resources = Field(default_factory=Resources)
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: list[Toleration] = Field(default_factory=list)
    affinity: dict[str, Any] | None = Field(None, description="A core/v1 Affinity, passed through")


KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


class BatchJobOptions(_Model):
    """How a resource's batch Jobs are queued and cleaned up. A mixin: every resource that runs
    Jobs (ParisExpert, ParisRouter, and any later one) takes these fields by inheriting it."""

    queue_name: str | None = Field(
        None,
        alias="queueName",
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description=(
            "Kueue LocalQueue in the resource's namespace: its Jobs get the label "
            f"{KUEUE_QUEUE_LABEL} and are created suspended until Kueue admits them"
        ),
    )
    ttl_seconds_after_finished: int | None = Field(
        None,
        alias="ttlSecondsAfterFinished",
        ge=0,
        le=31_536_000,
        description=(
            "Delete a finished Job and its pods this many seconds after it ended (the status keeps "
            "the outcome, loss, checkpoint and times); default: the operator's ttlSecondsAfterFinished. "
            "The operator waits at least three status polls, so it records the outcome first"
        ),
    )
    termination_grace_period_seconds: int = Field(
        300,
        alias="terminationGracePeriodSeconds",
        ge=1,
        le=86_400,
        description=(
            "Seconds a pod of its Jobs gets between SIGTERM (a preemption, an eviction, a node drain) and "
            "SIGKILL: a trainer finishes its step and writes a checkpoint in that time, so the next pod loses "
            "nothing. Room for the largest checkpoint's upload (Kubernetes' default is 30)"
        ),
    )


class S3Storage(_Model):
    """The object store of every artifact; credentials come from a Secret, never the spec."""

    uri: str = Field(
        pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$", description="s3://<bucket>[/<prefix>]"
    )
    endpoint: str | None = Field(None, description="host:port of MinIO/S3; default: the operator's s3Endpoint")
    secure: bool = Field(False, description="Use TLS")
    region: str | None = None
    secret_name: str | None = Field(
        None,
        alias="secretName",
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Secret with the access keys; default: the operator's credentialsSecret",
    )
    retry_deadline_seconds: float = Field(
        900.0,
        alias="retryDeadlineSeconds",
        ge=0,
        le=7 * 86400,
        description="How long a trainer waits out an unreachable store (retrying with backoff) before its "
        "pod fails and the Job retries it",
    )
    access_key_key: str = Field("AWS_ACCESS_KEY_ID", alias="accessKeyKey", description="Key of the access key id")
    secret_key_key: str = Field("AWS_SECRET_ACCESS_KEY", alias="secretKeyKey", description="Key of the secret key")


class ParisExpertSpec(BatchJobOptions, PodPlacement):
    """One expert: a DiT trained on one cluster's shards, in one Job, sharing nothing."""

    model: str = Field(pattern=_NAME, description="Model name in the store (models/<model>/)")
    cluster: int = Field(ge=0, le=1023, description="Cluster index k: trains on datasets/<data.name>/clusters/<k>")
    storage: S3Storage
    data: DataConfig = Field(default_factory=DataConfig, description="The prepared dataset (data.name is read)")
    expert: ExpertModelConfig = Field(default_factory=ExpertModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    backoff_limit: int = Field(
        6, alias="backoffLimit", ge=0, le=100, description="Pod retries; each resumes from latest.json"
    )
    active_deadline_seconds: int | None = Field(None, alias="activeDeadlineSeconds", ge=1)
    gpus: int | None = Field(
        None,
        ge=1,
        le=16,
        description="GPUs of one node for this expert: its nvidia.com/gpu limit; above 1 the pod runs "
        "`torchrun --standalone`, one data-parallel rank per GPU, its collective inside this pod only "
        "(default: the nvidia.com/gpu limit its resources or pool give it)",
    )
    dataset: str | None = Field(
        None,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        max_length=253,
        description="A ParisDataset in this namespace: the expert waits until it is Ready, then trains on its data "
        "(its data section replaces this one)",
    )

    @model_validator(mode="after")
    def _patches_fit(self) -> ParisExpertSpec:
        check_patch_sizes(self.data, self.expert)
        return self


class ParisDatasetSpec(BatchJobOptions, PodPlacement):
    """A dataset prepared in the cluster: features, clustering, encoding, as Indexed Jobs."""

    storage: S3Storage
    data: DataConfig = Field(
        description="What to prepare, as in a config's data section; data.path is s3://bucket/prefix on the "
        "storage's server (the pods share nothing else)"
    )
    indexes: int = Field(
        4, ge=1, le=10_000, description="Work units of the features and encode stages (Indexed Job completions)"
    )
    parallelism: int | None = Field(None, ge=1, le=10_000, description="Pods of a stage at once (default: indexes)")
    backoff_limit_per_index: int = Field(
        3, alias="backoffLimitPerIndex", ge=0, le=100, description="Retries of a failed index, alone"
    )
    backoff_limit: int = Field(3, alias="backoffLimit", ge=0, le=100, description="Retries of the one-pod stages")

    def run_data(self) -> DataConfig:
        """The data config every pod of this dataset runs (its indexes fixed by the spec)."""
        return self.data.model_copy(update={"indexes": self.indexes})


class ExpertSelector(_Model):
    """Which ParisExperts (in the router's namespace) feed the router: labels or names."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.matchLabels) != has(self.names)",
                    "message": "set exactly one of experts.matchLabels and experts.names",
                }
            ]
        }
    )

    match_labels: dict[str, str] | None = Field(None, alias="matchLabels")
    names: list[Annotated[str, Field(min_length=1)]] | None = Field(None, min_length=1)
    count: int | None = Field(
        None,
        ge=1,
        le=1024,
        description=(
            "The least number of Succeeded experts the router accepts (default: every selected one). Once every "
            "selected expert has Succeeded or Failed and at least this many Succeeded, the router trains over "
            "those and serves them (phase Degraded while any is missing); a missing one that succeeds later "
            "joins in a new training"
        ),
    )
    joining: Literal["grow", "retrain"] = Field(
        "grow",
        description=(
            "What the router does when experts join the ones it serves (an expert added later, a missing one "
            "that succeeded): grow = start from the served router, its head grown by the new clusters, and "
            "fine-tune it for router.grow_steps on every cluster (the old experts stay as they are); retrain = "
            "train a new router from scratch. A change of the router's settings always trains from scratch"
        ),
    )

    @model_validator(mode="after")
    def _one_way(self) -> ExpertSelector:
        if (self.match_labels is None) == (self.names is None):
            raise ValueError("set exactly one of experts.matchLabels and experts.names")
        return self


class SecretKey(_Model):
    """One key of a Secret in the resource's namespace."""

    secret_name: str = Field(alias="secretName", pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    key: str = Field("token", min_length=1, pattern=r"^[-._a-zA-Z0-9]+$")


class InferenceSpec(PodPlacement):
    """The generation endpoint: a Deployment + Service running `paris serve`."""

    replicas: int = Field(1, ge=0, le=64)
    routing: Routing = DEFAULT_ROUTING
    steps: Steps = Field(20, description="Default sampling steps")
    guidance: Guidance = Field(3.0, description="Default classifier-free guidance")
    shift: float = Field(1.0, gt=0, description="FlowMatchEulerDiscreteScheduler shift")
    port: int = Field(8000, ge=1024, le=65535, description="Container port")
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field("ClusterIP", alias="serviceType")
    auth: SecretKey | None = Field(
        None, description="Require `Authorization: Bearer <token>`; the token is this Secret key (default key: token)"
    )
    storage_secret_name: str | None = Field(
        None,
        alias="storageSecretName",
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="A read-only storage credential for the serve pods (same keys as storage); default: storage's",
    )
    serve: ServeConfig = Field(default_factory=ServeConfig, description="Batching, queue, timeout, body limit")


class ParisRouterSpec(BatchJobOptions, PodPlacement):
    """The router: trained once its experts succeeded, then served with them."""

    model: str = Field(pattern=_NAME, description="Model name in the store (models/<model>/)")
    experts: ExpertSelector
    storage: S3Storage
    data: DataConfig = Field(default_factory=DataConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    inference: InferenceSpec = Field(default_factory=InferenceSpec)
    backoff_limit: int = Field(3, alias="backoffLimit", ge=0, le=100)

    @model_validator(mode="after")
    def _patches_fit(self) -> ParisRouterSpec:
        check_patch_sizes(self.data, self.router.model)
        return self


class PoolDefaults(_Model):
    """What every pod sent to a pool gets unless its spec says otherwise."""

    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: list[Toleration] = Field(default_factory=list)
    resources: Resources = Field(default_factory=Resources)


class OperatorSettings(_Model):
    """The operator's own configuration (Helm values -> env PARIS_OPERATOR_CONFIG, YAML)."""

    trainer_image: str = Field("ghcr.io/paris-dev/paris-trainer:0.1.0", alias="trainerImage")
    s3_endpoint: str | None = Field(None, alias="s3Endpoint", description="Default storage.endpoint")
    credentials_secret: str = Field("paris-s3", alias="credentialsSecret", description="Default storage.secretName")
    serve_credentials_secret: str | None = Field(
        None,
        alias="serveCredentialsSecret",
        description="Default inference.storageSecretName: a read-only store credential for the serve pods",
    )
    pool_label: str = Field("pool", alias="poolLabel", description="Node label that names a pool")
    pools: dict[str, PoolDefaults] = Field(default_factory=dict)
    poll_seconds: float = Field(10.0, alias="pollSeconds", ge=0.5, le=3600, description="Progress poll period")
    ttl_seconds_after_finished: int | None = Field(
        None,
        alias="ttlSecondsAfterFinished",
        ge=0,
        description="Default spec.ttlSecondsAfterFinished of every resource; None keeps finished Jobs",
    )

    @classmethod
    def from_env(cls) -> OperatorSettings:
        text = os.environ.get("PARIS_OPERATOR_CONFIG")
        if not text:
            return cls()
        try:
            return cls.model_validate(yaml.safe_load(text) or {})
        except (yaml.YAMLError, ValidationError) as err:
            raise ConfigError(f"$PARIS_OPERATOR_CONFIG: {err}") from None


class GenerateRequest(_Model):
    """POST /v1/generate. Unset fields take the server's defaults (the ParisRouter's inference)."""

    prompt: Prompt
    steps: Steps | None = None
    guidance: Guidance | None = None
    routing: Routing | None = None
    seed: Seed | None = None
    count: ImagesPerRequest = Field(1, description="Images; more than one come back as a grid (PNG)")
    size: ImageSide | None = Field(None, description="Output pixels per side (default: native)")
    format: Literal["png", "json"] | None = Field(None, description="Default: from Accept, else png")


def _image_size(size: str) -> str:
    if size == "auto":
        return size
    w, h = (int(v) for v in size.split("x"))
    if w != h:
        raise ValueError(f"size {size} is not square: the model makes square images (e.g. 256x256)")
    if not 8 <= w <= 1024:
        raise ValueError(f"size {size} is out of range: 8x8 to 1024x1024")
    return size


def _no_url(fmt: str | None) -> str | None:
    if fmt == "url":
        # Replicas share no image store, so a URL from one pod would 404 on another.
        raise ValueError("response_format url is not served: ask for b64_json")
    return fmt


class ImagesRequest(_Model):
    """POST /v1/images/generations: the OpenAI images API.

    `seed`, `num_inference_steps`, `guidance_scale` and `routing` are the extension fields that
    other open image servers accept too; `routing_trace` adds the per-step routing weights.
    quality, style, background, moderation, user and safety_identifier are accepted and ignored,
    so stock clients work; any other field is refused, so a misspelt extension is not silently lost.
    """

    prompt: Prompt
    model: str | None = Field(None, max_length=200, description="The served model's name, or paris")
    n: ImagesPerRequest = 1
    size: Annotated[str, Field(pattern=r"^(auto|[0-9]{1,5}x[0-9]{1,5})$"), AfterValidator(_image_size)] | None = None
    response_format: Annotated[Literal["b64_json", "url"], AfterValidator(_no_url)] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: int | None = Field(None, ge=0, le=100, description="jpeg/webp quality")
    stream: Literal[False] | None = Field(None, description="Streaming partial images is not supported")
    quality: str | None = Field(None, max_length=32)
    style: str | None = Field(None, max_length=32)
    background: Literal["auto", "opaque"] | None = None
    moderation: str | None = Field(None, max_length=32)
    user: str | None = Field(None, max_length=256)
    safety_identifier: str | None = Field(None, max_length=256)
    seed: Seed | None = None
    num_inference_steps: Steps | None = None
    guidance_scale: Guidance | None = None
    routing: Routing | None = None
    routing_trace: bool = Field(False, description="Also return each image's routing weights at every step")
