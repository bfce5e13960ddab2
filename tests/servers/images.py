"""The locally built images (scripts/test-infra build images) and containers run from them.

No container engine can run containers on these machines (crun's cgroup setup is refused), but
buildah's chroot isolation can: `buildah run --isolation chroot` runs a process in an image's
root filesystem, as a given user, with bind mounts, on the host's network. The pod runner
(image mode) and the e2e operator use it through `Container`; what it emulates of a Kubernetes
container is listed there.

Image references are `localhost/paris-<name>:<hash of the image inputs>`, as printed by
`scripts/test-infra image-ref NAME`, so a test never runs an image built from other sources than
the tree under test.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
TEST_INFRA = REPO / "scripts" / "test-infra"
NAMES = ("operator", "trainer")
RUNTIME_VAR = "PARIS_POD_RUNTIME"
_BUILD_HINT = "run `scripts/test-infra build images` (cold: ~25 min; after a change under paris/: ~1 min)"

# Top-level directories a read-only root leaves alone: kernel filesystems and /run, where
# buildah bind-mounts its own files (/run/.containerenv); /run's subdirectories are covered.
_NOT_ROOTFS = frozenset({"dev", "proc", "sys", "run"})
# `subprocess exited on <signal>` from buildah (Go's signal names): a signal death is reported
# as exit status 1, so the pod runner maps it back to 128 + signal like a container runtime.
SIGNALS = {"hangup": 1, "interrupt": 2, "quit": 3, "aborted": 6, "killed": 9, "segmentation fault": 11,
           "terminated": 15}
_SIGNAL_RE = re.compile(r"subprocess exited on (" + "|".join(SIGNALS) + r")")
START_ERROR = "process failed to start with error"
# In every command name of `buildah run`'s own processes (buildah, memfd:buildah-chroot-...):
# they SIGKILL the container's process on SIGTERM, so a pod's SIGTERM goes past them.
RUNTIME_PROCESS_NAME = "buildah"


def storage_env() -> dict[str, str]:
    """The environment for buildah: the image store of scripts/test-infra ($PARIS_CACHE/containers)."""
    env = dict(os.environ)
    if "CONTAINERS_STORAGE_CONF" not in env:
        cache = env.get("PARIS_CACHE") or str(Path.home() / ".cache" / "paris")
        env["CONTAINERS_STORAGE_CONF"] = str(Path(cache) / "containers" / "storage.conf")
    return env


def buildah(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["buildah", *args], capture_output=True, text=True, env=storage_env(), timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


@functools.cache
def image_ref(name: str) -> str:
    """The tag image `name` has for this tree (computed once per session)."""
    res = subprocess.run([str(TEST_INFRA), "image-ref", name], capture_output=True, text=True, check=True)
    return res.stdout.strip()


def have_image(ref: str) -> bool:
    if not Path(storage_env()["CONTAINERS_STORAGE_CONF"]).is_file():
        return False
    try:
        return buildah("inspect", "--type", "image", ref, check=False).returncode == 0
    except FileNotFoundError:  # no buildah at all
        return False


def require_image(name: str) -> str:
    """The reference of a built image; fails the test (never skips) when it is not built."""
    ref = image_ref(name)
    if not have_image(ref):
        pytest.fail(f"image {ref} is not built for this tree: {_BUILD_HINT}", pytrace=False)
    return ref


def skip_if_process_mode() -> None:
    """Tests of the images themselves skip only when the images are explicitly out of the test."""
    if os.environ.get(RUNTIME_VAR) == "process":
        pytest.skip(f"{RUNTIME_VAR}=process: the images are not under test")


# Working containers are named <prefix><pid of the test process>-..., so that a later run can
# remove what a killed one left behind without touching the containers of a live run.
CONTAINER_PREFIX = "paris-test-"


def container_name(*parts: str) -> str:
    return "-".join([f"{CONTAINER_PREFIX}{os.getpid()}", *parts])


def pod_runtime() -> str:
    """How the e2e tier runs pods and the operator: "image" or "process".

    $PARIS_POD_RUNTIME=image|process forces one (scripts/test sets image: CI must test the
    images); unset, the images are used when they are built for this tree, else processes.
    """
    want = os.environ.get(RUNTIME_VAR, "auto")
    if want not in ("auto", "image", "process"):
        pytest.fail(f"{RUNTIME_VAR}={want!r}: expected image, process or auto", pytrace=False)
    if want == "auto":
        return "image" if all(have_image(image_ref(n)) for n in NAMES) else "process"
    if want == "image":
        for n in NAMES:
            require_image(n)
    return want


@dataclass(frozen=True)
class ImageConfig:
    """What Kubernetes takes from an image: entrypoint, cmd, user, working dir, env."""

    id: str
    entrypoint: list[str]
    cmd: list[str]
    user: str
    workdir: str
    env: dict[str, str]


@functools.cache
def image_config(ref: str) -> ImageConfig:
    out = json.loads(buildah("inspect", "--type", "image", ref).stdout)
    cfg = out["OCIv1"]["config"]
    env = dict(e.split("=", 1) for e in cfg.get("Env") or [])
    return ImageConfig(
        id=out["FromImageID"],
        entrypoint=list(cfg.get("Entrypoint") or []),
        cmd=list(cfg.get("Cmd") or []),
        user=cfg.get("User") or "",
        workdir=cfg.get("WorkingDir") or "/",
        env=env,
    )


def container_argv(image: ImageConfig, command: Sequence[str] | None, args: Sequence[str] | None) -> list[str]:
    """Kubernetes' rule: `command` replaces ENTRYPOINT (and drops CMD), `args` replaces CMD."""
    if command:
        return [*command, *(args or [])]
    return [*image.entrypoint, *(image.cmd if args is None else args)]


