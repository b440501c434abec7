"""``--local``: start a local Ray instance and run each task as a Ray task.

The remote function is defined once. Up to ``concurrency`` tasks are in flight; their
results are collected with ``ray.wait`` without blocking the consumer. A task past its
hard time limit is cancelled (``ray.cancel(force=True)``) and FAILED; a task whose Ray
worker died is retried if attempts remain. A task a client revokes with ``terminate=True``
is cancelled the same way and stored REVOKED "terminated".

If Ray itself is lost (the GCS stops answering the ping ``poll()`` sends every second, or a
Ray call fails), the in-flight messages go back to the broker unrecorded, the runner takes
no work and reconnects with back-off from ``poll()``, so the worker loop keeps running and
still stops on a signal. A task whose process died is judged only after ``CRASH_GRACE_S``:
if Ray goes down meanwhile the death was Ray's, not the task's, and costs no attempt.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

from django_ray import ray_connect
from django_ray.exceptions import ProcessSetupFailed
from django_ray.message import TaskMessage
from django_ray.runners.base import BaseRunner, Completion
from django_ray.runners.ray_support import ray_task_options, runtime_env
from django_ray.runtime import settle

logger = logging.getLogger(__name__)

__all__ = ["LocalRunner", "RayConnectionLost", "remote_execute"]

_remote: Any = None
BACKSTOP_GRACE = 30.0
PING_INTERVAL_S = 1.0  # how often poll() checks that Ray still answers
CRASH_GRACE_S = 3.0  # how long a dead task process waits to be told apart from a dead Ray
RECONNECT_FIRST_S = 1.0
RECONNECT_MAX_S = 30.0
GET_TIMEOUT_S = 10.0


class RayConnectionLost(ConnectionError):
    """The worker lost Ray: the attempt's outcome is unknown and its message goes back."""


class _Terminated(KeyboardInterrupt):
    """SIGTERM reached a Ray worker process mid-task (a node or Ray itself going down)."""


def _run_in_ray(message: TaskMessage, worker_id: str) -> Any:
    from django_ray.runtime.bootstrap import close_stale_connections
    from django_ray.runtime.execute import execute

    with _sigterm_ends_attempt_unrecorded():
        try:
            return execute(message, worker_id=worker_id)
        finally:
            close_stale_connections()  # a Ray worker process may wait idle for long


