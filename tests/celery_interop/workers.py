"""Worker subprocesses for the interop tests: ``django_ray_worker --sync``, ``celery worker``.

The client is the test process, using real Celery. A worker runs for a whole module or
package (starting one costs about a second), on a queue of its own that is purged first.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from tests.conftest import ROOT, worker_command, worker_env
from tests.services import REDIS_URL
from tests.waiting import wait_until

CELERY_APP = "tests.celery_interop.celery_app.app"


@dataclass
class RunningWorker:
    """A worker subprocess and the file its output goes to."""

    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 20) -> None:
        """Wait until ``text`` appears in the worker's output (it logs when it is ready)."""

        def logged() -> bool:
            if text in self.output():
                return True
            if self.process.poll() is not None:
                raise AssertionError(f"Worker exited before logging {text!r}:\n{self.output()}")
            return False

        wait_until(logged, f"the worker to log {text!r}", timeout=timeout, details=self.output)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def interop_env(broker: str, queue: str, *, celery_app: bool = True) -> dict[str, str]:
    """Environment that points a worker and the Celery app at ``broker`` and ``queue``."""
    env = {
        "DJANGO_RAY_BROKER": broker,
        "CW_BROKER_URL": broker,
        "CW_RESULT_BACKEND": REDIS_URL,
        "CW_QUEUE": queue,
        "DJANGO_RAY_CELERY_RESULT_BACKEND": REDIS_URL,
        "DJANGO_RAY_CELERY_APP": CELERY_APP if celery_app else "",
    }
    return env


@contextmanager
def _spawn(
    command: list[str], env: dict[str, str], ready: str, timeout: float = 20
) -> Iterator[RunningWorker]:
    with tempfile.NamedTemporaryFile(prefix="cw-worker-", suffix=".log", delete=False) as fh:
        log = Path(fh.name)
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    worker = RunningWorker(process, log)
    try:
        worker.wait_for(ready, timeout)
        yield worker
    finally:
        worker.stop()
        log.unlink(missing_ok=True)


@contextmanager
def django_ray_worker(
    worker_id: str,
    queues: list[str],
    *,
    mode: tuple[str, ...] = ("--sync",),
    ready_timeout: float = 20,
    **env: str,
) -> Iterator[RunningWorker]:
    """Run ``django_ray_worker`` (``--sync`` unless told) until the block ends.

    It is ready once it hears revokes.
    """
    args = [*mode, "--worker-id", worker_id, *(f"--queue={q}" for q in queues)]
    command, full_env = worker_command(*args), worker_env(**env)
    with _spawn(command, full_env, "Listening for Celery revoke", ready_timeout) as w:
        yield w


@contextmanager
def celery_worker(name: str, queue: str, **env: str) -> Iterator[RunningWorker]:
    """Run a real ``celery worker --pool=solo`` on ``queue`` until the block ends."""
    full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    full_env.pop("DJANGO_SETTINGS_MODULE", None)  # a plain Celery project, no Django fixup
    command = [
        sys.executable, "-m", "celery", "-A", CELERY_APP, "worker", "--pool=solo",
        "-Q", queue, "-n", f"{name}@%h", "-l", "info",
        "--without-mingle", "--without-gossip", "--without-heartbeat",
    ]  # fmt: skip
    with _spawn(command, full_env, "ready.") as w:
        yield w


def purge_redis_queue(client: redis.Redis, queue: str) -> None:
    """Drop what an earlier run left in ``queue`` (its priority lists included)."""
    client.delete(queue, *(f"{queue}\x06\x16{step}" for step in (1, 2, 3, 4, 5, 6, 7, 8, 9)))


def result_meta(client: redis.Redis, task_id: str) -> dict[str, Any] | None:
    import json

    raw = client.get(f"celery-task-meta-{task_id}")
    return json.loads(raw) if raw is not None else None


def stored_meta(client: redis.Redis, task_id: str) -> dict[str, Any]:
    """Return the stored result meta of ``task_id``, failing if there is none."""
    meta = result_meta(client, task_id)
    assert meta is not None, f"No result stored for {task_id}."
    return meta


def unique(prefix: str) -> str:
    """Return a task id for this run only (results outlive a run in Redis)."""
    from uuid import uuid4

    return f"{prefix}-{uuid4().hex[:12]}"


def hold_started(client: redis.Redis, key: str, timeout: float = 10) -> str:
    """Wait until a ``hold(key)`` task runs (it holds its worker); return the task's id.

    ``hold`` is in ``cw_tasks`` (Celery) and ``duck_tasks`` (no Celery): both push their id
    to ``hold:started:{key}`` once running, then block until ``release(key)``.
    """
    task_id = wait_until(
        lambda: client.lpop(f"hold:started:{key}"), f"hold({key!r}) to start", timeout=timeout
    )
    return task_id.decode()


def release(client: redis.Redis, key: str) -> None:
    """Let the ``hold(key)`` task finish."""
    client.rpush(f"hold:release:{key}", "go")
