"""Ray clusters the suite starts for itself, on free ports and with token authentication.

The head and the joined node come from ``tests/raycluster.py`` (a clean environment, a
short ``--temp-dir`` of their own, a fresh token; stopping one ends only the processes of
its own session). ``BenchHead(dashboard=False)`` runs the head without the dashboard, as the
scale row wants (its workers use the GCS address only); Ray Job mode needs the dashboard.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.raycluster import START_TIMEOUT_S, RayHead, RayHeadError, RayNode

__all__ = ["BenchHead", "RayNode"]


class BenchHead(RayHead):
    """A one-node Ray head on 127.0.0.1 (never port 6379), optionally without a dashboard."""

    def __init__(self, num_cpus: int = 2, *, dashboard: bool = True) -> None:
        super().__init__(num_cpus)
        self.dashboard = dashboard

    def command(self) -> list[str]:
        command = super().command()
        if not self.dashboard:
            command.append("--include-dashboard=false")
        return command

    def _wait_until_serving(self) -> None:
        if self.dashboard:
            super()._wait_until_serving()
            return
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.proc is not None and self.proc.poll() is None:
            started = "Ray runtime started" in self.log.read_text(errors="replace")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
                if started:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        tail = self.log.read_text(errors="replace")[-2000:]
        self.stop()
        raise RayHeadError(f"The Ray head at {self.gcs_address} did not come up:\n{tail}")
