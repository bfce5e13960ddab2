"""CRD manifests generated from the pydantic specs in paris.config (the one source of truth).

`python -m paris.operator.crds` writes crds/ and charts/paris/crds/; `--check` exits 1 when
either differs from what the models generate, so a model change cannot ship with stale CRDs.

pydantic emits JSON Schema (2020-12); Kubernetes wants a *structural* OpenAPI v3.0 schema:
no $ref, a type on every node, `nullable` instead of `anyOf [X, null]`, boolean exclusive
bounds, int-or-string for quantities, preserve-unknown-fields for pass-through objects.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from paris.config import API_GROUP, API_VERSION, ParisDatasetSpec, ParisExpertSpec, ParisRouterSpec

REPO = Path(__file__).resolve().parents[2]
OUTPUT_DIRS = (REPO / "crds", REPO / "charts" / "paris" / "crds")

_KEEP = (  # a tuple, not a set: key order must not depend on hash randomization
    "type",
    "description",
    "default",
    "enum",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "required",
    "format",
)


def _deref(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        return {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def to_structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """One pydantic JSON-schema node -> one Kubernetes structural-schema node."""
    node = _deref(node, defs)
    out: dict[str, Any] = {}
    if "allOf" in node and len(node["allOf"]) == 1:
        node = {**_deref(node["allOf"][0], defs), **{k: v for k, v in node.items() if k != "allOf"}}
    if "anyOf" in node:
        branches = [_deref(b, defs) for b in node["anyOf"]]
        non_null = [b for b in branches if b.get("type") != "null"]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if len(non_null) == 1:
            out = to_structural({**non_null[0], **rest}, defs)
        elif sorted(str(b.get("type")) for b in non_null) == ["integer", "string"]:
            out = {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True}
            pattern = next((b["pattern"] for b in non_null if "pattern" in b), None)
            if pattern:
                out["pattern"] = pattern
            if "description" in rest:
                out["description"] = rest["description"]
        else:
            raise ValueError(f"cannot express anyOf {branches} in a structural schema")
        if len(non_null) < len(branches):
            out["nullable"] = True
        if rest.get("default") is not None:
            out["default"] = rest["default"]
        return out
    for key in _KEEP:
        if key in node and node[key] is not None:
            out[key] = node[key]
    out.update({k: v for k, v in node.items() if k.startswith("x-kubernetes-")})
    if "const" in node:
        out["enum"] = [node["const"]]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), int | float) and not isinstance(node.get(bound), bool):
            out[plain] = node[bound]
            out[bound] = True
    if node.get("type") == "object" or "properties" in node or "additionalProperties" in node:
        out["type"] = "object"
        if "properties" in node:
            out["properties"] = {k: to_structural(v, defs) for k, v in node["properties"].items()}
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            out["additionalProperties"] = to_structural(extra, defs)
        elif (extra is True or extra == {}) and "properties" not in node:
            out["x-kubernetes-preserve-unknown-fields"] = True
    if node.get("type") == "array":
        out["items"] = to_structural(node.get("items", {}), defs)
    if "type" not in out and "x-kubernetes-preserve-unknown-fields" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True  # Any: kept as written
    return out


def spec_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return to_structural(raw, raw.get("$defs", {}))


def _column(name: str, path: str, typ: str = "string", priority: int = 0, description: str = "") -> dict[str, Any]:
    col: dict[str, Any] = {"name": name, "type": typ, "jsonPath": path}
    if priority:
        col["priority"] = priority
    if description:
        col["description"] = description
    return col


EXPERT_COLUMNS = [
    _column("Model", ".spec.model", priority=1),
    _column("Cluster", ".spec.cluster", "integer", description="Cluster index k"),
    _column("Pool", ".spec.pool", description="Node pool"),
    _column("Phase", ".status.phase"),
    _column("Progress", ".status.progress", description="step/totalSteps"),
    _column("Loss", ".status.loss", "number"),
    _column("Device", ".status.device", priority=1),
    _column("Checkpoint", ".status.checkpoint", priority=1),
    _column("Queue", ".spec.queueName", priority=1, description="Kueue LocalQueue"),
    _column("Age", ".metadata.creationTimestamp", "date"),
]

ROUTER_COLUMNS = [
    _column("Model", ".spec.model"),
    _column("Experts", ".status.expertsReady", description="Succeeded/selected experts"),
    _column("Phase", ".status.phase"),
    _column("Routing", ".spec.inference.routing", priority=1),
    _column("Queue", ".spec.queueName", priority=1, description="Kueue LocalQueue"),
    _column("Endpoint", ".status.endpoint"),
    _column("Age", ".metadata.creationTimestamp", "date"),
]


DATASET_COLUMNS = [
    _column("Dataset", ".spec.data.name", description="datasets/<name>/ in the store"),
    _column("Clusters", ".spec.data.clusters", "integer", description="K"),
    _column("Stage", ".status.stage", description="features, cluster, encode, finalize"),
    _column("Indexes", ".status.indexesDone", description="Indexes of the stage done/total"),
    _column("Samples", ".status.samples", "integer"),
    _column("Phase", ".status.phase"),
    _column("Sizes", ".status.clusterSizes", priority=1, description="Samples per cluster"),
    _column("Queue", ".spec.queueName", priority=1, description="Kueue LocalQueue"),
    _column("Age", ".metadata.creationTimestamp", "date"),
]


def crd(kind: str, plural: str, short: list[str], model: type[BaseModel], columns: list[dict[str, Any]]) -> dict:
    doc = (model.__doc__ or kind).strip().splitlines()[0]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{API_GROUP}",
            "labels": {"app.kubernetes.io/part-of": "paris"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short,
                "categories": ["paris"],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": doc,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(model),
                                # Written by the operator only (see paris/operator/status.py);
                                # kopf keeps its own bookkeeping here too.
                                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            },
                        }
                    },
                }
            ],
        },
    }


class _NoAliases(yaml.SafeDumper):
    """Write repeated lists out in full: anchors in a CRD only confuse readers."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def generate() -> dict[str, str]:
    """File name -> YAML text of every CRD."""
    docs = {
        f"{API_GROUP}_parisexperts.yaml": crd("ParisExpert", "parisexperts", ["pe"], ParisExpertSpec, EXPERT_COLUMNS),
        f"{API_GROUP}_parisrouters.yaml": crd("ParisRouter", "parisrouters", ["pr"], ParisRouterSpec, ROUTER_COLUMNS),
        f"{API_GROUP}_parisdatasets.yaml": crd(
            "ParisDataset", "parisdatasets", ["pd"], ParisDatasetSpec, DATASET_COLUMNS
        ),
    }
    header = "# Generated by `python -m paris.operator.crds` from paris/config.py: do not edit.\n"
    return {name: header + yaml.dump(d, Dumper=_NoAliases, sort_keys=False, width=120) for name, d in docs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Exit 1 if the files on disk differ")
    args = parser.parse_args(argv)
    stale = []
    docs = generate()
    for d in OUTPUT_DIRS:
        # Both folders hold generated CRDs only: a file no model generates any more is stale too.
        leftovers = sorted(p for p in d.glob("*.yaml") if p.name not in docs) if d.is_dir() else []
        for path in [*(d / name for name in docs), *leftovers]:
            text = docs.get(path.name)
            if args.check:
                if text is None or not path.is_file() or path.read_text() != text:
                    stale.append(str(path.relative_to(REPO) if path.is_relative_to(REPO) else path))
            elif text is None:
                path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    if stale:
        print("stale CRDs (run `python -m paris.operator.crds`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
