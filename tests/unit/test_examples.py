"""The example manifests and configs are valid for the models they feed, and the Kubernetes
example trains the same router as the digits demo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from paris.config import ParisDatasetSpec, ParisExpertSpec, ParisRouterSpec, RunConfig, load_config

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "examples" / "k8s"
SPECS: dict[str, type[ParisExpertSpec] | type[ParisRouterSpec] | type[ParisDatasetSpec]] = {
    "ParisExpert": ParisExpertSpec,
    "ParisRouter": ParisRouterSpec,
    "ParisDataset": ParisDatasetSpec,
}


def manifests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("apiVersion", "").startswith("paris.dev/"):
                out.append((f"{path.name}:{doc['metadata']['name']}", doc))
    return out


@pytest.mark.parametrize(("where", "doc"), manifests(), ids=[w for w, _ in manifests()])
def test_every_paris_manifest_is_a_valid_spec(where: str, doc: dict[str, Any]) -> None:
    SPECS[doc["kind"]].model_validate(doc["spec"])


@pytest.mark.parametrize("path", ["examples/digits.yaml", "examples/k8s/dataset.yaml"])
def test_every_config_loads(path: str) -> None:
    assert isinstance(load_config(REPO / path), RunConfig)


def test_the_k8s_router_is_the_digits_demos_router() -> None:
    """The demo's router reads the caption (README "Routing": the text-blind one scores 0.69)."""
    demo = load_config(REPO / "examples" / "digits.yaml")
    (router,) = [d for _, d in manifests() if d["kind"] == "ParisRouter"]
    spec = ParisRouterSpec.model_validate(router["spec"])
    assert spec.router.model.condition_on_text is True
    assert spec.router.model == demo.router.model
    assert spec.router.train == demo.router.train
    assert spec.data.name == demo.data.name


def test_the_k8s_experts_cover_every_cluster_of_the_k8s_dataset() -> None:
    data = load_config(K8S / "dataset.yaml")
    experts = [ParisExpertSpec.model_validate(d["spec"]) for _, d in manifests() if d["kind"] == "ParisExpert"]
    assert sorted(e.cluster for e in experts) == list(range(data.data.clusters))
    assert {e.data.name for e in experts} == {data.data.name}


def test_the_k8s_parisdataset_prepares_what_the_k8s_dataset_config_does() -> None:
    """examples/k8s/parisdataset.yaml is the in-cluster way to make the same digits dataset."""
    data = load_config(K8S / "dataset.yaml").data
    (doc,) = [d for _, d in manifests() if d["kind"] == "ParisDataset"]
    spec = ParisDatasetSpec.model_validate(doc["spec"])
    assert spec.data == data


def test_the_paper_example_is_valid_and_its_weights_are_in_its_store() -> None:
    """examples/paper/k8s.yaml: a cluster's pods share only the store, so every encoder's
    weights are s3:// in the resources' bucket, and the router assembles the pipeline with the
    encoders the dataset was prepared with."""
    docs = [d for d in yaml.safe_load_all((REPO / "examples" / "paper" / "k8s.yaml").read_text()) if d]
    specs = [SPECS[d["kind"]].model_validate(d["spec"]) for d in docs]
    (dataset,) = [s for s in specs if isinstance(s, ParisDatasetSpec)]
    (router,) = [s for s in specs if isinstance(s, ParisRouterSpec)]
    experts = [s for s in specs if isinstance(s, ParisExpertSpec)]
    assert router.data == dataset.data
    assert sorted(e.cluster for e in experts) == list(range(dataset.data.clusters))
    assert {e.dataset for e in experts} == {"paper"} and {e.model for e in experts} == {router.model}
    data = dataset.data
    assert (data.vae, data.features.kind, data.text_encoder.kind) != (None, "pixels", "minilm")
    weights = [data.vae, data.features.path, data.text_encoder.pretrained]
    assert all(w and w.startswith(dataset.storage.uri + "/") for w in weights), weights