def image_uid(user: str) -> int | None:
    """The numeric uid of an image's USER ("10001", "10001:10001"), None when it is a name."""
    uid = (user or "0").split(":")[0]
    return int(uid) if uid.isdigit() else None


@dataclass(frozen=True)
class Volume:
    """A host directory bind-mounted into the container (an emptyDir, a kubeconfig...)."""

    host: Path
    path: str
    read_only: bool = False


class Container:
    """A working container of an image; each `argv()` is one `buildah run` in it.

    Emulated of a Kubernetes container: the command (image ENTRYPOINT/CMD rules are the
    caller's), the user (uid[:gid]), env on top of the image's, the working dir, the hostname,
    volumes as bind mounts, and readOnlyRootFilesystem: every top-level directory of the root
    filesystem (and of /run) is bind-mounted read-only over itself, so a write outside a volume
    fails with EROFS as it would in a pod. "/" itself stays writable for root only, which a
    non-root pod cannot use anyway. The network is the host's: pods reach the test servers on
    127.0.0.1. Not emulated: resource limits, capabilities, seccomp (no cgroups here).
    """

    def __init__(self, image: str, name: str) -> None:
        self.image = image
        self.name = name
        _remove_stale_containers()
        buildah("from", "--pull=never", "--quiet", "--name", name, image)
        self._mountpoint: Path | None = None

    def mountpoint(self) -> Path:
        if self._mountpoint is None:
            self._mountpoint = Path(buildah("mount", self.name).stdout.strip())
        return self._mountpoint

    def _read_only_binds(self, volumes: Sequence[Volume]) -> list[str]:
        root = self.mountpoint()
        covered = {v.path.rstrip("/") for v in volumes}
        dirs = [f"/{p.name}" for p in sorted(root.iterdir()) if p.is_dir() and not p.is_symlink()]
        run = root / "run"
        if run.is_dir():
            dirs += [f"/run/{p.name}" for p in sorted(run.iterdir()) if p.is_dir() and not p.is_symlink()]
        out = []
        for d in dirs:
            if d.lstrip("/") in _NOT_ROOTFS or d in covered:
                continue
            out += ["--volume", f"{root}{d}:{d}:ro"]
        return out

    def argv(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        user: str | None = None,
        volumes: Sequence[Volume] = (),
        read_only: bool = False,
        workdir: str | None = None,
        hostname: str | None = None,
    ) -> list[str]:
        """The host command line that runs `argv` inside the container."""
        cmd = ["buildah", "run", "--isolation", "chroot", "--network", "host"]
        if user:
            cmd += ["--user", user]
        if hostname:
            cmd += ["--hostname", hostname]
        if workdir:
            cmd += ["--workingdir", workdir]
        for key, value in env.items():
            cmd += ["--env", f"{key}={value}"]
        if read_only:
            cmd += self._read_only_binds(volumes)
        for v in volumes:
            if read_only:
                self._make_mountpoint(v.path)
            cmd += ["--volume", f"{v.host}:{v.path}:{'ro' if v.read_only else 'rw'}"]
        return [*cmd, self.name, "--", *argv]

    def _make_mountpoint(self, path: str) -> None:
        """Create a volume's mount point missing from the image before the root turns read-only,
        as the kubelet does. Never through a symlink: an absolute link in the image (/var/run ->
        /run) would point into the host; buildah resolves those inside the container itself."""
        cur = self.mountpoint()
        for part in Path(path).parts[1:]:
            cur = cur / part
            if cur.is_symlink():
                return
            if not cur.exists():
                cur.mkdir(mode=0o755)

    def run(self, argv: Sequence[str], timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run to completion and capture the output (for checks of an image's contents)."""
        return subprocess.run(self.argv(argv, **kw), capture_output=True, text=True, env=storage_env(),
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def remove(self) -> None:
        buildah("rm", self.name, check=False)

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def exit_status(returncode: int, stderr_tail: str) -> tuple[int, str]:
    """(exit code, reason) of a `buildah run` as a kubelet reports them: a signal death is
    128 + signal, a command that cannot start is 128 with reason StartError."""
    if START_ERROR in stderr_tail:
        return 128, "StartError"
    if returncode == 1 and (m := _SIGNAL_RE.findall(stderr_tail)):
        return 128 + SIGNALS[m[-1]], "Error"
    return returncode, "Completed" if returncode == 0 else "Error"


@functools.cache
def _remove_stale_containers() -> None:
    """Once per test process: remove the working containers of test processes that are gone."""
    with contextlib.suppress(FileNotFoundError, RuntimeError):
        names = buildah("containers", "--format", "{{.ContainerName}}").stdout.split()
        for name in names:
            m = re.match(re.escape(CONTAINER_PREFIX) + r"(\d+)-", name)
            if not m:
                continue
            try:
                os.kill(int(m.group(1)), 0)
            except ProcessLookupError:
                buildah("rm", name, check=False)
            except PermissionError:
                pass
