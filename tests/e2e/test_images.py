"""The two images as a cluster gets them: images/*/Dockerfile built by scripts/test-infra (buildah),
inspected, and run with `buildah run` the way the pod runner runs pods (tests/servers/images.py).

An image not built for this tree fails these tests with the command that builds it, whatever
the pod runtime: they test the images themselves, not the pods the runner plays.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.helpers import served_pipeline, tiny_config
from tests.servers import images

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

pytestmark = pytest.mark.timeout(1200)


def distributions(extra: str) -> list[str]:
    """Distribution names of the base dependencies plus one extra of pyproject.toml."""
    reqs = PROJECT["dependencies"] + PROJECT["optional-dependencies"][extra]
    return [re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0] for r in reqs]


# Fails (PackageNotFoundError) unless every distribution named in argv is installed.
HAS_ALL = "import importlib.metadata as m, sys; [m.version(d) for d in sys.argv[1:]]"
LIST_ALL = "import importlib.metadata as m, json; print(json.dumps([d.name.lower() for d in m.distributions()]))"


@pytest.fixture(scope="module")
def built() -> dict[str, str]:
    return {name: images.require_image(name) for name in images.NAMES}


@pytest.fixture(scope="module")
def containers(built: dict[str, str]) -> Iterator[dict[str, images.Container]]:
    """One working container per image, shared by the read-only checks of this module."""
    made = {name: images.Container(ref, images.container_name("test-images", name)) for name, ref in built.items()}
    try:
        yield made
    finally:
        for c in made.values():
            c.remove()


def run(
    c: images.Container,
    *argv: str,
    env: dict[str, str] | None = None,
    user: str | None = None,
    read_only: bool = False,
    volumes: tuple[images.Volume, ...] = (),
    timeout: float = 600,
) -> tuple[int, str]:
    """Run in the container with the image's env (plus `env`); exit code and output."""
    res = c.run(list(argv), env=env or {}, user=user, read_only=read_only, volumes=volumes, timeout=timeout)
    return res.returncode, res.stdout + res.stderr


@pytest.mark.parametrize("name", images.NAMES)
def test_each_image_runs_as_the_numeric_non_root_user_10001(
    name: str, built: dict[str, str], containers: dict[str, images.Container]
) -> None:
    cfg = images.image_config(built[name])
    # Numeric, so that the kubelet can check runAsNonRoot without reading /etc/passwd.
    assert cfg.user == "10001:10001"
    assert images.image_uid(cfg.user) == 10001
    code, out = run(containers[name], "sh", "-c", "id -u; id -g; echo $HOME")
    assert code == 0 and out.split() == ["10001", "10001", "/home/paris"], out


def test_the_trainer_image_runs_paris_by_default_with_every_trainer_dependency(
    built: dict[str, str], containers: dict[str, images.Container]
) -> None:
    ref, c = built["trainer"], containers["trainer"]
    cfg = images.image_config(ref)
    assert (cfg.entrypoint, cfg.cmd) == (["paris"], ["--help"])
    # What a pod without `command` runs: ENTRYPOINT + CMD.
    code, out = run(c, *images.container_argv(cfg, None, None))
    assert code == 0 and "train" in out and "serve" in out, out
    code, out = run(c, "paris", "train", "expert", "--help")
    assert code == 0 and "--cluster" in out, out
    names = distributions("trainer")
    assert "torch" in names and "diffusers" in names
    code, out = run(c, "python", "-c", HAS_ALL, *names)
    assert code == 0, out
    code, out = run(c, "python", "-c", "import torch, diffusers, transformers, fastapi, uvicorn, paris.trainer.loop")
    assert code == 0, out


def test_the_operator_image_runs_kopf_with_the_operator_extra_and_no_torch(
    built: dict[str, str], containers: dict[str, images.Container]
) -> None:
    ref, c = built["operator"], containers["operator"]
    cfg = images.image_config(ref)
    assert cfg.entrypoint == ["kopf", "run", "-m", "paris.operator"]
    assert "--standalone" in cfg.cmd
    for argv in (["kopf", "--help"], ["paris", "--help"], ["kopf", "run", "--help"]):
        code, out = run(c, *argv)
        assert code == 0 and "Usage" in out, (argv, out)
    code, out = run(c, "python", "-c", HAS_ALL, *distributions("operator"))
    assert code == 0, out
    code, out = run(c, "python", "-c", "import paris.operator.handlers")
    assert code == 0, out
    code, out = run(c, "python", "-c", "import torch")
    assert code != 0 and "No module named 'torch'" in out
    code, out = run(c, "python", "-c", LIST_ALL)
    assert code == 0, out
    heavy = [d for d in json.loads(out) if d in ("torch", "triton", "diffusers") or d.startswith("nvidia-")]
    assert heavy == [], heavy


# A shell check run as root (root can read everything): each line prints what it finds. Empty
# directories are fine (a cache mount leaves its mount point); files are not.
LEFTOVERS = r"""
for t in gcc cc c++ g++ make ld as cmake; do command -v "$t"; done
find / -xdev \( -name '*.whl' -o -type f -path '*/.cache/*' -o -path /opt/paris/build \
  -o -path '/opt/paris/*.egg-info' \) -print
find /var/lib/apt/lists /var/cache/apt/archives /tmp -mindepth 1 -type f ! -name lock -print 2>/dev/null
exit 0
"""


@pytest.mark.parametrize("name", images.NAMES)
def test_no_build_tools_or_caches_are_left_in_either_image(name: str, containers: dict[str, images.Container]) -> None:
    code, out = run(containers[name], "sh", "-c", LEFTOVERS, user="0:0")
    assert code == 0
    assert out.strip() == "", f"left in the {name} image:\n{out}"


def test_the_trainer_runs_every_command_with_a_read_only_root_writing_only_to_tmp(
    built: dict[str, str], tmp_path: Path
) -> None:
    """`paris run` (prepare, two experts, router, samples, scores) as the pods run: uid 10001,
    read-only root filesystem, an emptyDir at /tmp. A write anywhere else fails with EROFS."""
    tmp = tmp_path / "emptydir"
    tmp.mkdir()
    tmp.chmod(0o777)
    cfg = tiny_config("file:///tmp/store")
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    (tmp / "cfg.yaml").chmod(0o644)
    volumes = (images.Volume(tmp, "/tmp"),)
    with images.Container(built["trainer"], images.container_name("test-images", "readonly")) as c:
        # The emulation is real: the home directory, writable by the user, is read-only here.
        code, out = run(c, "sh", "-c", "touch /home/paris/x", user="10001:10001", read_only=True, volumes=volumes)
        assert code != 0 and "Read-only file system" in out, out
        code, out = run(
            c, "paris", "run", "/tmp/cfg.yaml", "--logs", "/tmp/logs",
            env={"OMP_NUM_THREADS": "1"}, user="10001:10001", read_only=True, volumes=volumes, timeout=1200,
        )
        assert code == 0, out
    store = tmp / "store" / "models" / "tiny"
    assert (served_pipeline(tmp / "store", "tiny") / "model_index.json").is_file()
    assert (store / "summary.json").is_file() and (store / "loss.png").is_file()
    # Everything on the emptyDir is the trainer's, written as its user.
    written = [p for p in tmp.rglob("*") if p.name != "cfg.yaml"]
    assert written and {os.stat(p).st_uid for p in written} == {10001}
