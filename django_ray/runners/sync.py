"""``--sync``: run each task in the worker process, one at a time, without Ray."""

from __future__ import annotations

from typing import Any

from django_ray.message import TaskMessage
from django_ray.runners.base import BaseRunner, Completion
from django_ray.runtime.execute import execute

__all__ = ["SyncRunner"]


class SyncRunner(BaseRunner):
    mode = "sync"

    def __init__(self, *, worker_id: str, concurrency: int | None = None, **options: Any) -> None:
        # One at a time: the task runs inside the consumer loop.
        super().__init__(worker_id=worker_id, concurrency=1, **options)
        self._done: list[Completion] = []

    def submit(self, message: TaskMessage, delivery: Any) -> None:
        try:
            outcome = execute(message, worker_id=self.worker_id)
        except Exception as e:  # the outcome was not stored (e.g. the database is down)
            self._done.append(Completion(message, delivery, error=e))
            return
        self._done.append(Completion(message, delivery, outcome=outcome))

    def poll(self, timeout: float = 0) -> list[Completion]:
        done, self._done = self._done, []
        return done

    def in_flight(self) -> int:
        return 0

    def terminate(self, task_id: str) -> bool:
        """Interrupt the attempt running in the worker's main thread (SIGALRM)."""
        from django_ray.runtime import time_limits

        return time_limits.terminate(task_id)
