"""``--local``: start a local Ray instance and run tasks as Ray tasks.

The remote function is defined once and runs a *pack* of messages, one after the other in
one Ray worker process (one Ray call, one database connection). While Ray has a free slot
a message goes at once, alone; when every slot is busy, messages wait in the runner and
leave together when a slot frees, up to as many as fit in ``PACK_TARGET_S`` by the task's
measured duration (at most ``PACK_MAX``). A task with its own Ray options or a time limit
always goes alone. Results are collected with ``ray.wait`` without blocking the consumer.

A task past its hard time limit is cancelled (``ray.cancel(force=True)``) and FAILED; a
task whose Ray worker died is retried if attempts remain. A task a client revokes with
``terminate=True`` is cancelled the same way and stored REVOKED "terminated". When a pack's
process dies, each member is judged by its record: a finished one is acknowledged, the one
that was running is the lost (or terminated) attempt, and the ones that had not started
wait in the runner again (no attempt is counted for them).

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
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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
_last_call_ended = 0.0  # in a Ray worker process: when its last call ended (monotonic)
IDLE_CHECK_S = 1.0  # a connection kept longer than this between calls is checked first
KEEP_CONNECTION_S = 0.5  # calls launched this close together keep their connections
BACKSTOP_GRACE = 30.0
PING_INTERVAL_S = 1.0  # how often poll() checks that Ray still answers
CRASH_GRACE_S = 3.0  # how long a dead task process waits to be told apart from a dead Ray
RECONNECT_FIRST_S = 1.0
RECONNECT_MAX_S = 30.0
GET_TIMEOUT_S = 10.0
PEEK_INTERVAL_S = 0.002  # how often a poll that may not wait asks Ray what finished
PACK_MAX = 16  # messages in one Ray call at most
PACK_TARGET_S = 0.05  # how long a pack should take, by its tasks' measured durations
RESTARTS_MAX = 3  # how often a message whose pack died before it started runs again


class RayConnectionLost(ConnectionError):
    """The worker lost Ray: the attempt's outcome is unknown and its message goes back."""


class _Terminated(KeyboardInterrupt):
    """SIGTERM reached a Ray worker process mid-task (a node or Ray itself going down)."""


def _run_in_ray(
    messages: list[TaskMessage], worker_id: str, keep_connection: bool = False
) -> tuple[list[Any], float]:
    """Run a pack of messages in order; return each one's outcome (or error) and the time.

    An error of the runtime itself (e.g. the database is down) is returned in the
    message's place, so the rest of the pack still runs and the worker gives that one
    message back; only ``ProcessSetupFailed`` keeps its type (it fails the task).

    ``keep_connection``: the worker has more work coming, so the database connection stays
    open for the next call on this process (opening one per call cost more than a no-op
    task: on SQLite, closing the last connection checkpoints the WAL). Otherwise it is
    closed as Django closes it at a request's end. A connection kept through an idle spell
    is checked before it is used again.
    """
    global _last_call_ended
    from django_ray.runtime.bootstrap import check_connections, close_stale_connections
    from django_ray.runtime.execute import execute

    if time.monotonic() - _last_call_ended > IDLE_CHECK_S:
        check_connections(verify=True)
    results: list[Any] = []
    started = time.perf_counter()
    with _sigterm_ends_attempt_unrecorded():
        try:
            for message in messages:
                try:
                    results.append(execute(message, worker_id=worker_id))
                except ProcessSetupFailed as e:
                    results.append(e)
                except Exception as e:  # plain, so that it always pickles back
                    results.append(RuntimeError(f"{type(e).__name__}: {e}"))
        finally:
            if not keep_connection:
                close_stale_connections()  # a Ray worker process may wait idle for long
            _last_call_ended = time.monotonic()
    return results, time.perf_counter() - started


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
    """One Ray call: the messages it runs, in order, with their deliveries."""

    members: list[tuple[TaskMessage, Any]]
    deadline: float | None
    # Set when Ray reported the call's process dead (see _judge_crashed).
    crash: BaseException | None = None
    crashed_at: float = 0.0
    ids: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self.ids = frozenset(m.id for m, _ in self.members)

    @property
    def message(self) -> TaskMessage:
        return self.members[0][0]


