"""A management command in a subprocess, its output collected on a thread (for tests that
talk to a running worker or scheduler while it runs)."""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Callable
from typing import Any

from tests.waiting import wait_until

__all__ = ["Process"]


class Process:
    """Run ``command`` with ``env``; ``log`` is everything it printed so far."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"process exited ({self.proc.returncode}):\n{self.log}")

    def wait_for(self, condition: Callable[[], Any], what: str, timeout: float = 30) -> Any:
        """``wait_until(condition)``, failing at once if the process exits meanwhile."""

        def met() -> Any:
            value = condition()
            if value:
                return value
            self.check_alive()
            return None

        return wait_until(met, what, timeout=timeout, details=lambda: self.log)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self) -> int:
        """SIGTERM (a graceful stop), then the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
