"""The paper's configuration through the operator, on the real control plane and the real MinIO:
VAE latents, DINOv2 clustering features and open_clip caption states (small random-weight
models standing in for sd-vae-ft-mse, DINOv2 and CLIP ViT-L/14). The weights live in the
store, as on a cluster where pods share nothing else: a ParisDataset prepares the data with
them, two ParisExperts train on it, a ParisRouter trains, publishes a pipeline whose open_clip
text encoder gives the states the captions were encoded to, and serves it; the endpoint
generates an image from a prompt, and `paris generate` / `paris eval` work on the published
pipeline from outside the cluster.

Sized for 2 shared CPU cores: 40 images of 16x16, 2 indexes, 4-step experts and router,
2 sampling steps.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load as safetensors_load

from paris.config import StorageConfig
from paris.data.shards import load_manifest, read_shard
from paris.layout import dataset_prefix
from paris.router.assemble import load_pipeline
from paris.storage import open_store
from tests import tiny_models
from tests.e2e.test_dataset import PER_TAR, TARS, upload_tars
from tests.e2e.test_operator import Operator, apply, create_secret, get_cr, pod_env, with_fake_node_toleration
from tests.e2e.test_operator import operator as operator  # the fixture
from tests.helpers import eventually
from tests.servers.cluster import Cluster
from tests.servers.minio import MinioServer
from tests.servers.podrunner import PodRunner

pytestmark = pytest.mark.timeout(1800)

NAME = "paper"
SMALL = {"preset": "tiny", "hidden_size": 32, "depth": 1, "heads": 2, "patch_size": 2}
TRAIN = {"steps": 4, "batch_size": 4, "checkpoint_every": 4, "log_every": 1, "threads": 1}


def upload_encoders(minio: MinioServer, bucket: str, workdir: Path) -> dict[str, str]:
    """Make the three tiny encoders, copy them into the bucket as a user would (`mc cp -r`),
    and delete the local copies: the pods can only get them from the store. Their URIs."""
    local = Path(tempfile.mkdtemp(dir=workdir))
    clip = tiny_models.tiny_open_clip(local / "clip")
    made = {
        "vae": tiny_models.tiny_vae(local / "vae"),
        "dinov2": tiny_models.tiny_dinov2(local / "dinov2"),
        "clip/paris-tiny-clip.json": clip,
        "clip/weights.safetensors": tiny_models.tiny_open_clip_checkpoint(clip, local / "weights.safetensors"),
    }
    client = minio.client()
    for name, path in made.items():
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            key = f"encoders/{name}/{f.relative_to(path).as_posix()}" if path.is_dir() else f"encoders/{name}"
            client.fput_object(bucket, key, str(f))
    shutil.rmtree(local)
    return {name: f"s3://{bucket}/encoders/{name}" for name in made}


def paper_data(bucket: str, weights: dict[str, str]) -> dict[str, Any]:
    """The `data` section: the one block a user copies between the dataset and the router."""
    return {
        "name": NAME,
        "source": "webdataset",
        "path": f"s3://{bucket}/raw/squares",
        "image_size": 16,
        "vae": weights["vae"],
        "features": {"kind": "dinov2", "path": weights["dinov2"], "pca_dim": 8},
        "text_encoder": {
            "kind": "open_clip",
            "model": weights["clip/paris-tiny-clip.json"],
            "pretrained": weights["clip/weights.safetensors"],
            "max_length": 12,
        },
        "clusters": 2,
        "fine_clusters": 4,
        "holdout_fraction": 0.25,
        "batch_size": 8,
    }


def manifests(bucket: str, data: dict[str, Any]) -> list[dict[str, Any]]:
    api = "paris.dev/v1alpha1"
    storage = {"uri": f"s3://{bucket}"}
    dataset: dict[str, Any] = {"storage": storage, "data": data, "indexes": 2, "parallelism": 2, "pool": "cpu"}
    docs: list[dict[str, Any]] = [
        {"apiVersion": api, "kind": "ParisDataset", "metadata": {"name": NAME}, "spec": dataset}
    ]
    for k in range(2):
        spec = {
            "model": NAME,
            "cluster": k,
            "dataset": NAME,
            "storage": storage,
            "expert": SMALL,
            "train": TRAIN,
            "pool": "cpu",
        }
        docs.append({"apiVersion": api, "kind": "ParisExpert", "metadata": {"name": f"{NAME}-{k}"}, "spec": spec})
    router: dict[str, Any] = {
        "model": NAME,
        "experts": {"names": [f"{NAME}-0", f"{NAME}-1"]},
        "storage": storage,
        "data": data,
        "router": {"model": {k: v for k, v in SMALL.items() if k != "preset"}, "train": TRAIN},
        "pool": "cpu",
        "inference": {"steps": 2, "routing": "top2", "pool": "cpu"},
    }
    docs.append({"apiVersion": api, "kind": "ParisRouter", "metadata": {"name": NAME}, "spec": router})
    for d in docs:
        with_fake_node_toleration(d["spec"])
    with_fake_node_toleration(router["inference"])
    return docs


def pod_logs(cluster: Cluster, runner: PodRunner, ns: str, selector: str) -> str:
    pods = cluster.core().list_namespaced_pod(ns, label_selector=selector).items
    assert pods, f"no pod matches {selector}"
    return "\n".join(runner.logs(p.metadata.name, ns) for p in pods)


def test_the_papers_configuration_prepares_trains_and_serves_through_the_operator_with_weights_in_the_store(
    k8s_cluster: Cluster,
    k8s_namespace: str,
    minio_server: MinioServer,
    pod_runner: PodRunner,
    operator: Operator,
    tmp_path: Path,
) -> None:
    ns, cluster = k8s_namespace, k8s_cluster
    bucket = minio_server.make_bucket()
    upload_tars(minio_server, bucket)
    weights = upload_encoders(minio_server, bucket, tmp_path)
    create_secret(cluster, ns, minio_server)
    pod_runner.env.update(pod_env(minio_server, pod_runner))
    if pod_runner.runtime == "process":  # the pods' cache in this test's folder, not the host's /tmp/.cache
        pod_runner.env["XDG_CACHE_HOME"] = str(tmp_path / "pod-cache")

    def debug() -> str:
        return f"{cluster.kubectl('get', 'paris,jobs,pods', '-n', ns, '-o', 'wide', check=False).stdout}\n" + (
            f"{operator.logs()}\n{pod_runner.describe()}"
        )

    data = paper_data(bucket, weights)
    res = apply(cluster, ns, manifests(bucket, data))
    assert res.returncode == 0, res.stderr

    def router_ready() -> dict[str, Any] | None:
        st = get_cr(cluster, ns, "parisrouters", NAME).get("status") or {}
        if (
            st.get("phase") == "Failed"
            or (get_cr(cluster, ns, "parisdatasets", NAME).get("status") or {}).get("phase") == "Failed"
        ):
            pytest.fail(f"the dataset or the router failed: {st}\n{debug()}")
        return st if st.get("phase") == "Ready" else None

    st = eventually(router_ready, 1200, "the ParisRouter to be Ready", debug)
    assert st["expertsReady"] == "2/2"
    dataset = get_cr(cluster, ns, "parisdatasets", NAME)["status"]
    assert dataset["phase"] == "Ready" and dataset["samples"] == TARS * PER_TAR
    for k in range(2):
        assert get_cr(cluster, ns, "parisexperts", f"{NAME}-{k}")["status"]["phase"] == "Succeeded"

    # The pods got the encoders from the store: the local copies were deleted before any pod ran.
    encode = pod_logs(cluster, pod_runner, ns, "paris.dev/stage=encode")
    for setting in ("data.vae", "data.text_encoder.model", "data.text_encoder.pretrained"):
        assert f"fetching {setting} from s3://{bucket}/encoders/" in encode, encode
    assert "fetching data.features.path from s3://" in pod_logs(cluster, pod_runner, ns, "paris.dev/stage=features")

    # The dataset is the paper's: VAE latents, open_clip token states.
    env = {**os.environ, **minio_server.env(), "OMP_NUM_THREADS": "1"}
    store = open_store(
        StorageConfig(uri=f"s3://{bucket}", endpoint=minio_server.endpoint),
        access_key=minio_server.access_key,
        secret_key=minio_server.secret_key,
    )
    manifest = load_manifest(store, NAME)
    assert manifest["latent"]["space"] == "vae" and (manifest["latent"]["channels"], manifest["latent"]["size"]) == (
        4,
        8,
    )
    assert (
        manifest["text"]["kind"] == "open_clip"
        and manifest["text"]["pretrained"] == weights["clip/weights.safetensors"]
    )

    # The published pipeline carries open_clip's text tower, with the weights the captions
    # were encoded with (the checkpoint from the store, not a random init), and the VAE.
    with tempfile.TemporaryDirectory() as tmp:
        pipe = load_pipeline(store, NAME, Path(tmp))
        index = json.loads((Path(tmp) / "model_index.json").read_text())
    assert index["text_encoder"] == ["paris.router.text", "OpenClipTextModel"] and index["vae"][1] == "AutoencoderKL"
    # The router's pod put the VAE from the store into the pipeline (as processes, the pods share
    # one weights cache, so it may have found the encode pods' copy; in images each fetches).
    uploaded = minio_server.client().get_object(bucket, "encoders/vae/diffusion_pytorch_model.safetensors").read()
    for key, tensor in safetensors_load(uploaded).items():
        assert torch.equal(pipe.vae.state_dict()[key], tensor), key
    part = read_shard(store, dataset_prefix(NAME), manifest["clusters"][0]["shards"][0])
    states, mask = pipe.encode_prompt([part.captions[0]])
    assert torch.equal(mask[0], part.text_mask[0])
    torch.testing.assert_close(states[0][mask[0]], part.text_states[0][mask[0]].float(), atol=2e-2, rtol=1e-2)

    # The endpoint generates from a prompt: open_clip encodes it, two experts denoise, the VAE decodes.
    url = pod_runner.url_for_selector(f"app.kubernetes.io/instance={NAME},app.kubernetes.io/component=serve", ns)
    body = json.dumps({"prompt": "a blue square", "format": "json", "steps": 2, "seed": 1}).encode()
    req = urllib.request.Request(f"{url}/v1/generate", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        answer = json.loads(r.read())
    image = Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))
    assert image.size == (16, 16) and image.mode == "RGB", "8x8x4 latents decoded by the VAE"
    assert answer["routing"] == "top2" and len(answer["usage"]) == 2

    # From outside the cluster, `paris generate` and `paris eval` use the published pipeline;
    # with no sample.prompts, their prompts are held-out captions read from part headers.
    cfg = {
        "model": NAME,
        "storage": {"uri": f"s3://{bucket}"},
        "data": data,
        "expert": SMALL,
        "router": {"model": {k: v for k, v in SMALL.items() if k != "preset"}},
        "sample": {"steps": 2, "per_prompt": 1, "routing": ["top1"]},
    }
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for args in (["generate", str(path), "--count", "1", "--out", str(tmp_path / "gen")], ["eval", str(path)]):
        r = subprocess.run([sys.executable, "-m", "paris", *args], env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
    pngs = sorted((tmp_path / "gen").glob("*.png"))
    assert (tmp_path / "gen" / "grid.png") in pngs and Image.open(pngs[0]).size == (16, 16)
    scores = json.loads(minio_server.client().get_object(bucket, f"models/{NAME}/eval.json").read())
    assert scores["prompts"] and set(scores["prompts"]) <= {"a red square", "a green square", "a blue square"}
    assert len(scores["modes"]["top1"]["usage"]) == 2
