"""A throwaway Ray head node for tests, started with ``ray start`` and token authentication.

Use it from a test module or a conftest::

    from tests.raycluster import ray_head_fixture

    ray_head = ray_head_fixture()  # module-scoped fixture yielding a started RayHead

    def test_something(ray_head):
        subprocess.run([...], env={**os.environ, **ray_head.env()})

The head gets free ports instead of Ray's defaults (so it never meets Redis on 6379 or another
Ray), its own short ``--temp-dir`` and a fresh token. :meth:`RayHead.stop` ends only the
processes of the session it started; if the test process dies first, ``ray start --block``
gets SIGTERM from Linux and takes the head down itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, NoReturn

import pytest

RAY_EXE = Path(sys.executable).parent / "ray"
ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60.0
# The only variables a head inherits from the test process.
CLEAN_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER")


class RayHeadError(RuntimeError):
    """The Ray head could not be started."""


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now (never Redis' 6379)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port != 6379:
            return port


def session_pids(sid: int) -> list[int]:
    """Return the pids of live (non-zombie) processes whose session id is ``sid``."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()  # state ppid pgrp sid
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(entry.name))
        except (OSError, IndexError, ValueError):  # not a process, or already gone
            continue
    return pids


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this (child) process when its parent, the test process, dies."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def has_env(pid: int, marker: str) -> bool:
    """Return True if process ``pid`` was started with ``marker`` (NAME=value) in its env."""
    try:
        return marker.encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


