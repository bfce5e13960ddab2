"""Object store layout (README, "Store layout and crash safety"): the only place that spells
out key prefixes."""

from __future__ import annotations


def dataset_prefix(dataset: str) -> str:
    return f"datasets/{dataset}"


def model_prefix(model: str) -> str:
    return f"models/{model}"


def expert_prefix(model: str, cluster: int) -> str:
    return f"{model_prefix(model)}/experts/{cluster}"


def router_prefix(model: str) -> str:
    return f"{model_prefix(model)}/router"


def pipeline_prefix(model: str) -> str:
    """Where pipelines were published in place before versions (still read when no pointer)."""
    return f"{model_prefix(model)}/pipeline"


def pipeline_pointer(model: str) -> str:
    """The pointer to the served pipeline version, written last by a publish."""
    return f"{model_prefix(model)}/pipeline.json"


def pipeline_versions(model: str) -> str:
    return f"{model_prefix(model)}/pipelines"


def samples_prefix(model: str) -> str:
    return f"{model_prefix(model)}/samples"


def versioned(prefix: str, digest: str) -> str:
    """A model's prefix for one fingerprint (paris.fingerprint): what the operator trains into,
    so a spec change that alters the weights never resumes another version's checkpoints."""
    return f"{prefix}/fp-{digest[:12]}"
