"""``--local``: start a local Ray instance and run each task as a Ray task.

The remote function is defined once. Up to ``concurrency`` tasks are in flight; their
results are collected with ``ray.wait`` without blocking the consumer. A task past its
hard time limit is cancelled (``ray.cancel(force=True)``) and FAILED; a task whose Ray
worker died is retried if attempts remain. A task a client revokes with ``terminate=True``
is cancelled the same way and stored REVOKED "terminated". If the connection to Ray itself
is lost, the in-flight messages go back to the broker and the runner reconnects with
back-off.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from django_ray.message import TaskMessage
from django_ray.runners.base import BaseRunner, Completion
from django_ray.runners.ray_support import (
    lost_attempt,
    ray_options_for,
    runtime_env,
    terminated_attempt,
)

logger = logging.getLogger(__name__)

__all__ = ["LocalRunner", "remote_execute"]

_remote: Any = None
BACKSTOP_GRACE = 30.0


def _run_in_ray(message: TaskMessage, worker_id: str) -> Any:
    from django_ray.runtime.execute import execute

    return execute(message, worker_id=worker_id)


def remote_execute() -> Any:
    """Return the ``@ray.remote`` wrapper of ``execute`` (built once per process)."""
    global _remote
    if _remote is None:
        import ray

        # Ray's own retries stay off: retrying is ours, so attempts are counted once.
        _remote = ray.remote(max_retries=0)(_run_in_ray)
    return _remote


@dataclass
class _InFlight:
    message: TaskMessage
    delivery: Any
    deadline: float | None


class LocalRunner(BaseRunner):
    mode = "local"

    def __init__(self, *, worker_id: str, concurrency: int | None = None, **options: Any):
        super().__init__(worker_id=worker_id, concurrency=concurrency, **options)
        self._requested_concurrency = concurrency
        self._in_flight: dict[Any, _InFlight] = {}
        self._done: list[Completion] = []
        # Task ids a client revoked with terminate=True while they ran (see terminate()).
        self._terminating: set[str] = set()
        self.info: dict[str, Any] = {}

    # -- connection -------------------------------------------------------------

    def connect(self) -> dict[str, Any]:
        from django_ray import ray_connect

        return ray_connect.init_local(self.options.get("num_cpus"), runtime_env=runtime_env())

    def start(self) -> None:
        import ray

        self.info = self.connect() or {}
        if not self._requested_concurrency:
            # Twice the CPUs: the next task already waits in Ray when one finishes.
            self.concurrency = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
        remote_execute()

    def describe(self) -> str:
        dashboard = self.info.get("dashboard_url")
        where = f"dashboard {dashboard}" if dashboard else "no dashboard (install ray[default])"
        return f"{super().describe()}, Ray at {self.info.get('address', '?')}, {where}"

    # -- work -------------------------------------------------------------------

    def submit(self, message: TaskMessage, delivery: Any) -> None:
        options = {
            k: v for k, v in ray_options_for(message).items() if not k.startswith("entrypoint_")
        }
        ref = remote_execute().options(**options).remote(message, self.worker_id)
        # The task's own process enforces the limit from its real start (SIGALRM); this
        # backstop, counted from submission, also covers queueing in Ray and a task stuck
        # where a signal cannot reach it.
        deadline = (
            time.monotonic() + 2 * message.time_limit + BACKSTOP_GRACE
            if message.time_limit
            else None
        )
        self._in_flight[ref] = _InFlight(message, delivery, deadline)

    def in_flight(self) -> int:
        return len(self._in_flight)

    def terminate(self, task_id: str) -> bool:
        """Cancel the Ray task running ``task_id`` (``ray.cancel(force=True)``)."""
        import ray

        # A snapshot: the control thread calls this while the worker loop polls.
        for ref, item in list(self._in_flight.items()):
            if item.message.id == task_id:
                self._terminating.add(task_id)
                ray.cancel(ref, force=True)
                if ref not in self._in_flight:  # it finished meanwhile: nothing to mark
                    self._terminating.discard(task_id)
                return True
        return False

    def poll(self, timeout: float = 0) -> list[Completion]:
        import ray

        if self._in_flight:
            self._enforce_time_limits()
            try:
                refs = list(self._in_flight)
                # Return as soon as one finishes, then take every other one already done.
                ready, rest = ray.wait(refs, num_returns=1, timeout=timeout)
                if ready and rest:
                    more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
                    ready += more
            except Exception as e:  # the connection to Ray is gone
                self._connection_lost(e)
                ready = []
            for ref in ready:
                self._finish(ref)
        done, self._done = self._done, []
        return done

    def _finish(self, ref: Any) -> None:
        import ray
        from ray import exceptions as rex

        item = self._in_flight.pop(ref)
        terminating = item.message.id in self._terminating
        self._terminating.discard(item.message.id)
        try:
            outcome = ray.get(ref)
        except (rex.WorkerCrashedError, rex.NodeDiedError, rex.OutOfMemoryError,
                rex.TaskCancelledError, rex.ObjectLostError) as e:  # fmt: skip
            outcome = terminated_attempt(item.message) if terminating else self._lost(item, e)
        except rex.RayTaskError as e:  # execute() itself failed (e.g. the database)
            logger.error("Ray task for %s failed outside the task: %s", item.message.id, e)
            self._done.append(Completion(item.message, item.delivery, error=e))
            return
        except Exception as e:
            self._done.append(Completion(item.message, item.delivery, error=e))
            return
        self._done.append(Completion(item.message, item.delivery, outcome=outcome))

    def _lost(self, item: _InFlight, error: BaseException) -> Any:
        if item.deadline is not None and time.monotonic() >= item.deadline:
            return _time_limit_exceeded(item.message, self.worker_id)
        return lost_attempt(item.message, self.worker_id, type(error).__name__)

    def _enforce_time_limits(self) -> None:
        import ray

        now = time.monotonic()
        for ref, item in self._in_flight.items():
            if item.deadline is not None and now >= item.deadline:
                ray.cancel(ref, force=True)

    def _connection_lost(self, error: BaseException) -> None:
        logger.error("Lost the connection to Ray (%s); returning %d message(s) to the broker.",
                     error, len(self._in_flight))  # fmt: skip
        for item in self._in_flight.values():
            self._done.append(Completion(item.message, item.delivery, error=error))
        self._in_flight.clear()
        self._reconnect()

    def _reconnect(self) -> None:
        import ray

        delay = 1.0
        while True:
            try:
                ray.shutdown()
                self.info = self.connect() or {}
                logger.info("Reconnected to Ray.")
                return
            except Exception as e:
                logger.warning("Reconnecting to Ray failed (%s); next try in %.0fs.", e, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)

    def shutdown(self, *, wait: bool = True) -> None:
        import ray

        while wait and self._in_flight:
            self._done.extend(self.poll(0.2))
        if not wait:
            for ref in list(self._in_flight):
                ray.cancel(ref, force=True)
            self._in_flight.clear()
        ray.shutdown()


def _time_limit_exceeded(message: TaskMessage, worker_id: str) -> Any:
    from django.db import close_old_connections

    from django_ray import results
    from django_ray.exceptions import TaskTimeLimitExceeded
    from django_ray.records import record_for
    from django_ray.runtime.execute import Outcome, error_info

    close_old_connections()
    record = record_for(message)
    if record.is_finished:
        return Outcome(task_id=message.id, status=record.status, duplicate=True)
    exc = TaskTimeLimitExceeded(f"Task {message.id} exceeded its {message.time_limit}s time limit.")
    record.mark_failed(error_info(exc))
    publish = tuple(results.mirror(record, message))
    return Outcome(task_id=message.id, status=record.status, publish=publish, error="time limit")