class RayHead:
    """A single-node Ray cluster on 127.0.0.1 with 2 CPUs and token authentication."""

    def __init__(
        self,
        num_cpus: int = 2,
        *,
        token: str | None = None,
        port: int = 0,
        dashboard_port: int = 0,
        client_port: int = 0,
    ) -> None:
        """Ports left at 0 are picked free at each start; given ones (and ``token``) are kept."""
        self.num_cpus = num_cpus
        self.token = token or secrets.token_hex(32)
        self.port, self.dashboard_port, self.client_port = port, dashboard_port, client_port
        self._pinned_ports = (port, dashboard_port, client_port)
        self.temp_dir = ""
        self.log = Path(os.devnull)
        self.proc: subprocess.Popen[bytes] | None = None
        self.sid: int | None = None
        # Every process of the head inherits this; stop() kills nothing without it.
        self.marker = f"DJANGO_RAY_TEST_HEAD={secrets.token_hex(8)}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def client_address(self) -> str:
        return f"ray://127.0.0.1:{self.client_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self) -> dict[str, str]:
        """Return the environment variables a client process needs to use this head."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def command(self) -> list[str]:
        return [
            str(RAY_EXE), "start", "--head", f"--port={self.port}",
            f"--num-cpus={self.num_cpus}", "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={self.client_port}",
            f"--dashboard-agent-listen-port={free_port()}",
            "--min-worker-port=0", "--max-worker-port=0",
            f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
        ]  # fmt: skip

    def start(self, attempts: int = 2) -> RayHead:
        """Run ``ray start --head`` in a new session and wait until the Jobs API answers."""
        for attempt in range(attempts):  # a port picked as free may be taken meanwhile
            try:
                return self._start()
            except RayHeadError:
                if attempt == attempts - 1:
                    raise
        raise RayHeadError("attempts must be at least 1")

    def restart(self) -> RayHead:
        """Stop the head, then start a new one on the same ports with the same token.

        Clients see the same addresses again, as after a crash of the head node; the new
        head is a new cluster (no state survives).
        """
        self.stop()
        self._pinned_ports = (self.port, self.dashboard_port, self.client_port)
        return self.start()

    def _start(self) -> RayHead:
        self.port, self.dashboard_port, self.client_port = (
            pinned or free_port() for pinned in self._pinned_ports
        )
        # A short path: Ray's Unix sockets live below it and must stay under 107 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="drh", dir="/tmp")
        # Started apart from the project, as `ray start` on a cluster node is: none of the
        # project's environment (settings module, PYTHONPATH, DJANGO_RAY_*) and not its
        # directory. What task processes need must come through the worker's runtime_env.
        env = {k: os.environ[k] for k in CLEAN_ENV if k in os.environ}
        env.update(self.env(), RAY_USAGE_STATS_ENABLED="0")
        marker_name, marker_value = self.marker.split("=", 1)
        env[marker_name] = marker_value
        self.log = Path(self.temp_dir) / "ray-start.log"
        with self.log.open("wb") as out:
            # --block keeps `ray start` as the head's guardian: when it gets SIGTERM (also
            # when this test process dies, see _die_with_parent) it stops what it started.
            self.proc = subprocess.Popen(
                [*self.command(), "--block"], env=env, cwd=self.temp_dir, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
        self.sid = self.proc.pid
        self._wait_until_serving()
        return self

    def _wait_until_serving(self) -> None:
        """Wait for the Jobs API (with the token) and the Ray Client server to answer."""
        request = urllib.request.Request(
            f"{self.dashboard_url}/api/version", headers={"Authorization": f"Bearer {self.token}"}
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.proc is not None and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(request, timeout=2):
                    socket.create_connection(("127.0.0.1", self.client_port), timeout=2).close()
                    return
            except OSError:  # urllib.error.URLError is an OSError too
                time.sleep(0.3)
        tail = self.log.read_text(errors="replace")[-2000:]
        self.stop()
        raise RayHeadError(f"The Ray head at {self.gcs_address} did not come up:\n{tail}")

    def pids(self) -> list[int]:
        """Return the live processes of the head's session, or [] if it is not ours any more."""
        if self.sid is None:
            return []
        pids = session_pids(self.sid)
        # While a session has members its id cannot be reused, so one marked member proves it.
        return pids if any(has_env(pid, self.marker) for pid in pids) else []

    def stop(self, grace: float = 1.5) -> None:
        """Terminate every process of the head's session (SIGTERM, then SIGKILL)."""
        if self.sid is not None and self.pids():
            for sig in (signal.SIGTERM, signal.SIGKILL):
                for pid in session_pids(self.sid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
                deadline = time.monotonic() + grace
                while session_pids(self.sid) and time.monotonic() < deadline:
                    time.sleep(0.1)
        if self.proc is not None:  # our child: its pid cannot be reused before we reap it
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None
        self.sid = None
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = ""

    def __enter__(self) -> RayHead:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def ray_unavailable(reason: str) -> NoReturn:
    """Skip the calling test because Ray is unusable, or fail it under ``CI=true``."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must be able to run Ray.")
    pytest.skip(reason)  # raises


def require_ray() -> Any:
    """Return the ``ray`` module, or skip (fail under ``CI=true``) when Ray cannot run here."""
    try:
        import ray
    except ImportError as exc:
        ray_unavailable(f"Ray is not installed ({exc})")
    if not RAY_EXE.exists():
        ray_unavailable(f"The `ray` executable is missing next to {sys.executable}")
    return ray


def ray_head_fixture(
    scope: Literal["session", "package", "module", "class", "function"] = "module",
    name: str = "ray_head",
) -> Callable[..., Iterator[RayHead]]:
    """Build a pytest fixture ``name`` that yields a started :class:`RayHead`, then stops it."""

    @pytest.fixture(scope=scope, name=name)
    def ray_head() -> Iterator[RayHead]:
        require_ray()
        head = RayHead()
        try:
            head.start()
        except RayHeadError as exc:
            ray_unavailable(f"Ray cannot start a head node here: {exc}")
        try:
            yield head
        finally:
            head.stop()

    return ray_head


class RayNode:
    """A second node joined to a :class:`RayHead` with ``ray start --address``, as on a cluster.

    It starts apart from the project too (only ``CLEAN_ENV``, plus ``extra_env``: e.g. a
    variable that tells which node a task ran on) and offers ``resources`` so a task can
    ask to land on it.
    """

    def __init__(
        self,
        head: RayHead,
        *,
        num_cpus: int = 1,
        resources: dict[str, float] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.head = head
        self.num_cpus = num_cpus
        self.resources = resources or {}
        self.extra_env = extra_env or {}
        self.temp_dir = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RayNode:
        import json

        self.temp_dir = tempfile.mkdtemp(prefix="drn", dir="/tmp")
        env = {k: os.environ[k] for k in CLEAN_ENV if k in os.environ}
        env.update({**self.head.env(), **self.extra_env, "RAY_USAGE_STATS_ENABLED": "0"})
        log = Path(self.temp_dir) / "ray-start.log"
        command = [
            str(RAY_EXE), "start", f"--address={self.head.gcs_address}",
            f"--num-cpus={self.num_cpus}", f"--resources={json.dumps(self.resources)}",
            "--node-ip-address=127.0.0.1", f"--temp-dir={self.temp_dir}",
            f"--dashboard-agent-listen-port={free_port()}",
            "--min-worker-port=0", "--max-worker-port=0", "--disable-usage-stats", "--block",
        ]  # fmt: skip
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                command, env=env, cwd=self.temp_dir, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.proc.poll() is None:
            if "Ray runtime started" in log.read_text(errors="replace"):
                return self
            time.sleep(0.2)
        tail = log.read_text(errors="replace")[-2000:]
        self.stop()
        raise RayHeadError(f"The Ray node did not join {self.head.gcs_address}:\n{tail}")

    def stop(self, grace: float = 1.5) -> None:
        if self.proc is not None:
            sid = self.proc.pid
            for sig in (signal.SIGTERM, signal.SIGKILL):
                for pid in session_pids(sid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
                deadline = time.monotonic() + grace
                while session_pids(sid) and time.monotonic() < deadline:
                    time.sleep(0.1)
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = ""
