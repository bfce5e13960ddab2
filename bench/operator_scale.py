"""The operator at scale: N ParisExperts applied at once, against the real test control plane.

Starts MinIO and the control plane of the e2e tier (tests/servers: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kwok node pools), the operator as the chart runs
it (`kopf run -m paris.operator`, the chart's RBAC, the chart's default settings), then
creates N ParisExperts at once (concurrent POSTs) and polls until every one has its
Job and a status naming that Job (phase, conditions). Reports the time to all Jobs and to
all statuses, counted from the start of the apply, and the operator's API calls.

Needs the test servers (scripts/test-infra build; `eval "$(scripts/test-infra env)"`).

    python -m bench.operator_scale                  # 200 experts (bench/README.md)
    python -m bench.operator_scale --experts 1000
    python -m bench.operator_scale --quick          # 10 experts; tests/e2e runs this
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from paris.config import API_GROUP, API_VERSION
from tests.servers.cluster import FAKE_NODE_TOLERATIONS, Cluster, start_cluster
from tests.servers.minio import MinioServer, start_minio
from tests.servers.procs import ServerProcess, free_port

REPO = Path(__file__).resolve().parents[1]
COMPONENT = "app.kubernetes.io/component=expert"


DATASET_CLUSTERS = 8  # examples/k8s/dataset.yaml, prepared into the bucket first


def expert_manifest(i: int, bucket: str) -> dict[str, Any]:
    """Expert i of model scale-i, on one of the prepared dataset's clusters: every one trains
    into a store prefix of its own (the operator refuses two experts of one prefix)."""
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "ParisExpert",
        "metadata": {"name": f"scale-expert-{i}", "labels": {"paris.dev/model": "scale"}},
        "spec": {
            "model": f"scale-{i}",
            "cluster": i % DATASET_CLUSTERS,
            "pool": "cpu",
            "storage": {"uri": f"s3://{bucket}", "secretName": "paris-s3"},
            "train": {"steps": 10},
            "tolerations": [t for t in FAKE_NODE_TOLERATIONS if t["key"] == "kwok.x-k8s.io/node"],
        },
    }


def start_operator(
    cluster: Cluster, ns: str, minio: MinioServer, workdir: Path, port: int, src: Path = REPO
) -> ServerProcess:
    """The operator with the chart's ServiceAccount rights, the chart's default settings and
    its command line (no --verbose), plus --standalone (no peering) as in the e2e tier."""
    from tests.e2e.test_operator import chart_rbac_kubeconfig

    kubeconfig, _ = chart_rbac_kubeconfig(cluster, ns, workdir)
    env = {
        **{k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "VIRTUAL_ENV", "TMPDIR")},
        "KUBECONFIG": str(kubeconfig),
        "PARIS_S3_ENDPOINT": minio.url,
        "PYTHONPATH": str(src),  # which checkout's paris.operator runs
    }
    argv = [sys.executable, "-m", "kopf", "run", "-m", "paris.operator", "--standalone", f"--namespace={ns}"]
    argv.append(f"--liveness=http://127.0.0.1:{port}/healthz")
    return ServerProcess("operator", argv, workdir / "operator.log", env=env, cwd=REPO)


def create_all(cluster: Cluster, ns: str, docs: list[dict[str, Any]], threads: int = 16) -> None:
    """Create every resource at once: concurrent POSTs, as a GitOps tool or a script would
    (`kubectl apply` sends one at a time, which alone takes ~0.1 s per object here)."""
    from concurrent.futures import ThreadPoolExecutor

    from kubernetes import client

    custom: Any = client.CustomObjectsApi(cluster.api_client())

    def create(doc: dict[str, Any]) -> None:
        custom.create_namespaced_custom_object(API_GROUP, API_VERSION, ns, "parisexperts", doc)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(create, docs))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def healthy(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def custom_api(cluster: Cluster) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(cluster.api_client())


def snapshot(cluster: Cluster, ns: str) -> tuple[int, int]:
    """(Jobs of experts, ParisExperts whose status names their Job).

    Raw JSON, not the client's model objects: turning 200 Jobs into those took seconds of
    CPU on a busy machine, which both coarsened the timeline and took a core from the
    operator under test."""
    from kubernetes import client

    raw = cluster.batch().list_namespaced_job(ns, label_selector=COMPONENT, _preload_content=False)
    jobs = json.loads(raw.data)["items"]
    custom: Any = client.CustomObjectsApi(cluster.api_client())
    crs = custom.list_namespaced_custom_object(API_GROUP, API_VERSION, ns, "parisexperts")["items"]
    with_status = sum(
        1 for cr in crs if (cr.get("status") or {}).get("jobName") and (cr.get("status") or {}).get("phase")
    )
    return len(jobs), with_status


def run(n: int, workdir: Path, timeout: float, log: Any, src: Path = REPO) -> dict[str, Any]:
    with start_minio(workdir / "minio") as minio, start_cluster(workdir / "k8s") as cluster:
        ns = "scale"
        cluster.core().create_namespace({"metadata": {"name": ns}})
        deadline = time.monotonic() + 60
        while not cluster.core().list_namespaced_service_account(ns).items and time.monotonic() < deadline:
            time.sleep(0.2)
        cluster.core().create_namespaced_secret(
            ns,
            {
                "metadata": {"name": "paris-s3"},
                "stringData": {"AWS_ACCESS_KEY_ID": minio.access_key, "AWS_SECRET_ACCESS_KEY": minio.secret_key},
            },
        )
        bucket = minio.make_bucket()
        # The operator creates an expert's Job only once its dataset is in the store (it
        # fingerprints the expert by the dataset's parts): `paris data prepare`, as a user would.
        from tests.e2e.test_operator import prepare_dataset

        prepare_dataset(minio, bucket, workdir)
        log("prepared the dataset")
        port = free_port()
        op = start_operator(cluster, ns, minio, workdir, port, src)
        try:
            # Ready when its liveness endpoint answers (startup handlers done, watchers started).
            deadline = time.monotonic() + 120
            while not healthy(port):
                if not op.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"the operator did not start:\n{op.log_path.read_text()[-3000:]}")
                time.sleep(0.2)
            # ... and until it acts: one probe ParisExpert gets its Job (the watch may still be
            # retrying right after startup; that is not the time this benchmark is about).
            probe = expert_manifest(n, bucket) | {"metadata": {"name": "scale-probe"}}
            cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(probe))
            deadline = time.monotonic() + 120
            while (seen := snapshot(cluster, ns)) != (1, 1):
                if not op.alive() or time.monotonic() > deadline:
                    probe_now = custom_api(cluster).get_namespaced_custom_object(
                        API_GROUP, API_VERSION, ns, "parisexperts", "scale-probe"
                    )
                    raise RuntimeError(
                        f"the operator did not act: (Jobs, statuses) = {seen}, the probe's status "
                        f"{probe_now.get('status')}\n{op.log_path.read_text()[-3000:]}"
                    )
                time.sleep(0.2)
            cpu0 = cpu_seconds(op.pid)
            plane0 = {name: cpu_seconds(proc.proc.pid) for name, proc in cluster.processes.items()}
            bench0 = time.process_time()
            t0 = time.monotonic()
            create_all(cluster, ns, [expert_manifest(i, bucket) for i in range(n)])
            applied = time.monotonic() - t0
            log(f"applied {n} ParisExperts in {applied:.1f}s")
            timeline: list[tuple[float, int, int]] = []
            t_jobs = t_status = None
            while time.monotonic() - t0 < timeout:
                jobs, statuses = (c - 1 for c in snapshot(cluster, ns))  # the probe's are not counted
                now = time.monotonic() - t0
                timeline.append((round(now, 2), jobs, statuses))
                if t_jobs is None and jobs >= n:
                    t_jobs = now
                if t_status is None and statuses >= n:
                    t_status = now
                if t_jobs is not None and t_status is not None:
                    break
                if not op.alive():
                    raise RuntimeError(f"the operator died:\n{op.log_path.read_text()[-3000:]}")
                time.sleep(0.5)
            operator_cpu = cpu_seconds(op.pid) - cpu0
            # Where the machine's CPU went meanwhile: the control plane's servers, and this
            # process's own polling (both compete with the operator on a small machine).
            procs = cluster.processes
            plane_cpu = {name: round(cpu_seconds(procs[name].proc.pid) - c, 2) for name, c in plane0.items()}
            bench_cpu = time.process_time() - bench0
        finally:
            op.stop()
        return {
            "experts": n,
            "apply_s": round(applied, 2),
            "all_jobs_s": None if t_jobs is None else round(t_jobs, 2),
            "all_status_s": None if t_status is None else round(t_status, 2),
            "operator_cpu_s": round(operator_cpu, 2),
            "control_plane_cpu_s": plane_cpu,
            "bench_cpu_s": round(bench_cpu, 2),
            "timeline": timeline,
            "control_plane": cluster.version,
        }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experts", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    ap.add_argument("--quick", action="store_true", help="10 experts")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--workdir", type=Path, help="default: a temporary folder")
    ap.add_argument(
        "--operator-src",
        type=Path,
        nargs="+",
        default=[REPO],
        help="checkouts whose paris.operator to run, alternately --rounds times each (e.g. . and an older one)",
    )
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args(argv)
    n = 10 if args.quick else args.experts

    def log(m: str) -> None:
        print(m, file=sys.stderr, flush=True)

    runs: list[dict[str, Any]] = []
    for r in range(args.rounds):
        for src in args.operator_src:  # interleaved: the load of the machine falls on each alike
            with tempfile.TemporaryDirectory(prefix="paris-scale-") as tmp:
                out = run(n, (args.workdir or Path(tmp)) / f"{r}-{len(runs)}", args.timeout, log, src.resolve())
            out["operator_src"] = str(src)
            out["load_avg"] = [round(x, 2) for x in os.getloadavg()]
            print(
                f"{src}: {n} ParisExperts created in {out['apply_s']}s; all {n} Jobs after {out['all_jobs_s']}s; "
                f"all statuses after {out['all_status_s']}s (from the start of the creation); the operator used "
                f"{out['operator_cpu_s']} CPU-s meanwhile, the control plane {out['control_plane_cpu_s']}, this "
                f"process {out['bench_cpu_s']}; load average {out['load_avg']}",
                flush=True,
            )
            runs.append(out)
    result = {"goal": "all Jobs and statuses within 30 s", "experts": n, "runs": runs}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
