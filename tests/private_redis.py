"""A redis-server of one test's own, which the test may stop and start again.

It keeps an append-only file synced on every write, so a restart, even after SIGKILL,
keeps every queued and unacknowledged message, as a production Redis with persistence does.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import require_redis
from tests.waiting import wait_until

__all__ = ["RedisServer", "redis_server"]


class RedisServer:
    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(self._answers, "redis-server to start")

    def stop(self, *, crash: bool = False) -> None:
        """Stop the server: SIGTERM, or with ``crash`` SIGKILL."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL if crash else signal.SIGTERM)
            self.process.wait(timeout=10)
            self.process = None

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


def redis_server(directory: Path) -> Iterator[RedisServer]:
    """Start a server keeping its files in ``directory``; stop it after the test."""
    require_redis()
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed; CI must provide it.")
        pytest.skip("redis-server is not installed")
    server = RedisServer(binary, directory)
    server.start()
    yield server
    server.stop()