class LocalRunner(BaseRunner):
    mode = "local"

    def __init__(self, *, worker_id: str, concurrency: int | None = None, **options: Any):
        super().__init__(worker_id=worker_id, concurrency=concurrency, **options)
        self._requested_concurrency = concurrency
        self._in_flight: dict[Any, _InFlight] = {}
        # Calls whose process died, waiting CRASH_GRACE_S to learn whether Ray died too.
        self._crashed: dict[Any, _InFlight] = {}
        # Messages waiting for a free slot, to leave in a pack.
        self._pending: deque[tuple[TaskMessage, Any]] = deque()
        self._restarts: dict[str, int] = {}  # message id: how often its pack died first
        self._durations: dict[str, float] = {}  # task name: seconds per run (moving average)
        self._slots = 1  # how many calls Ray runs at once (its CPUs)
        self._done: list[Completion] = []
        self._connected = False
        self._next_ping = 0.0
        self._next_peek = 0.0
        self._last_launch = 0.0  # when the last Ray call left (monotonic)
        self._retry_delay = RECONNECT_FIRST_S
        self._next_reconnect = 0.0
        # Task ids a client revoked with terminate=True while they ran (see terminate()).
        self._terminating: set[str] = set()
        self._shut_down = False
        self.info: dict[str, Any] = {}

    # -- connection -------------------------------------------------------------

    def connect(self) -> dict[str, Any]:
        return ray_connect.init_local(self.options.get("num_cpus"), runtime_env=runtime_env())

    def start(self) -> None:
        import ray

        self.info = self.connect() or {}
        self._connected = True
        self._next_ping = time.monotonic() + PING_INTERVAL_S
        self._slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
        if not self._requested_concurrency:
            # Two calls per CPU (the next one already waits in Ray when one finishes), each
            # a pack when the tasks are short.
            self.concurrency = 2 * self._slots * PACK_MAX
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
        if message.time_limit or ray_task_options(message):
            self._launch([(message, delivery)])  # its own call: its own options and limit
        else:
            self._pending.append((message, delivery))
            self._flush()

    def _flush(self) -> None:
        """Send waiting messages while Ray has room: alone when idle, packed when busy."""
        while self._pending and self._connected and len(self._in_flight) < 2 * self._slots:
            limit = self._pack_limit(self._pending[0][0])
            members = [self._pending.popleft()]
            while self._pending and len(members) < limit:
                if self._pack_limit(self._pending[0][0]) < len(members) + 1:
                    break
                members.append(self._pending.popleft())
            self._launch(members)

    def _pack_limit(self, message: TaskMessage) -> int:
        """How many runs of ``message``'s task fit in one pack (1 while its time is unknown)."""
        seconds = self._durations.get(message.task)
        if seconds is None:
            return 1
        return max(1, min(PACK_MAX, int(PACK_TARGET_S / max(seconds, 1e-4))))

    def _launch(self, members: list[tuple[TaskMessage, Any]]) -> None:
        first = members[0][0]
        try:
            options = ray_task_options(first)
            messages = [m for m, _ in members]
            # More work is coming (messages wait here, or the last call left just now):
            # the Ray process keeps its database connection for the next call.
            now = time.monotonic()
            keep = bool(self._pending) or now - self._last_launch < KEEP_CONNECTION_S
            self._last_launch = now
            ref = remote_execute().options(**options).remote(messages, self.worker_id, keep)
        except Exception as e:
            self._submit_failed(members, e)
            return
        # The task's own process enforces the limit from its real start (SIGALRM); this
        # backstop, counted from submission, also covers queueing in Ray and a task stuck
        # where a signal cannot reach it. (A task with a limit always runs alone.)
        deadline = (
            time.monotonic() + 2 * first.time_limit + BACKSTOP_GRACE if first.time_limit else None
        )
        self._in_flight[ref] = _InFlight(members, deadline)

    def _submit_failed(self, members: list[tuple[TaskMessage, Any]], error: Exception) -> None:
        """Give the messages back if Ray is gone; else the task's Ray options are wrong."""
        try:
            ray_connect.ping()
        except ConnectionError as lost:
            self._done.extend(Completion(m, d, error=error) for m, d in members)
            self._connection_lost(lost)
            return
        for message, delivery in members:
            logger.error("Ray refused task %s [%s]: %s", message.task, message.id, error)
            outcome = settle.failed(message, error, reason=str(error))
            self._done.append(Completion(message, delivery, outcome=outcome))

    def in_flight(self) -> int:
        calls = [*self._in_flight.values(), *self._crashed.values()]
        return len(self._pending) + sum(len(call.members) for call in calls)

    def has_capacity(self) -> bool:
        if not self._connected or not super().has_capacity():
            return False
        # Take no more than the calls in flight and the packs waiting for them can carry.
        waiting_room = (
            2 * self._slots * (self._pack_limit(self._pending[0][0]) if self._pending else 1)
        )
        return len(self._pending) < waiting_room

    def terminate(self, task_id: str) -> bool:
        """Cancel the Ray call running ``task_id`` (``ray.cancel(force=True)``).

        A task waiting here, or in a pack that has not reached it yet, is not running: the
        revoke that came with the terminate keeps it from starting.
        """
        import ray

        # A snapshot: the control thread calls this while the worker loop polls.
        for ref, call in list(self._in_flight.items()):
            if task_id not in call.ids:
                continue
            if len(call.members) > 1 and not _is_running(task_id):
                return False
            self._terminating.add(task_id)
            ray.cancel(ref, force=True)
            if ref not in self._in_flight:  # it finished meanwhile: nothing to mark
                self._terminating.discard(task_id)
            return True
        return False

    def poll(self, timeout: float = 0) -> list[Completion]:
        if self._shut_down:  # what finished while shutting down; Ray is gone on purpose
            pass
        elif self._connected:
            self._poll_ray(timeout)
            self._flush()
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
        """Return as soon as one call finishes, with every other one already done.

        A look without waiting (``timeout`` 0: the worker loop asks after every message)
        asks Ray at most every ``PEEK_INTERVAL_S``: each ``ray.wait`` costs about 0.2 ms of
        the worker process, the one process every task passes through.
        """
        import ray

        refs = list(self._in_flight)
        now = time.monotonic()
        if not timeout:
            if now < self._next_peek:
                return []
            self._next_peek = now + PEEK_INTERVAL_S
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            return list(ready)
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

        call = self._in_flight.pop(ref)
        terminated = call.ids & self._terminating
        self._terminating -= call.ids
        try:
            results, seconds = ray.get(ref, timeout=GET_TIMEOUT_S)  # ready: returns at once
        except (rex.WorkerCrashedError, rex.NodeDiedError, rex.LocalRayletDiedError,
                rex.ObjectLostError) as e:  # fmt: skip
            if terminated:
                self._settle_dead_call(call, e, terminated)
            else:  # the call's death or Ray's? _judge_crashed tells after CRASH_GRACE_S
                call.crash, call.crashed_at = e, time.monotonic()
                self._crashed[ref] = call
            return
        except (rex.OutOfMemoryError, rex.TaskCancelledError) as e:
            self._settle_dead_call(call, e, terminated)
            return
        except rex.RayTaskError as e:  # the call itself failed (e.g. its process set-up)
            cause = getattr(e, "cause", None)
            for message, delivery in call.members:
                if isinstance(cause, ProcessSetupFailed):
                    self._setup_failed(message, delivery, cause)
                else:
                    logger.error("Ray task for %s failed outside the task: %s", message.id, e)
                    self._done.append(Completion(message, delivery, error=e))
            return
        except Exception as e:
            self._done.extend(Completion(m, d, error=e) for m, d in call.members)
            return
        self._learn(call, seconds)
        for (message, delivery), result in zip(call.members, results, strict=True):
            self._restarts.pop(message.id, None)
            if isinstance(result, ProcessSetupFailed):
                self._setup_failed(message, delivery, result)
            elif isinstance(result, BaseException):
                self._done.append(Completion(message, delivery, error=result))
            else:
                self._done.append(Completion(message, delivery, outcome=result))

    def _setup_failed(self, message: TaskMessage, delivery: Any, cause: BaseException) -> None:
        # That Ray process cannot run any task of this project: say so, and fail the task.
        logger.error("Task %s [%s]: %s", message.task, message.id, cause)
        outcome = settle.failed(message, cause, with_traceback=False)
        self._done.append(Completion(message, delivery, outcome=outcome))

    def _learn(self, call: _InFlight, seconds: float) -> None:
        """Keep a moving average of each task's run time, to size its packs."""
        each = seconds / len(call.members)
        for name in {m.task for m, _ in call.members}:
            known = self._durations.get(name)
            self._durations[name] = each if known is None else 0.7 * known + 0.3 * each

    def _settle_dead_call(
        self, call: _InFlight, error: BaseException, terminated: frozenset[str] | set[str]
    ) -> None:
        """Settle the members of a call whose process died or was cancelled.

        Alone, its message is the lost (or terminated) attempt. In a pack, each record tells:
        finished ones are acknowledged as they are, the running one is the lost or
        terminated attempt, and the ones not started wait here again.
        """
        if len(call.members) == 1:
            message, delivery = call.members[0]
            if message.id in terminated:
                outcome = settle.revoked(message, "terminated")
            else:
                outcome = self._lost(call, error)
            self._done.append(Completion(message, delivery, outcome=outcome))
            return
        from django_ray.models import TaskRecord, TaskStatus

        records = TaskRecord.objects.in_bulk(list(call.ids))
        for message, delivery in call.members:
            record = records.get(message.id)
            if record is not None and record.is_finished:
                outcome = settle.duplicate(record)
            elif record is not None and record.status == TaskStatus.RUNNING:
                if message.id in terminated:
                    outcome = settle.revoked(message, "terminated")
                else:
                    outcome = settle.lost(message, self.worker_id, type(error).__name__)
            elif self._restarts.get(message.id, 0) < RESTARTS_MAX:
                self._restarts[message.id] = self._restarts.get(message.id, 0) + 1
                self._pending.appendleft((message, delivery))
                continue
            else:
                outcome = settle.lost(message, self.worker_id, type(error).__name__)
            self._done.append(Completion(message, delivery, outcome=outcome))

    def _lost(self, call: _InFlight, error: BaseException) -> settle.Outcome:
        if call.deadline is not None and time.monotonic() >= call.deadline:
            return settle.time_limit(call.message, self.worker_id)
        return settle.lost(call.message, self.worker_id, type(error).__name__)

    def _enforce_time_limits(self) -> None:
        import ray

        now = time.monotonic()
        for ref, call in self._in_flight.items():
            if call.deadline is not None and now >= call.deadline:
                ray.cancel(ref, force=True)

    def _judge_crashed(self) -> None:
        """Settle the crashes whose grace is over as lost attempts, if Ray still answers."""
        now = time.monotonic()
        due = [ref for ref, call in self._crashed.items() if now >= call.crashed_at + CRASH_GRACE_S]
        if not due:
            return
        try:
            self._ping(force=True)
        except ConnectionError as e:  # Ray died with them: not the tasks' fault
            self._connection_lost(e)
            return
        for ref in due:
            call = self._crashed.pop(ref)
            assert call.crash is not None
            self._settle_dead_call(call, call.crash, set())

    def _connection_lost(self, error: BaseException) -> None:
        """Give every unfinished message back unrecorded, drop Ray, and plan a reconnect."""
        lost = [m for call in (*self._in_flight.values(), *self._crashed.values())
                for m in call.members]  # fmt: skip
        lost += list(self._pending)
        self._in_flight.clear()
        self._crashed.clear()
        self._pending.clear()
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
        for message, delivery in lost:
            self._done.append(Completion(message, delivery, error=gone))
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

        while wait and self.in_flight() and self._connected:
            self._done.extend(self.poll(0.2))
        if not wait:
            if self._connected:
                for ref in list(self._in_flight):
                    ray.cancel(ref, force=True)
            self._in_flight.clear()
            self._crashed.clear()
            self._pending.clear()
        self._shut_down = True
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


def _is_running(task_id: str) -> bool:
    """Whether the record of ``task_id`` says an attempt is running now."""
    from django_ray.models import TaskRecord, TaskStatus

    return TaskRecord.objects.filter(pk=task_id, status=TaskStatus.RUNNING).exists()
