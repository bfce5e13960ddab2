"""The CRDs in crds/ and in the chart are exactly what the pydantic models generate, and
they are structural schemas the API server accepts (the e2e tier applies them for real)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from paris.operator import crds

REPO = Path(__file__).resolve().parents[3]


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "crds" / f"paris.dev_{name}.yaml").read_text())


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for k, v in (schema.get("properties") or {}).items():
        yield from nodes(v, f"{path}.{k}")
    if isinstance(schema.get("items"), dict):
        yield from nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}{{}}")


def test_generated_files_are_up_to_date() -> None:
    assert crds.main(["--check"]) == 0, "run `python -m paris.operator.crds` and commit the result"


def test_chart_carries_the_same_crds() -> None:
    for f in (REPO / "crds").glob("*.yaml"):
        assert (REPO / "charts" / "paris" / "crds" / f.name).read_text() == f.read_text()


def test_check_detects_drift(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crds, "OUTPUT_DIRS", (tmp_path,))
    assert crds.main([]) == 0
    assert crds.main(["--check"]) == 0
    victim = next(tmp_path.glob("*.yaml"))
    victim.write_text(victim.read_text().replace("minimum: 1", "minimum: 2", 1))
    assert crds.main(["--check"]) == 1


@pytest.mark.parametrize("name", ["parisexperts", "parisrouters"])
def test_schemas_are_structural(name: str) -> None:
    version = load(name)["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    for path, node in nodes(schema["properties"]["spec"], "spec"):
        assert "$ref" not in node and "title" not in node and "$defs" not in node, path
        assert node.get("additionalProperties") is not False, path
        typed = (
            "type" in node or node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        )
        assert typed, f"{path} has no type"
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), path
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert node.get(bound, True) is True, f"{path}: {bound} must be boolean in OpenAPI v3.0"
    assert version["subresources"] == {"status": {}}
    assert schema["properties"]["status"]["x-kubernetes-preserve-unknown-fields"] is True


def test_expert_crd_reads_at_a_glance() -> None:
    doc = load("parisexperts")
    names = doc["spec"]["names"]
    assert names["kind"] == "ParisExpert" and "paris" in names["categories"] and names["shortNames"] == ["pe"]
    cols = {c["name"]: c for c in doc["spec"]["versions"][0]["additionalPrinterColumns"]}
    for want in ("Cluster", "Pool", "Phase", "Progress", "Loss", "Age"):
        assert want in cols and cols[want].get("priority", 0) == 0
    assert cols["Progress"]["jsonPath"] == ".status.progress"
    assert cols["Age"]["type"] == "date"


def test_validation_rules_come_from_the_models() -> None:
    spec = load("parisexperts")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert {"model", "cluster", "storage"} <= set(spec["required"])
    train = spec["properties"]["train"]["properties"]
    assert train["steps"]["minimum"] == 1 and train["steps"]["default"] == 1500
    assert train["lr"] == {**train["lr"], "minimum": 0, "exclusiveMinimum": True}
    assert spec["properties"]["expert"]["properties"]["preset"]["enum"] == ["tiny", "S", "B", "L", "XL"]
    limits = spec["properties"]["resources"]["properties"]["limits"]["additionalProperties"]
    assert limits["x-kubernetes-int-or-string"] is True and "pattern" in limits

    router = load("parisrouters")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    routing = router["properties"]["inference"]["properties"]["routing"]
    assert routing["pattern"].startswith("^(top1|top2|topk:") and routing["default"] == "top2"
    rules = router["properties"]["experts"]["x-kubernetes-validations"]
    assert "matchLabels" in rules[0]["rule"] and "names" in rules[0]["rule"]


def test_one_command_writes_and_checks_both_crd_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """crds/ and charts/paris/crds/ come from one run; --check fails on drift in either one."""
    top, chart = tmp_path / "crds", tmp_path / "charts" / "paris" / "crds"
    monkeypatch.setattr(crds, "OUTPUT_DIRS", (top, chart))
    assert crds.main([]) == 0
    assert sorted(p.name for p in top.iterdir()) == sorted(p.name for p in chart.iterdir()) == sorted(crds.generate())
    for d in (top, chart):
        victim = d / next(iter(crds.generate()))
        good = victim.read_text()
        victim.write_text(good + "# edited by hand\n")
        assert crds.main(["--check"]) == 1, f"drift in {d} went unnoticed"
        victim.unlink()
        assert crds.main(["--check"]) == 1, f"a missing file in {d} went unnoticed"
        victim.write_text(good)
        assert crds.main(["--check"]) == 0
    # A CRD no model generates any more (a renamed kind) is stale in either folder, and removed.
    (chart / "paris.dev_parisold.yaml").write_text("kind: CustomResourceDefinition\n")
    assert crds.main(["--check"]) == 1
    assert crds.main([]) == 0 and not (chart / "paris.dev_parisold.yaml").exists()
    assert crds.main(["--check"]) == 0


def test_the_generator_targets_both_folders_of_the_repository() -> None:
    assert {d.relative_to(crds.REPO).as_posix() for d in crds.OUTPUT_DIRS} == {"crds", "charts/paris/crds"}


def test_every_job_running_resource_takes_the_queue_and_ttl_fields_from_one_mixin() -> None:
    from paris.config import BatchJobOptions, ParisExpertSpec, ParisRouterSpec

    for model, name in ((ParisExpertSpec, "parisexperts"), (ParisRouterSpec, "parisrouters")):
        assert issubclass(model, BatchJobOptions)
        props = load(name)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        assert props["queueName"]["maxLength"] == 63 and "pattern" in props["queueName"]
        assert props["ttlSecondsAfterFinished"]["minimum"] == 0
        cols = {c["name"]: c for c in load(name)["spec"]["versions"][0]["additionalPrinterColumns"]}
        assert cols["Queue"]["jsonPath"] == ".spec.queueName"
