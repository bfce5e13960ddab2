"""What determines a trained model's weights, as one digest: its fingerprint.

A checkpoint and a published pipeline record the fingerprint of what trained them: the
architecture, the dataset (its manifest's checksum and the cluster) and the training settings
that change the result. Resuming into a prefix whose checkpoints carry another fingerprint is
refused with one line naming the fields that changed, so an edited config never silently
continues old weights (or crashes on a size mismatch). On the cluster the operator trains a
changed fingerprint into a new versioned prefix instead (paris.operator.builders).

Torch-free on purpose: the operator computes the same fingerprints from a resource's spec and
the dataset's manifest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from paris.config import ExpertModelConfig, RouterConfig, TrainConfig
from paris.errors import ParisError

# Training settings that change how fast or where a run goes, not the weights it reaches at a
# given step (`steps` itself: more steps continue the same run). Every other field, including
# any added later, counts: a new knob retrains rather than silently reusing weights.
EXECUTION_ONLY = frozenset(
    {
        "steps",
        "checkpoint_every",
        "keep_checkpoints",
        "log_every",
        "device",
        "threads",
        "mixed_precision",
        "compile",
        "gradient_checkpointing",
    }
)


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


def manifest_checksum(manifest: Mapping[str, Any]) -> str:
    """A digest of a whole manifest (clusters, part checksums, encoders)."""
    return hashlib.sha256(_canonical(dict(manifest))).hexdigest()[:16]


def dataset_checksum(manifest: Mapping[str, Any], clusters: Sequence[int]) -> str:
    """The identity of what a model trains on: the encoders, the latent space and the parts
    (with their sha256) of these clusters, nothing else. A dataset prepared again is another
    dataset; a cluster added to it later changes no existing expert's identity, so old experts
    stay untouched while the new one trains (paris data add)."""
    parts = {str(k): [(s.get("key"), s.get("sha256")) for s in manifest["clusters"][k]["shards"]] for k in clusters}
    return hashlib.sha256(
        _canonical({"latent": manifest.get("latent"), "text": manifest.get("text"), "clusters": parts})
    ).hexdigest()[:16]


@dataclass(frozen=True)
class Fingerprint:
    fields: dict[str, Any]  # flat: "train.lr" -> 0.001

    @property
    def digest(self) -> str:
        return hashlib.sha256(_canonical(self.fields)).hexdigest()[:16]

    def record(self) -> dict[str, Any]:
        """What checkpoints and pipelines store."""
        return {"digest": self.digest, "fields": self.fields}

    def changes(self, old: Mapping[str, Any]) -> list[str]:
        """`field old -> new` for every field that differs from an older fingerprint's."""
        keys = sorted(set(old) | set(self.fields))
        return [
            f"{k} {_show(old.get(k))} -> {_show(self.fields.get(k))}" for k in keys if old.get(k) != self.fields.get(k)
        ]


def _show(v: Any) -> str:
    return "unset" if v is None else json.dumps(v)  # as YAML writes it: true, 0.001, "digits"


def _flat(section: str, values: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, Mapping):
            out.update(_flat(f"{section}.{k}", v))
        else:
            out[f"{section}.{k}"] = v
    return out


def result_settings(train: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in train.model_dump(mode="json").items() if k not in EXECUTION_ONLY}


def expert_fingerprint(
    model: ExpertModelConfig, train: TrainConfig, dataset: str, checksum: str, cluster: int
) -> Fingerprint:
    return Fingerprint(
        {
            **_flat("expert", model.model_dump(mode="json")),
            "dataset.name": dataset,
            "dataset.checksum": checksum,
            "dataset.cluster": cluster,
            **_flat("train", result_settings(train)),
        }
    )


def router_fingerprint(
    router: RouterConfig, dataset: str, checksum: str, experts: Mapping[int, str]
) -> Fingerprint:
    """The router's weights depend on which experts' clusters it tells apart, not on the
    experts' weights; the pipeline's fingerprint adds those (pipeline_fingerprint)."""
    return Fingerprint(
        {
            **_flat("router.model", router.model.model_dump(mode="json")),
            "dataset.name": dataset,
            "dataset.checksum": checksum,
            "router.clusters": sorted(experts),
            **_flat("router.train", result_settings(router.train)),
        }
    )


GROWN_FROM = "router.grown_from"  # the digest of the router a grown one started from


def grown_fingerprint(fp: Fingerprint, parent: str) -> Fingerprint:
    """A router grown from the router of digest `parent` (its head widened by new classes and
    fine-tuned): its weights depend on that parent too, so it is another version than one of the
    same settings trained from scratch."""
    return Fingerprint({**fp.fields, GROWN_FROM: parent})


def pipeline_fingerprint(
    router: Fingerprint | Mapping[str, Any], experts: Mapping[int, Mapping[str, Any] | None]
) -> Fingerprint:
    """A published pipeline: its router's fingerprint (or record) and each expert's (by cluster)."""
    return Fingerprint(
        {
            "router": router.digest if isinstance(router, Fingerprint) else router.get("digest"),
            **{f"expert.{k}": (fp or {}).get("digest") for k, fp in sorted(experts.items())},
        }
    )


def check_resume(found: Mapping[str, Any] | None, want: Fingerprint, where: str) -> None:
    """Refuse to resume checkpoints of another fingerprint, naming what changed. Checkpoints
    written before fingerprints existed carry none: they are resumed as before."""
    if not found or found.get("digest") in (None, want.digest):
        return
    changed = want.changes(found.get("fields") or {})
    raise ParisError(
        f"{where} holds checkpoints of other settings ({'; '.join(changed) or 'fingerprint ' + found['digest']}): "
        "resuming would mix them. Train into another prefix (a new model name; the operator versions it "
        "for you) or delete that one"
    )