@contextmanager
def _sigterm_ends_attempt_unrecorded() -> Iterator[None]:
    """Let SIGTERM interrupt the task as KeyboardInterrupt, then exit as Ray would.

    Ray's own handler raises SystemExit inside the task, which ``execute()`` records as the
    task's failure. KeyboardInterrupt is what it treats as "stopped, no outcome": the record
    waits READY and the message, given back by the worker, runs again.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    ray_handler = signal.getsignal(signal.SIGTERM)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise _Terminated()

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, ray_handler)
        if callable(ray_handler):
            ray_handler(signal.SIGTERM, None)  # raises Ray's SystemExit
        raise SystemExit(1) from None
    finally:
        signal.signal(signal.SIGTERM, ray_handler)


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
    # Set when Ray reported the task's process dead (see _judge_crashed).
    crash: BaseException | None = None
    crashed_at: float = 0.0


class LocalRunner(BaseRunner):
    mode = "local"

    def __init__(self, *, worker_id: str, concurrency: int | None = None, **options: Any):
        super().__init__(worker_id=worker_id, concurrency=concurrency, **options)
        self._requested_concurrency = concurrency
        self._in_flight: dict[Any, _InFlight] = {}
        # Tasks whose process died, waiting CRASH_GRACE_S to learn whether Ray died too.
        self._crashed: dict[Any, _InFlight] = {}
        self._done: list[Completion] = []
        self._connected = False
        self._next_ping = 0.0
        self._retry_delay = RECONNECT_FIRST_S
        self._next_reconnect = 0.0
        # Task ids a client revoked with terminate=True while they ran (see terminate()).
        self._terminating: set[str] = set()
        self.info: dict[str, Any] = {}

    # -- connection -------------------------------------------------------------

    def connect(self) -> dict[str, Any]:
        return ray_connect.init_local(self.options.get("num_cpus"), runtime_env=runtime_env())

    def start(self) -> None:
        import ray

        self.info = self.connect() or {}
        self._connected = True
        self._next_ping = time.monotonic() + PING_INTERVAL_S
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
        if not self._connected:  # a prefetched message while Ray is away: give it back
            error = RayConnectionLost("not connected to Ray; reconnecting")
            self._done.append(Completion(message, delivery, error=error))
            return
        try:
            options = ray_task_options(message)
            ref = remote_execute().options(**options).remote(message, self.worker_id)
        except Exception as e:
            self._submit_failed(message, delivery, e)
            return
        # The task's own process enforces the limit from its real start (SIGALRM); this
        # backstop, counted from submission, also covers queueing in Ray and a task stuck
        # where a signal cannot reach it.
        deadline = (
            time.monotonic() + 2 * message.time_limit + BACKSTOP_GRACE
            if message.time_limit
            else None
        )
        self._in_flight[ref] = _InFlight(message, delivery, deadline)

    def _submit_failed(self, message: TaskMessage, delivery: Any, error: Exception) -> None:
        """Give the message back if Ray is gone; else the task's Ray options are wrong."""
        try:
            ray_connect.ping()
        except ConnectionError as lost:
            self._done.append(Completion(message, delivery, error=error))
            self._connection_lost(lost)
            return
        logger.error("Ray refused task %s [%s]: %s", message.task, message.id, error)
        outcome = settle.failed(message, error, reason=str(error))
        self._done.append(Completion(message, delivery, outcome=outcome))

    def in_flight(self) -> int:
        return len(self._in_flight) + len(self._crashed)

    def has_capacity(self) -> bool:
        return self._connected and super().has_capacity()

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
        if self._connected:
            self._poll_ray(timeout)
        else:
            self._reconnect_when_due(timeout)
        done, self._done = self._done, []
        return done

    def _poll_ray(self, timeout: float) -> None:
        ready: list[Any] = []
        try:
            self._ping(force=False)
            if self._in_flight:
                self._enforce_time_limits()
                ready = self._wait(timeout)
            elif timeout:
                time.sleep(timeout)
        except Exception as e:  # the connection to Ray is gone
            self._connection_lost(e)
            return
        for ref in ready:
            self._finish(ref)
        self._judge_crashed()

    def _wait(self, timeout: float) -> list[Any]:
        """Return as soon as one task finishes, with every other one already done."""
        import ray

        refs = list(self._in_flight)
        ready, rest = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready and rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        return list(ready)

    def _ping(self, *, force: bool) -> None:
        """Raise ``ConnectionError`` if Ray does not answer (at most every PING_INTERVAL_S)."""
        if force or time.monotonic() >= self._next_ping:
            ray_connect.ping()
            self._next_ping = time.monotonic() + PING_INTERVAL_S

    def _finish(self, ref: Any) -> None:
        import ray
        from ray import exceptions as rex

        item = self._in_flight.pop(ref)
        terminating = item.message.id in self._terminating
        self._terminating.discard(item.message.id)
        try:
            outcome = ray.get(ref, timeout=GET_TIMEOUT_S)  # ready: returns at once
        except (rex.WorkerCrashedError, rex.NodeDiedError, rex.LocalRayletDiedError,
                rex.ObjectLostError) as e:  # fmt: skip
            if terminating:
                outcome = settle.revoked(item.message, "terminated")
            else:  # the task's death or Ray's? _judge_crashed tells after CRASH_GRACE_S
                item.crash, item.crashed_at = e, time.monotonic()
                self._crashed[ref] = item
                return
        except (rex.OutOfMemoryError, rex.TaskCancelledError) as e:
            if terminating:
                outcome = settle.revoked(item.message, "terminated")
            else:
                outcome = self._lost(item, e)
        except rex.RayTaskError as e:  # execute() itself failed (e.g. the database)
            cause = getattr(e, "cause", None)
            if isinstance(cause, ProcessSetupFailed):
                # That Ray process cannot run any task of this project: say so, once.
                logger.error("Task %s [%s]: %s", item.message.task, item.message.id, cause)
                outcome = settle.failed(item.message, cause, with_traceback=False)
                self._done.append(Completion(item.message, item.delivery, outcome=outcome))
                return
            logger.error("Ray task for %s failed outside the task: %s", item.message.id, e)
            self._done.append(Completion(item.message, item.delivery, error=e))
            return
        except Exception as e:
            self._done.append(Completion(item.message, item.delivery, error=e))
            return
        self._done.append(Completion(item.message, item.delivery, outcome=outcome))

    def _lost(self, item: _InFlight, error: BaseException) -> settle.Outcome:
        if item.deadline is not None and time.monotonic() >= item.deadline:
            return settle.time_limit(item.message, self.worker_id)
        return settle.lost(item.message, self.worker_id, type(error).__name__)

    def _enforce_time_limits(self) -> None:
        import ray

        now = time.monotonic()
        for ref, item in self._in_flight.items():
            if item.deadline is not None and now >= item.deadline:
                ray.cancel(ref, force=True)

    def _judge_crashed(self) -> None:
        """Record the crashes whose grace is over as lost attempts, if Ray still answers."""
        now = time.monotonic()
        due = [ref for ref, item in self._crashed.items() if now >= item.crashed_at + CRASH_GRACE_S]
        if not due:
            return
        try:
            self._ping(force=True)
        except ConnectionError as e:  # Ray died with them: not the tasks' fault
            self._connection_lost(e)
            return
        for ref in due:
            item = self._crashed.pop(ref)
            assert item.crash is not None
            outcome = self._lost(item, item.crash)
            self._done.append(Completion(item.message, item.delivery, outcome=outcome))

    def _connection_lost(self, error: BaseException) -> None:
        """Give every unfinished message back unrecorded, drop Ray, and plan a reconnect."""
        lost = [*self._in_flight.values(), *self._crashed.values()]
        self._in_flight.clear()
        self._crashed.clear()
        self._terminating.clear()
        self._connected = False
        self._retry_delay = RECONNECT_FIRST_S
        self._next_reconnect = time.monotonic() + self._retry_delay
        reason = _describe(error)
        logger.error(
            "Lost the connection to Ray (%s); returning %d message(s) to the broker and "
            "reconnecting with back-off, first in %.0f s.", reason, len(lost), self._retry_delay,
        )  # fmt: skip
        gone = RayConnectionLost(f"lost the connection to Ray ({reason})")
        for item in lost:
            self._done.append(Completion(item.message, item.delivery, error=gone))
        _disconnect()

    def _reconnect_when_due(self, timeout: float) -> None:
        """Try to connect again once the back-off delay is over; else wait up to ``timeout``."""
        wait = self._next_reconnect - time.monotonic()
        if wait > 0:
            time.sleep(min(timeout, wait))
            return
        try:
            _disconnect()  # connect() keeps an initialised Ray as it is
            self.info = self.connect() or {}
        except Exception as e:
            _disconnect()
            self._retry_delay = min(self._retry_delay * 2, RECONNECT_MAX_S)
            self._next_reconnect = time.monotonic() + self._retry_delay
            logger.warning(
                "Reconnecting to Ray failed (%s); next try in %.0f s.",
                _describe(e), self._retry_delay,
            )  # fmt: skip
            return
        self._connected = True
        self._next_ping = time.monotonic() + PING_INTERVAL_S
        logger.info("Reconnected to Ray at %s; taking tasks again.", self.info.get("address"))

    def shutdown(self, *, wait: bool = True) -> None:
        import ray

        while wait and self.in_flight():
            self._done.extend(self.poll(0.2))
        if not wait:
            if self._connected:
                for ref in list(self._in_flight):
                    ray.cancel(ref, force=True)
            self._in_flight.clear()
            self._crashed.clear()
        _disconnect()


def _disconnect() -> None:
    """Shut this process's Ray connection down, whatever state it is in."""
    try:
        ray_connect.shutdown()
    except Exception:
        logger.debug("Ignoring an error while shutting Ray down.", exc_info=True)


def _describe(error: BaseException) -> str:
    """Return ``error`` in one short line for the log."""
    text = " ".join(str(error).split())[:200]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
