"""Which store prefix each ParisExpert trains into, and who may when two claim the same one.

An expert writes `models/<model>/experts/<cluster>/` of its store and nothing else; two
resources naming the same (store, model, cluster) would train into one prefix at once and
corrupt each other's checkpoints. The oldest claimant keeps the prefix; every later one is
refused (no Job) until it is changed or deleted, and both carry a condition saying so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from paris.config import OperatorSettings, ParisExpertSpec

from .builders import s3_endpoint

ClaimKey = tuple[str, str, str, str, int]  # namespace, endpoint, store uri, model, cluster


@dataclass(frozen=True, order=True)
class Claim:
    created: str  # metadata.creationTimestamp: RFC 3339 in UTC sorts as time
    name: str
    uid: str


def claim_key(namespace: str, spec: ParisExpertSpec, settings: OperatorSettings) -> ClaimKey:
    return (namespace, s3_endpoint(spec.storage, settings) or "", spec.storage.uri, spec.model, spec.cluster)


def claim_of(body: Mapping[str, Any], settings: OperatorSettings) -> dict[ClaimKey, Claim] | None:
    """The index entry of one ParisExpert (kopf.index): None for a spec that does not parse."""
    try:
        spec = ParisExpertSpec.model_validate(dict(body["spec"]))
    except ValidationError:
        return None
    meta = body["metadata"]
    claim = Claim(str(meta.get("creationTimestamp") or ""), meta["name"], str(meta.get("uid") or ""))
    return {claim_key(meta["namespace"], spec, settings): claim}


@dataclass(frozen=True)
class Verdict:
    owner: Claim  # the claimant that trains into the prefix
    others: tuple[Claim, ...]  # every other claimant: refused

    def refused(self, name: str) -> bool:
        return self.owner.name != name


def judge(name: str, claimants: Iterable[Claim]) -> Verdict | None:
    """None when `name` is the only claimant of its prefix."""
    everyone = sorted(set(claimants))
    if len(everyone) < 2 or name not in {c.name for c in everyone}:
        return None
    return Verdict(everyone[0], tuple(everyone[1:]))


def describe(verdict: Verdict, name: str, model: str, cluster: int) -> str:
    if verdict.refused(name):
        return (
            f"ParisExpert {verdict.owner.name} already trains model {model} cluster {cluster} into the same store "
            f"prefix: this one is refused (no Job) until its model, cluster or storage changes"
        )
    others = ", ".join(c.name for c in verdict.others)
    return f"ParisExpert {others} also claims model {model} cluster {cluster} in this store and was refused"
