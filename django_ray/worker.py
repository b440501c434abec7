"""The worker loop: consume, decode, check the registry, dispatch to a runner, ack.

A message is acknowledged only after its outcome is stored (and any retry or follow-up
message has been published). Bad messages are logged, recorded where they carry an id,
and rejected without requeue; the loop keeps consuming. SIGTERM/SIGINT drain: stop
taking messages, let running tasks finish, exit 0. A second signal stops at once:
unacknowledged messages go back to the broker.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from typing import Any

from django.db import DatabaseError
from django.utils import timezone

from django_ray import schedule
from django_ray.celery import control
from django_ray.exceptions import MalformedMessage
from django_ray.message import TaskMessage
from django_ray.records import record_for
from django_ray.runners import BaseRunner, Completion
from django_ray.runtime import bootstrap, settle
from django_ray.runtime.bootstrap import check_connections, close_stale_connections
from django_ray.transport import Broker, decode_kombu, publish_now
from django_ray.transports.kinds import kind_of
from django_ray.transports.leases import LeaseKeeper

logger = logging.getLogger("django_ray.worker")

__all__ = ["Worker", "WorkerShutdown", "default_worker_id"]

# What kombu raises reading an item that is not a message (a Redis list item that is not
# JSON, or not an envelope, or whose body does not decode): never a database or broker error.
UNREADABLE_ITEM = (ValueError, TypeError, AttributeError, KeyError, LookupError)
# Finished messages acknowledged together where the broker allows it: at most this many,
# waiting at most this long (their leases are no longer renewed once they finished).
ACK_WINDOW = 32
ACK_DELAY_S = 0.05
# How often the worker puts back deliveries whose lease ran out (Redis), busy or not.
RESTORE_INTERVAL_S = 2.0
# How close an ETA must be for batch mode to wait for it rather than exit.
BATCH_GRACE_SECONDS = 2.0


class WorkerShutdown(KeyboardInterrupt):
    """Raised by a second signal to stop at once (a KeyboardInterrupt, never a task failure)."""


def _undecodable(raw: Any, error: BaseException) -> MalformedMessage:
    """Describe a message that failed to decode in an unexpected way, with its id if it has one."""
    headers = getattr(raw, "headers", None)
    headers = headers if isinstance(headers, dict) else {}
    task_id, name = headers.get("id"), headers.get("task")
    return MalformedMessage(
        f"Could not decode the message ({_short(error)}).",
        task_id=task_id if isinstance(task_id, str) and len(task_id) <= 255 else None,
        task_name=name if isinstance(name, str) and len(name) <= 255 else None,
    )


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split())[:300]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def default_worker_id() -> str:
    return f"{socket.gethostname()[:30]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Worker:
    def __init__(
        self,
        *,
        queues: list[str],
        runner: BaseRunner,
        broker: Broker | None = None,
        batch: bool = False,
        max_tasks: int | None = None,
        install_signals: bool = True,
        events: bool = False,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
    ) -> None:
        self.queues = queues
        self.runner = runner
        self.broker = broker or Broker()
        self.batch = batch
        self.max_tasks = max_tasks
        self.install_signals = install_signals
        self.events = events  # send Celery's task events and heartbeats (``-E``)
        self.processed = 0
        self.stopping = False
        self._cancelled = False
        self._next_schedule_check = 0.0
        self._next_restore = 0.0
        # After a runner error (e.g. the database is down) consuming pauses, growing to 10s,
        # so that a message given back to the broker is not retried in a hot loop.
        self._pause = 0.0
        self._paused_until = 0.0
        # An acknowledgement that failed on the live connection: reconnect before consuming.
        self._broken: BaseException | None = None
        # Finished messages waiting to be acknowledged together (see _hold_acks).
        self._acks: list[Completion] = []
        self._acks_since = 0.0
        self._ack_window = 0  # how many may wait: ACK_WINDOW where the broker batches them
        self.leases: LeaseKeeper = LeaseKeeper(kind_of("none"), "", lease=1.0, options={})
        # What Celery's inspect/stats see (read from the control thread): the messages
        # submitted and not yet collected, with their start times, and finished tasks by name.
        self._tracked_lock = threading.Lock()
        self._active: dict[str, tuple[TaskMessage, float]] = {}
        self._totals: Counter[str] = Counter()
        self._observers: list[control.TaskObserver] = []  # e.g. Celery's events (``-E``)
        # Liveness (``/healthz``): when the loop last ticked (monotonic), and where the
        # metrics are served (``--metrics-port``; None: not served).
        self.heartbeat = time.monotonic()
        self.metrics_port, self.metrics_host = metrics_port, metrics_host
        self._next_beat = 0.0  # when to write the next WorkerHeartbeat (monotonic)
        self._beat_written = False

    @property
    def worker_id(self) -> str:
        return self.runner.worker_id

    # -- lifecycle --------------------------------------------------------------

    def run(self) -> int:
        """Consume until drained (batch), ``max_tasks`` or a signal; return the exit code."""
        server = None
        if self.metrics_port is not None:
            from django_ray import metrics

            server = metrics.serve(self, self.metrics_host, self.metrics_port)
        previous = self._install_signals() if self.install_signals else {}
        try:
            return self._run()
        finally:
            self._beat(stop=True)
            if server is not None:
                server.stop()
            # Run in-process (call_command, tests), the caller gets its own handlers back.
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _run(self) -> int:
        bootstrap.ensure_ready()
        self.runner.start()
        # Room for the finished messages waiting to be acknowledged together.
        self._ack_window = ACK_WINDOW if self.broker.batches_acks else 0
        self.broker.consume(
            self.queues, self._on_message, prefetch=self.runner.concurrency + self._ack_window
        )
        # The leases of the messages this worker holds, renewed while it lives.
        self.leases = self.broker.lease_keeper()
        if self.leases.needed:
            self.leases.start()
        # Celery's remote control (revoke, inspect, shutdown), heard on a thread of its own.
        control_listener = control.start(
            self.broker, worker_id=self.worker_id, terminate=self.runner.terminate, worker=self,
            events=self.events,
        )  # fmt: skip
        logger.info(
            "Worker %s consuming %s from %s (%s).",
            self.worker_id, ",".join(self.queues), self.broker.kind, self.runner.describe(),
        )  # fmt: skip
        try:
            while not self._should_exit():
                self._step()
        except WorkerShutdown:
            logger.warning("Stopping at once; unfinished messages go back to the broker.")
            self._flush_acks()  # those whose outcomes are stored
            if control_listener is not None:
                control_listener.stop()
            self.leases.stop()
            self.runner.shutdown(wait=False)
            self.broker.close()
            return 1
        self.broker.cancel()
        self.runner.shutdown(wait=True)
        self._collect(self.runner.poll(0))
        self._flush_acks()
        if control_listener is not None:
            control_listener.stop()
        self.leases.stop()
        self.broker.close()
        logger.info("Worker %s stopped after %d task(s).", self.worker_id, self.processed)
        return 0

    def _step(self) -> None:
        self.heartbeat = time.monotonic()
        self._beat()
        busy = self.runner.in_flight() > 0
        if time.monotonic() < self._paused_until:
            time.sleep(min(0.1, self._paused_until - time.monotonic()))
            self._collect(self.runner.poll(0))
            return
        if self._broken is not None:
            # kombu still counts the message it could not acknowledge as held: on a
            # connection that lives on, Redis would never be asked for another one.
            error, self._broken = self._broken, None
            self._reconnect(error)
            return
        got = False
        # A short look while tasks run or acknowledgements wait; else wait for a message.
        glance = busy or bool(self._acks)
        if self.runner.has_capacity():
            try:
                got = self.broker.drain(timeout=0.005 if glance else 0.5)
            except UNREADABLE_ITEM as e:
                # An item the transport could not turn into a message (not JSON, not an
                # envelope, a body it cannot decode): it is gone from the broker already, so
                # there is nothing to wait for; the next item may be fine. (Before the
                # broker's errors: kombu counts a KeyError as a Redis connection error.)
                logger.error("Dropped an item the transport could not read: %s", _short(e))
                return
            except self.broker.recoverable_errors as e:
                self._reconnect(e)
                return
            except Exception as e:
                # Something no message handler refused: e.g. a database error while handling
                # one. The broker keeps (or redelivers) what was not acknowledged.
                logger.error("Could not take a message from the broker: %s", _short(e))
                self._back_off()
                return
            self._collect(self.runner.poll(0))
        else:
            # Full: wait on the runner, which returns as soon as one task finishes.
            self._collect(self.runner.poll(0.05))
        if self._acks and (not got or self._acks_due()):
            self._flush_acks()
        published = self._tick_schedule()
        self._tick_restore()
        if not busy and not got and not self.runner.in_flight():
            # Work paused: give back what CONN_MAX_AGE does not let an idle process keep.
            close_stale_connections()
        # Only a drain that had room for a message and found none shows the queue is empty;
        # messages just published from the schedule have not been drained yet.
        if self.batch and not glance and not got and not published and self._idle():
            logger.info("Batch mode: nothing left to run.")
            self.stopping = True

    def _beat(self, *, stop: bool = False) -> None:
        """Write this worker's ``WorkerHeartbeat`` when due (one UPDATE); delete it at exit."""
        from django_ray import conf
        from django_ray.models import WorkerHeartbeat

        if stop and not self._beat_written:
            return  # it never started (e.g. a broken task module): nothing to remove
        if not stop and self.heartbeat < self._next_beat:
            return
        self._next_beat = self.heartbeat + float(conf.get("HEARTBEAT_INTERVAL"))
        try:  # a heartbeat never stops the worker
            if stop:
                WorkerHeartbeat.objects.filter(pk=self.worker_id).delete()
            else:
                mode = str(getattr(self.runner, "mode", "?"))
                WorkerHeartbeat.beat(
                    self.worker_id, mode=mode, queues=self.queues, in_flight=self.runner.in_flight()
                )
                self._beat_written = True
        except Exception as e:
            logger.warning("Could not write the worker heartbeat: %s", _short(e))

    def _should_exit(self) -> bool:
        if self.max_tasks is not None and self.processed >= self.max_tasks:
            self.stopping = True
        if self.stopping and not self._cancelled:
            self.broker.cancel()
            self._cancelled = True
        return self.stopping and self.runner.in_flight() == 0

    def _reconnect(self, error: BaseException) -> None:
        self._flush_acks()  # on a broken connection they fail, and come back after their lease
        delay = 1.0
        while not self.stopping:
            self.heartbeat = time.monotonic()
            logger.warning("Broker connection lost (%s); reconnecting in %.0fs.", error, delay)
            time.sleep(delay)
            # django:// is the database: a connection the outage broke must be dropped.
            check_connections()
            try:
                self.broker.reconnect()
            except self.broker.recoverable_errors as e:
                error, delay = e, min(delay * 2, 30.0)
                continue
            logger.info("Reconnected to the broker.")
            self._broken = None  # a fresh connection: nothing is held on the old one
            return

    def _install_signals(self) -> dict[int, Any]:
        def handler(signum: int, frame: Any) -> None:
            if self.stopping:
                raise WorkerShutdown()
            logger.info(
                "Received %s: finishing running tasks, then exiting.", signal.Signals(signum).name
            )
            self.stopping = True

        return {
            signum: signal.signal(signum, handler) for signum in (signal.SIGTERM, signal.SIGINT)
        }

    # -- messages ---------------------------------------------------------------

    def _on_message(self, raw: Any) -> None:
        if self.stopping or (
            self.max_tasks is not None
            and self.processed + self.runner.in_flight() >= self.max_tasks
        ):
            raw.requeue()
            return
        check_connections()
        try:
            message = decode_kombu(raw, self.broker.kind)
        except MalformedMessage as e:
            self._refuse(raw, e)
            return
        except Exception as e:  # whatever decoding met, it is the message's fault
            self._refuse(raw, _undecodable(raw, e))
            return
        if message.eta is not None and message.eta > timezone.now():
            try:
                if schedule.park(message):
                    logger.info(
                        "Task %s [%s] parked until %s.", message.task, message.id, message.eta
                    )
                record_for(message)
            except DatabaseError as e:
                # A value the database refuses: record what can be, and never retry it.
                self._refuse(raw, _undecodable(raw, e))
                return
            raw.ack()
            return
        with self._tracked_lock:
            self._active[message.id] = (message, time.time())
        self._notify("started", message, None)
        self.leases.hold(raw)  # before submit: the sync runner runs it inside submit()
        try:
            self.runner.submit(message, raw)
        except BaseException:
            self._untrack(message.id)
            self._notify("finished", message, None)
            raise
        self._collect(self.runner.poll(0))

    def _refuse(self, raw: Any, error: MalformedMessage) -> None:
        logger.error(
            "Refused malformed message (task=%r id=%r): %s", error.task_name, error.task_id, error
        )
        if error.task_id:
            queue = (raw.delivery_info or {}).get("routing_key") or "default"
            stub = TaskMessage(id=error.task_id, task=error.task_name or "<unknown>", queue=queue)
            try:
                outcome = settle.failed(stub, error, with_traceback=False)
                for follow_up in outcome.publish:  # e.g. the end of a chord it belongs to
                    self.dispatch(follow_up)
            except (DatabaseError, ValueError) as e:  # an id or name the database refuses
                logger.error("Could not record the refusal of %r: %s", error.task_id, e)
        raw.reject(requeue=False)
        self.processed += 1

    def _collect(self, completions: list[Completion]) -> None:
        settled: list[Completion] = []
        try:
            for done in completions:
                outcome = done.outcome if done.error is None else None
                self._untrack(done.message.id, finished=outcome is not None)
                self.leases.release(done.delivery)
                self._notify("finished", done.message, outcome)
                if done.error is not None or done.outcome is None:
                    # A database that went away is one line; anything else, its traceback.
                    trace = None if isinstance(done.error, DatabaseError) else done.error
                    logger.error("Task %s [%s] was not completed (%s); returning it to the broker.",
                                 done.message.task, done.message.id,
                                 _short(done.error) if done.error else "no outcome",
                                 exc_info=trace)  # fmt: skip
                    self._safe(done.delivery, "reject", requeue=True)
                    self._back_off()
                    continue
                self._pause = 0.0
                for follow_up in done.outcome.publish:
                    self.dispatch(follow_up)
                settled.append(done)
        finally:
            for done in settled:
                assert done.outcome is not None
                self.processed += 1
                logger.info(
                    "Task %s [%s] %s.", done.message.task, done.message.id, done.outcome.status
                )
            self._hold_acks(settled)

    def _hold_acks(self, settled: list[Completion]) -> None:
        """Acknowledge ``settled`` (outcomes stored, follow-ups published), now or soon.

        Where the broker takes acknowledgements in batches (Redis: one round trip for the
        lot) they wait for up to ``ACK_WINDOW`` messages or ``ACK_DELAY_S``, and always go
        before the worker waits for the broker; elsewhere they go at once.
        """
        if not settled:
            return
        if not self._acks:
            self._acks_since = time.monotonic()
        self._acks.extend(settled)
        if len(self._acks) >= max(1, self._ack_window):
            self._flush_acks()

    def _acks_due(self) -> bool:
        return bool(self._acks) and time.monotonic() - self._acks_since >= ACK_DELAY_S

    def _flush_acks(self) -> None:
        settled, self._acks = self._acks, []
        if not settled:
            return
        try:
            with self.broker.acks_batched():
                for done in settled:
                    self._safe(done.delivery, "ack")
        except self.broker.recoverable_errors as e:
            # Their outcomes are stored: redelivered after their lease, they are dropped.
            self._not_acknowledged([done.delivery for done in settled], e)

    # -- what Celery's remote control sees (called from the control thread) -------

    def active_tasks(self) -> list[tuple[TaskMessage, float]]:
        """Return the messages in flight and when each was submitted (epoch seconds)."""
        with self._tracked_lock:
            return list(self._active.values())

    def task_totals(self) -> dict[str, int]:
        """Return how many tasks of each name finished here (their outcome stored)."""
        with self._tracked_lock:
            return dict(self._totals)

    def request_stop(self, reason: str) -> None:
        """Stop as on SIGTERM: take no more messages, let running tasks finish, exit 0.

        ``reason`` is logged by the caller (Celery's ``control shutdown``: the control thread).
        """
        self.stopping = True

    def watch(self, observer: control.TaskObserver) -> None:
        """Call ``observer(phase, message, outcome)`` as each task starts and ends."""
        self._observers.append(observer)

    def _notify(self, phase: str, message: TaskMessage, outcome: Any) -> None:
        for observer in self._observers:
            try:
                observer(phase, message, outcome)
            except Exception:
                logger.exception("A task observer failed.")

    def _untrack(self, task_id: str, *, finished: bool = False) -> None:
        with self._tracked_lock:
            message, _ = self._active.pop(task_id, (None, 0.0))
            if finished and message is not None:
                self._totals[message.task] += 1

    def _back_off(self) -> None:
        """Pause consuming, longer each time in a row (0.5 s up to 10 s)."""
        self._pause = min(max(self._pause * 2, 0.5), 10.0)
        self._paused_until = time.monotonic() + self._pause

    def _safe(self, delivery: Any, action: str, **kwargs: Any) -> None:
        """``delivery.ack()`` or ``.reject(...)``; a broken connection redelivers it."""
        try:
            getattr(delivery, action)(**kwargs)
        except self.broker.recoverable_errors as e:
            self._not_acknowledged([delivery], e)

    def _not_acknowledged(self, deliveries: list[Any], error: BaseException) -> None:
        """The broker did not take them: it redelivers them. One that came through the live
        connection makes the worker reconnect before it consumes again."""
        logger.warning(
            "Could not acknowledge %d message(s) (%s); they will be redelivered.",
            len(deliveries), error,
        )  # fmt: skip
        if any(self.broker.delivered_here(delivery) for delivery in deliveries):
            self._broken = error

    def dispatch(self, message: TaskMessage) -> None:
        """Publish a follow-up message, parking it durably if it is due later."""
        if (
            message.eta is not None
            and message.eta > timezone.now()
            and not self.broker.kind.holds_eta
        ):
            schedule.park(message)
        else:
            # To the broker this worker consumes (``--broker`` may differ from the settings).
            publish_now(message, url=self.broker.url)

    # -- schedule ---------------------------------------------------------------

    def _tick_schedule(self) -> int:
        """Publish the parked messages that are due; return how many."""
        now = time.monotonic()
        if now < self._next_schedule_check:
            return 0
        from django_ray import conf

        self._next_schedule_check = now + float(conf.get("SCHEDULE_INTERVAL"))
        published = schedule.publish_due(self.queues, url=self.broker.url)
        if published:
            logger.info("Published %d scheduled message(s).", published)
        return published

    def _tick_restore(self) -> None:
        """Every ``RESTORE_INTERVAL_S``: put back what dead workers held (``restore_expired``)."""
        now = time.monotonic()
        if now < self._next_restore:
            return
        self._next_restore = now + RESTORE_INTERVAL_S
        try:
            self.broker.restore_expired()
        except self.broker.recoverable_errors as e:  # the next drain reconnects
            logger.warning("Could not look for expired deliveries: %s", _short(e))

    def _idle(self) -> bool:
        if self.runner.in_flight():
            return False
        soon = timezone.now().timestamp() + BATCH_GRACE_SECONDS
        due = schedule.next_due(self.queues)
        if due is not None and due.timestamp() <= soon:
            return False
        if self.broker.kind.in_database:
            from datetime import UTC, datetime

            from django_ray.models import QueueMessage

            horizon = datetime.fromtimestamp(soon, tz=UTC)
            rows = QueueMessage.objects.filter(visible_at__lte=horizon)
            if "*" not in self.queues:
                rows = rows.filter(queue__in=self.queues)
            return not rows.exists()
        return True
