"""Real servers for the integration and e2e tiers: MinIO, a Kubernetes control plane with
fake kwok node pools, and a pod runner that plays the kubelet with local processes.

Binaries come from `scripts/test-infra build`; the fixtures live in `tests.servers.fixtures`.
"""
