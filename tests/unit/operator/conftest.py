"""Shared inputs for the operator's pure-function tests: resource bodies as the API sends them."""

from __future__ import annotations

from typing import Any

import pytest

from paris.config import OperatorSettings

ALL_EXPERTS = {k: f"models/digits/experts/{k}" for k in range(8)}  # cluster -> prefix, as routers pass them


def expert_body(name: str = "digits-expert-3", **spec: Any) -> dict[str, Any]:
    base = {
        "model": "digits",
        "cluster": 3,
        "pool": "a40",
        "storage": {"uri": "s3://paris", "secretName": "paris-s3"},
        "train": {"steps": 30, "checkpoint_every": 15},
        "resources": {"limits": {"nvidia.com/gpu": 1}},
    }
    base.update(spec)
    return {
        "apiVersion": "paris.dev/v1alpha1",
        "kind": "ParisExpert",
        "metadata": {"name": name, "namespace": "ns1", "uid": "uid-123", "generation": 1},
        "spec": base,
    }


def router_body(name: str = "digits", **spec: Any) -> dict[str, Any]:
    base = {
        "model": "digits",
        "experts": {"matchLabels": {"paris.dev/model": "digits"}, "count": 8},
        "storage": {"uri": "s3://paris/prefix", "endpoint": "minio:9000"},
        "router": {"train": {"steps": 30}},
        "pool": "cpu",
        "inference": {"routing": "top2", "steps": 4, "pool": "cpu"},
    }
    base.update(spec)
    return {
        "apiVersion": "paris.dev/v1alpha1",
        "kind": "ParisRouter",
        "metadata": {"name": name, "namespace": "ns1", "uid": "uid-r", "generation": 1},
        "spec": base,
    }


@pytest.fixture
def settings() -> OperatorSettings:
    return OperatorSettings.model_validate(
        {
            "trainerImage": "example.org/paris-trainer:test",
            "s3Endpoint": "minio.minio.svc:9000",
            "credentialsSecret": "default-creds",
            "pools": {
                "a40": {
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "16Gi"}},
                },
                "cpu": {"nodeSelector": {"kubernetes.io/arch": "amd64"}},
            },
        }
    )
