"""Process plumbing shared by the servers: binaries, free ports, process groups, readiness waits."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

_BUILD_HINT = 'run `scripts/test-infra build` (then `eval "$(scripts/test-infra env)"`)'


def bin_dir() -> Path:
    """Where scripts/test-infra puts the binaries: $PARIS_TEST_BIN, else $PARIS_CACHE/bin."""
    if os.environ.get("PARIS_TEST_BIN"):
        return Path(os.environ["PARIS_TEST_BIN"])
    cache = os.environ.get("PARIS_CACHE") or str(Path.home() / ".cache" / "paris")
    return Path(cache) / "bin"


def binary(name: str) -> str:
    """Path of a built server binary; fails the test (never skips) when it is missing,
    so a CI run without the servers cannot pass by testing nothing."""
    path = bin_dir() / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{name} not found at {path}: {_BUILD_HINT}", pytrace=False)
    return str(path)


def free_port() -> int:
    """A loopback port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


class ServerDied(RuntimeError):
    """A server process exited while we waited for it."""


class PortInUse(ServerDied):
    """A server lost the race for the free port we picked; starting again with new ports helps."""


_PR_SET_PDEATHSIG = 1


_prctl: Any
try:  # resolved here, not in the forked child, where loading a library is unsafe
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the test process dies, even by SIGKILL, so a killed
    pytest (a CI time-out) cannot leave servers running."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))


class ServerProcess:
    """A child process in its own process group, logging to a file, killed as a group.

    Its own group (start_new_session) means teardown also reaps anything it forked, and a
    Ctrl-C in the terminal does not race our orderly shutdown.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def died(self, what: str) -> ServerDied:
        """The error for a server that exited early; PortInUse when it lost a port race."""
        tail = self.log_tail(200)
        error = PortInUse if "address already in use" in tail.lower() else ServerDied
        return error(
            f"{self.name} exited with {self.proc.returncode} while waiting for {what}; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the whole group, SIGKILL what is left after `grace` seconds."""
        kill_group(self.proc, grace)
        self._log.close()


def group_members(pgid: int) -> list[tuple[int, str]]:
    """(pid, command name) of every live process in a process group."""
    out = []
    for p in psutil.process_iter(["name"]):
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(p.pid) == pgid:
                out.append((p.pid, p.info["name"]))
    return out


def kill_group(proc: subprocess.Popen[bytes], grace: float = 10.0, spare: str | None = None) -> None:
    """Terminate a process started with start_new_session=True and everything in its group.

    `spare`: SIGTERM goes only to the members whose command name lacks it (a container
    runtime's own processes, which would SIGKILL their child on SIGTERM), so the container's
    processes get their grace period; if there are none yet, the whole group gets it."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = proc.pid
    inside = [pid for pid, comm in group_members(pgid) if spare not in comm] if spare else []
    for pid in inside:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if not inside:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    # Children may outlive the leader: kill the group unconditionally.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    server: ServerProcess | None = None,
    interval: float = 0.2,
) -> None:
    """Poll `check` until true; fail with the server's log tail if it dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if server is not None and not server.alive():
            raise server.died(what)
        try:
            if check():
                return
        except ServerDied:
            raise
        except Exception:  # not up yet: connection refused, 404, half-written file, ...
            pass
        if time.monotonic() > deadline:
            tail = f"; log {server.log_path}:\n{server.log_tail()}" if server else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")
        time.sleep(interval)
