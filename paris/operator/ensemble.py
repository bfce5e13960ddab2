"""Which experts a ParisRouter trains over: a pure function of the ParisExperts it selects.

The router routes over exactly the experts its selection names, never `0..K-1` of a model by
convention. They must share one store, model and dataset and cover distinct clusters; a
selection that does not is refused with a condition (nothing trains). An ensemble may run
degraded: once every selected expert has Succeeded or Failed (none still on its way) and at
least `experts.count` Succeeded, the router trains over those; when a missing one succeeds
later, the set changes, so the router trains again and rolls forward.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from paris.config import DataConfig, ParisExpertSpec, ParisRouterSpec

from .builders import expert_store_prefix

SUCCEEDED, FAILED = "Succeeded", "Failed"


@dataclass
class Ensemble:
    selected: list[str]  # names of the selected ParisExperts, sorted
    minimum: int  # the least number of Succeeded experts the router accepts
    problem: str | None = None  # why the selection is refused
    succeeded: dict[str, tuple[int, str]] = field(default_factory=dict)  # name -> (cluster, prefix)
    failed: dict[str, str] = field(default_factory=dict)  # name -> why (its status message)
    waiting: dict[str, str] = field(default_factory=dict)  # name -> its phase (neither of the above)

    @property
    def settled(self) -> bool:
        return bool(self.selected) and not self.waiting

    def use(self) -> dict[int, str] | None:
        """cluster -> prefix of the experts to train over now; None: not (yet) possible."""
        if self.problem is not None or not self.settled or len(self.succeeded) < self.minimum:
            return None
        return dict(self.succeeded.values())

    def names_of(self, clusters: Mapping[int, str]) -> list[str]:
        return sorted(n for n, (k, _) in self.succeeded.items() if k in clusters)

    def missing(self, served: Sequence[str]) -> list[str]:
        """The selected experts a pipeline of `served` lacks, each with why."""
        out = []
        for name in self.selected:
            if name in served:
                continue
            if name in self.failed:
                out.append(f"{name} (Failed: {self.failed[name]})" if self.failed[name] else f"{name} (Failed)")
            elif name in self.waiting:
                out.append(f"{name} ({self.waiting[name] or 'Pending'})")
            else:
                out.append(f"{name} (Succeeded, not yet in the served pipeline)")
        return out


def _current(expert: Mapping[str, Any]) -> tuple[str, str]:
    """(phase, message) of an expert for the spec it has now: a phase observed for an older
    generation says nothing about the current spec."""
    st = expert.get("status") or {}
    gen = expert["metadata"].get("generation")
    if gen is not None and st.get("observedGeneration") != gen:
        return "Pending", ""
    return str(st.get("phase") or "Pending"), str(st.get("message") or "")


def dataset_of(spec: ParisExpertSpec, datasets: Mapping[str, Mapping[str, Any] | None]) -> str | None:
    """The data name an expert trains on: its named ParisDataset's (whose data section replaces
    the expert's own), or its own. None while that ParisDataset is missing: the expert waits
    for it, and its name is not known yet."""
    if spec.dataset is None:
        return spec.data.name
    found = datasets.get(spec.dataset)
    if found is None:
        return None
    data = (found.get("spec") or {}).get("data") or {}
    return str(data.get("name") or DataConfig.model_fields["name"].default)


def ensemble(
    router: ParisRouterSpec,
    experts: Sequence[Mapping[str, Any]],
    datasets: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> Ensemble:
    """`datasets`: the ParisDatasets the experts name, by name (None: not found)."""
    names = sorted(e["metadata"]["name"] for e in experts)
    ens = Ensemble(names, router.experts.count or len(names))
    if not experts:
        return ens
    by_cluster: dict[int, list[str]] = {}
    problems: list[str] = []
    for e in sorted(experts, key=lambda e: e["metadata"]["name"]):
        name = e["metadata"]["name"]
        phase, message = _current(e)
        try:
            spec = ParisExpertSpec.model_validate(dict(e.get("spec") or {}))
        except ValidationError:
            ens.failed[name] = message or "invalid spec"
            continue
        if spec.model != router.model:
            problems.append(f"{name} trains model {spec.model}, not the router's {router.model}")
        data = dataset_of(spec, datasets or {})
        if data is not None and data != router.data.name:
            problems.append(f"{name} trains on dataset {data}, not the router's {router.data.name}")
        if spec.storage.uri != router.storage.uri:
            problems.append(f"{name} stores into {spec.storage.uri}, not the router's {router.storage.uri}")
        by_cluster.setdefault(spec.cluster, []).append(name)
        if phase == SUCCEEDED:
            # Where it trained: its status's versioned prefix (the unversioned one before versions).
            prefix = str((e.get("status") or {}).get("prefix") or expert_store_prefix(spec))
            ens.succeeded[name] = (spec.cluster, prefix)
        elif phase == FAILED:
            ens.failed[name] = message
        else:
            ens.waiting[name] = phase
    for k, owners in sorted(by_cluster.items()):
        if len(owners) > 1:
            problems.append(f"{' and '.join(owners)} all cover cluster {k}")
    if problems:
        ens.problem = "the selected experts must share one model, dataset and store and cover distinct clusters: " + (
            "; ".join(problems)
        )
    return ens
