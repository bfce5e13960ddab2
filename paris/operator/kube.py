"""The few Kubernetes API calls the handlers make, with dicts in and dicts out.

Creation is create-or-get by deterministic name: a 409 means an earlier run (or another
handler racing this one) already made it, which is the state we want, so it is not an error.
"""

from __future__ import annotations

import base64
import os
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from paris.config import API_GROUP, API_VERSION

_api: client.ApiClient | None = None


# As many connections as the handler threads (kopf's execution.max_workers, set in handlers):
# the client's default pool (5 per CPU) made threads wait for a connection.
CONNECTIONS = 32


def login() -> None:
    """In-cluster credentials in a pod, else $KUBECONFIG / ~/.kube/config."""
    global _api
    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=cfg)
    cfg.connection_pool_maxsize = CONNECTIONS
    _api = client.ApiClient(cfg)


def api() -> client.ApiClient:
    if _api is None:
        login()
    assert _api is not None
    return _api


def to_dict(obj: Any) -> dict[str, Any]:
    """A client model -> the camelCase dict the API would have sent."""
    return api().sanitize_for_serialization(obj)


def _kind_api(kind: str) -> tuple[Any, str]:
    if kind == "Job":
        return client.BatchV1Api(api()), "job"
    if kind == "Deployment":
        return client.AppsV1Api(api()), "deployment"
    if kind == "Service":
        return client.CoreV1Api(api()), "service"
    raise ValueError(f"unsupported kind {kind}")


def get(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    a, noun = _kind_api(kind)
    try:
        return to_dict(getattr(a, f"read_namespaced_{noun}")(name, namespace))
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def create_or_get(obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(the object in the cluster, whether this call created it)."""
    a, noun = _kind_api(obj["kind"])
    ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    try:
        return to_dict(getattr(a, f"create_namespaced_{noun}")(ns, obj)), True
    except ApiException as err:
        if err.status != 409:
            raise
    existing = get(obj["kind"], ns, name)
    if existing is None:  # deleted between our create and get: the next reconcile creates it
        raise RuntimeError(f"{obj['kind']} {ns}/{name} exists and vanished; retrying")
    return existing, False


def replace(obj: dict[str, Any], resource_version: str) -> dict[str, Any]:
    """PUT the whole object (a merge patch would keep map keys the new spec dropped)."""
    a, noun = _kind_api(obj["kind"])
    body = {**obj, "metadata": {**obj["metadata"], "resourceVersion": resource_version}}
    ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    return to_dict(getattr(a, f"replace_namespaced_{noun}")(name, ns, body))


def delete(kind: str, namespace: str, name: str, uid: str) -> None:
    """Delete in the foreground: the object stays (with a deletionTimestamp) until its pods
    are gone, so `get` tells when a successor may start. The uid precondition makes sure
    that what goes is the object we looked at, never a namesake created meanwhile."""
    a, noun = _kind_api(kind)
    options = client.V1DeleteOptions(propagation_policy="Foreground", preconditions=client.V1Preconditions(uid=uid))
    try:
        getattr(a, f"delete_namespaced_{noun}")(name, namespace, body=options)
    except ApiException as err:
        if err.status not in (404, 409):  # gone already, or a namesake (uid mismatch): not ours
            raise


def list_jobs(namespace: str, selector: str) -> list[dict[str, Any]]:
    jobs = client.BatchV1Api(api()).list_namespaced_job(namespace, label_selector=selector)
    return [to_dict(j) for j in jobs.items]


def list_pods(namespace: str, selector: str) -> list[dict[str, Any]]:
    pods = client.CoreV1Api(api()).list_namespaced_pod(namespace, label_selector=selector)
    return [to_dict(p) for p in pods.items]


def list_experts(namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
    objs = client.CustomObjectsApi(api()).list_namespaced_custom_object(
        API_GROUP, API_VERSION, namespace, "parisexperts", label_selector=selector or ""
    )
    return list(objs.get("items") or [])  # type: ignore[attr-defined]


def get_dataset(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        obj = client.CustomObjectsApi(api()).get_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, "parisdatasets", name
        )
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    return cast(dict[str, Any], obj)


def read_secret_keys(namespace: str, name: str, keys: tuple[str, ...]) -> tuple[dict[str, str] | None, str | None]:
    """(values of `keys`, None) or (None, a message saying what is missing). Values are never
    logged or written anywhere but into the store client."""
    try:
        secret = client.CoreV1Api(api()).read_namespaced_secret(name, namespace)
    except ApiException as err:
        if err.status == 404:
            return None, f"Secret {namespace}/{name} not found: create it with keys {', '.join(keys)}"
        if err.status == 403:
            return None, f"the operator may not read Secret {namespace}/{name} (RBAC)"
        raise
    data = secret.data or {}
    missing = [k for k in keys if k not in data]
    if missing:
        return None, f"Secret {namespace}/{name} has no key {', '.join(missing)}"
    return {k: base64.b64decode(data[k]).decode() for k in keys}, None
