"""Remote control from Celery clients: Celery's own tools see our worker and command it.

Celery broadcasts control commands on the fanout exchange ``celery.pidbox`` (on Redis a
``PUBLISH`` on ``/{db}.celery.pidbox``). ``ControlListener`` is a kombu pidbox node named
``django_ray.<worker id>@<host>`` on its own connection and thread, so a task running in
the main thread (``--sync``) does not delay it. It answers as a Celery worker does (replies
go to the client's ``reply_to``, keyed by node name, see ``celery/worker/control.py``):

- ``ping``: ``{"ok": "pong"}``;
- ``active``: the requests this worker runs (Celery's ``Request.info()`` dicts);
- ``registered``: the task names this worker can run (``registry.known_names()``);
- ``stats``: ``pid``, ``total`` (tasks finished, per name), ``pool``, ``broker``,
  ``clock``, ``uptime``, ``prefetch_count``, ``rusage``, and ours under ``django_ray``;
- ``revoke``: the ids are marked REVOKED in ``TaskRecord`` (durable and shared by every
  worker process, see ``results.revoke``) and their Celery result is stored when its
  message comes up, so the task never starts; with ``terminate=True`` an attempt this
  worker runs is stopped by its runner (``BaseRunner.terminate``: SIGALRM in ``--sync``,
  ``ray.cancel(force=True)`` in ``--local``/``--cluster``, a stopped job in Ray Job mode)
  and stored REVOKED "terminated";
- ``shutdown``: the worker stops as on SIGTERM (running tasks finish, exit 0). Unlike a
  Celery worker, which exits without a word, it replies ``{"ok": ...}`` first, so that
  ``celery control shutdown`` exits 0.

Other commands (``hello`` from a starting Celery worker, ``rate_limit``, ``pool_grow``...)
get no reply, as an unknown command gets none from a Celery worker.

With events on (``django_ray_worker -E``, or Celery's ``worker_send_task_events``: the
``CELERY_WORKER_SEND_TASK_EVENTS`` setting), ``EventSender`` sends Celery's events as a
Celery worker does (``celery.events.EventDispatcher``, so only where Celery is installed):
``worker-online``, ``worker-heartbeat`` every 2 s, ``worker-offline``, and per task
``task-received``, ``task-started``, then ``task-succeeded``, ``task-failed``,
``task-retried`` or ``task-revoked``; a ``heartbeat`` command gets one at once. Flower and
``celery events`` then show the worker and its tasks. The worker's thread only queues them;
a thread of their own publishes them.
"""

from __future__ import annotations

import logging
import os
import platform
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from kombu import Connection
from kombu.clocks import LamportClock
from kombu.pidbox import Mailbox

from django_ray.celery import wire as fmt
from django_ray.runtime import time_limits

if TYPE_CHECKING:
    from django_ray.message import TaskMessage
    from django_ray.runners import BaseRunner
    from django_ray.runtime.settle import Outcome

logger = logging.getLogger("django_ray.celery.control")

__all__ = [
    "COMMANDS", "ControlListener", "EventSender", "WorkerView", "events_enabled",
    "request_info", "start",
]  # fmt: skip

# How often the listener looks up from the broker to see whether it should stop.
POLL_SECONDS = 0.5
# The commands we answer; Celery's aliases (dump_active...) included.
COMMANDS = frozenset(
    {"ping", "active", "dump_active", "registered", "dump_tasks", "stats", "revoke",
     "shutdown"}
)  # fmt: skip


class WorkerView(Protocol):
    """What the listener needs to know of the worker it speaks for (``Worker`` has it)."""

    @property
    def worker_id(self) -> str: ...

    queues: list[str]
    runner: BaseRunner

    def active_tasks(self) -> list[tuple[TaskMessage, float]]:
        """Return the messages in flight with the time (epoch seconds) each was started."""
        ...

    def task_totals(self) -> dict[str, int]:
        """Return how many tasks of each name this worker has finished."""
        ...

    def request_stop(self, reason: str) -> None:
        """Stop as on SIGTERM: take no more messages, let running tasks finish."""
        ...

    def watch(self, observer: TaskObserver) -> None:
        """Call ``observer`` as each task is started and as it ends."""
        ...


# ``("started", message, None)`` when a task is handed to the runner, ``("finished",
# message, outcome)`` when it ends (outcome None: the runner failed, the message goes back).
TaskObserver = Callable[[str, "TaskMessage", "Outcome | None"], None]


def request_info(
    message: TaskMessage, *, started: float, hostname: str, worker_pid: int | None, safe: bool
) -> dict[str, Any]:
    """Return ``message`` as Celery's ``Request.info()`` shows a running task."""
    delivery = dict(message.delivery_info)
    if safe:
        args: Any = message.headers.get("argsrepr") or repr(tuple(message.args))
        kwargs: Any = message.headers.get("kwargsrepr") or repr(dict(message.kwargs))
    else:
        args, kwargs = fmt.json_safe(list(message.args)), fmt.json_safe(dict(message.kwargs))
    return {
        "id": message.id,
        "name": message.task,
        "args": args,
        "kwargs": kwargs,
        "type": message.task,
        "hostname": hostname,
        "time_start": started,
        # Acknowledged once its outcome is stored (Celery's acks_late), so never while running.
        "acknowledged": False,
        "delivery_info": {
            "exchange": delivery.get("exchange", ""),
            "routing_key": delivery.get("routing_key", message.queue),
            "priority": delivery.get("priority"),
            "redelivered": bool(delivery.get("redelivered", False)),
        },
        "worker_pid": worker_pid,
    }


class ControlListener(threading.Thread):
    """Consume the pidbox of one worker on a daemon thread until ``stop()``."""

    def __init__(
        self,
        connection: Connection,
        *,
        hostname: str,
        namespace: str = "celery",
        terminate: Callable[[str], bool] = time_limits.terminate,
        worker: WorkerView | None = None,
        events: EventSender | None = None,
    ) -> None:
        super().__init__(name="django-ray-control", daemon=True)
        self.connection = connection
        self.hostname = hostname
        self.namespace = namespace
        self.terminate = terminate
        self.worker = worker
        self.events = events
        self.clock = LamportClock()
        self.started = time.monotonic()
        self.ready = threading.Event()
        self._stopping = threading.Event()
        self.handlers: dict[str, Callable[..., Any]] = {
            "ping": self._ping,
            "active": self._active,
            "dump_active": self._active,
            "registered": self._registered,
            "dump_tasks": self._registered,
            "stats": self._stats,
            "revoke": self._revoke,
            "shutdown": self._shutdown,
        }
        if events is not None:  # ``celery events`` and Flower ask for one as they start
            self.handlers["heartbeat"] = self._heartbeat

    def stop(self, timeout: float = 0.0) -> None:
        """Ask the thread to end (within ``POLL_SECONDS``); wait up to ``timeout`` for it."""
        self._stopping.set()
        if self.events is not None:  # a moment for its worker-offline to go out
            self.events.stop(max(timeout, 1.0))
        if timeout:
            self.join(timeout)

    def run(self) -> None:
        delay = 1.0
        while not self._stopping.is_set():
            try:
                self._listen()
                delay = 1.0
            except self.connection.connection_errors + self.connection.channel_errors as e:
                logger.warning("Control connection lost (%s); reconnecting in %.0fs.", e, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, 30.0)
            except Exception:
                logger.exception("Control listener failed; restarting it.")
                self._stopping.wait(delay)
        from django.db import connection

        connection.close()

    def _listen(self) -> None:
        with self.connection.clone() as conn:
            mailbox = Mailbox(
                self.namespace, type="fanout", accept=["json"], serializer="json",
                queue_ttl=300.0, queue_expires=10.0, queue_exclusive=False, clock=self.clock,
            )(conn)  # fmt: skip
            channel = conn.channel()
            node = mailbox.Node(self.hostname, channel=channel, handlers=self.handlers)

            def on_message(body: Any, message: Any) -> None:
                # Only what we answer truthfully; anything else is left to Celery workers.
                if isinstance(body, dict) and body.get("method") in self.handlers:
                    self.clock.forward()  # as Celery's pidbox: clients rarely send a clock
                    node.handle_message(body, message)

            consumer = node.listen(callback=on_message)
            logger.info(
                "Listening for Celery revoke, shutdown and inspect commands as %s.", self.hostname
            )
            self.ready.set()
            try:
                while not self._stopping.is_set():
                    try:
                        conn.drain_events(timeout=POLL_SECONDS)
                    except TimeoutError:
                        continue
            finally:
                self.ready.clear()
                consumer.cancel()

    # -- inspect ----------------------------------------------------------------

    def _ping(self, state: Any, **_: Any) -> dict[str, str]:
        return {"ok": "pong"}

    def _active(self, state: Any, safe: bool | None = None, **_: Any) -> list[dict[str, Any]]:
        if self.worker is None:
            return []
        pid = os.getpid() if self.worker.runner.mode == "sync" else None
        return [
            request_info(m, started=t, hostname=self.hostname, worker_pid=pid, safe=bool(safe))
            for m, t in self.worker.active_tasks()
        ]

    def _registered(
        self, state: Any, taskinfoitems: Any = None, builtins: bool = False, **_: Any
    ) -> list[str]:
        from django_ray import registry

        # As Celery: its builtins (celery.map, celery.starmap...) only when asked for.
        return [n for n in registry.known_names() if builtins or not n.startswith("celery.")]

    def _stats(self, state: Any, **_: Any) -> dict[str, Any]:
        info: dict[str, Any] = {
            "total": self.worker.task_totals() if self.worker else {},
            "pid": os.getpid(),
            "clock": str(self.clock.value),
            "uptime": round(time.monotonic() - self.started),
            "broker": _broker_info(self.connection),
        }
        if self.worker is not None:
            runner = self.worker.runner
            cls = type(runner)
            info["pool"] = {
                "implementation": f"{cls.__module__}:{cls.__qualname__}",
                "max-concurrency": runner.concurrency,
            }
            if runner.mode == "sync":
                info["pool"]["processes"] = [os.getpid()]
            info["prefetch_count"] = runner.concurrency
            info["django_ray"] = {
                "worker_id": self.worker.worker_id,
                "mode": runner.mode,
                "queues": list(self.worker.queues),
            }
        info["rusage"] = _rusage()
        return info

    # -- control ----------------------------------------------------------------

    def _heartbeat(self, state: Any, **_: Any) -> None:
        if self.events is not None:
            self.events.beat()

    def _shutdown(self, state: Any, msg: str = "Got shutdown from remote", **_: Any) -> Any:
        if self.worker is None:
            return {"error": "this worker cannot be stopped remotely"}
        logger.warning("%s: finishing running tasks, then exiting.", msg)
        self.worker.request_stop(str(msg))
        return {"ok": "shutting down"}

    def _revoke(
        self, state: Any, task_id: str | list[str], terminate: bool = False, **_: Any
    ) -> dict[str, str]:
        """Handle ``revoke``: keep the ids from starting (a running task finishes)."""
        from django.db import close_old_connections

        from django_ray.celery import results

        ids = [task_id] if isinstance(task_id, str) else [str(t) for t in task_id or ()]
        close_old_connections()
        try:
            marked = results.revoke(ids)
        finally:
            close_old_connections()
        if terminate:
            for running in [t for t in ids if self._terminate(t)]:
                logger.info("Terminating %s.", running)
        logger.info(
            "Revoked %s (marked before start: %s).", ", ".join(ids), ", ".join(marked) or "none"
        )
        return {"ok": f"tasks {', '.join(ids)} flagged as revoked"}

    def _terminate(self, task_id: str) -> bool:
        try:
            return self.terminate(task_id)
        except Exception:
            logger.exception("Could not terminate %s.", task_id)
            return False


class EventSender(threading.Thread):
    """Send Celery's worker and task events from a daemon thread until ``stop()``."""

    HEARTBEAT_SECONDS = 2.0  # Celery's worker heartbeat interval

    def __init__(
        self, connection: Connection, *, hostname: str, worker: WorkerView, app: Any = None
    ) -> None:
        super().__init__(name="django-ray-events", daemon=True)
        self.connection = connection
        self.hostname = hostname
        self.worker = worker
        self.app = app
        self._queue: queue.SimpleQueue[tuple[str, dict[str, Any]] | None] = queue.SimpleQueue()
        self._start_times: dict[str, float] = {}  # task id -> monotonic start, for ``runtime``
        self._stopped = threading.Event()

    # -- called from the worker's thread -----------------------------------------

    def on_task(self, phase: str, message: TaskMessage, outcome: Outcome | None) -> None:
        """Queue the events of a task being ``started`` or ``finished`` (``TaskObserver``)."""
        if phase == "started":
            self._start_times[message.id] = time.monotonic()
            self._put("task-received", _received_fields(message))
            self._put("task-started", {"uuid": message.id})  # pid: the dispatcher's
            return
        started = self._start_times.pop(message.id, None)
        if outcome is None or outcome.duplicate:
            return
        from django_ray.models import TaskStatus

        fields: dict[str, Any] = {"uuid": message.id}
        if outcome.status == TaskStatus.SUCCESSFUL:
            runtime = time.monotonic() - started if started is not None else 0.0
            self._put("task-succeeded", {**fields, "result": None, "runtime": runtime})
        elif outcome.status == TaskStatus.FAILED:
            self._put("task-failed", {**fields, "exception": outcome.error, "traceback": None})
        elif outcome.status == TaskStatus.RETRYING:
            self._put("task-retried", {**fields, "exception": outcome.error, "traceback": None})
        elif outcome.status == TaskStatus.REVOKED:
            terminated, expired = outcome.error == "terminated", outcome.error == "expired"
            self._put("task-revoked", {**fields, "terminated": terminated, "signum": None,
                                       "expired": expired})  # fmt: skip

    def beat(self) -> None:
        """Send a worker heartbeat now (Celery's ``heartbeat`` control command)."""
        self._put("worker-heartbeat", {})

    def _put(self, kind: str, fields: dict[str, Any]) -> None:
        if not self._stopped.is_set():
            self._queue.put((kind, fields))

    def stop(self, timeout: float = 0.0) -> None:
        """Send ``worker-offline`` and end (waiting up to ``timeout`` for it)."""
        if not self._stopped.is_set():
            self._stopped.set()
            self._queue.put(None)
        if timeout:
            self.join(timeout)

    # -- the sender's thread ------------------------------------------------------

    def run(self) -> None:
        from celery.events import EventDispatcher

        with self.connection.clone() as conn:
            dispatcher = EventDispatcher(
                conn, hostname=self.hostname, app=self.app, buffer_while_offline=False
            )
            self._send(dispatcher, "worker-online", self._worker_fields())
            next_beat = time.monotonic() + self.HEARTBEAT_SECONDS
            while True:
                try:
                    item = self._queue.get(timeout=max(0.0, next_beat - time.monotonic()))
                except queue.Empty:
                    item = ("worker-heartbeat", {})
                if item is None:
                    break
                kind, fields = item
                if kind == "worker-heartbeat":
                    fields = self._worker_fields()
                    next_beat = time.monotonic() + self.HEARTBEAT_SECONDS
                self._send(dispatcher, kind, fields)
            self._send(dispatcher, "worker-offline", self._worker_fields())
            dispatcher.close()

    def _worker_fields(self) -> dict[str, Any]:
        from celery import __version__

        return {
            "freq": self.HEARTBEAT_SECONDS,
            "active": len(self.worker.active_tasks()),
            "processed": sum(self.worker.task_totals().values()),
            "loadavg": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else [],
            "sw_ident": "py-celery",  # what Flower and Celery's event state expect of a worker
            "sw_ver": __version__,
            "sw_sys": platform.system(),
        }

    def _send(self, dispatcher: Any, kind: str, fields: dict[str, Any]) -> None:
        try:
            dispatcher.send(kind, retry=True, retry_policy={"max_retries": 3}, **fields)
        except Exception as e:  # an event is never worth stopping the worker for
            logger.warning("Could not send the event %s (%s).", kind, e)


def _received_fields(message: TaskMessage) -> dict[str, Any]:
    return {
        "uuid": message.id,
        "name": message.task,
        "args": repr(tuple(message.args)),
        "kwargs": repr(dict(message.kwargs)),
        "root_id": message.root_id or message.id,
        "parent_id": message.parent_id,
        "retries": message.retries,
        "eta": message.eta.isoformat() if message.eta else None,
        "expires": message.expires.isoformat() if message.expires else None,
    }


def events_enabled(requested: bool = False) -> bool:
    """Return whether to send Celery's events: ``-E``, or Celery's own setting says so."""
    from django.conf import settings

    from django_ray import registry

    if requested or getattr(settings, "CELERY_WORKER_SEND_TASK_EVENTS", False):
        return True
    app = registry.celery_app()
    return bool(app is not None and app.conf.worker_send_task_events)


def _broker_info(connection: Connection) -> dict[str, Any]:
    """Return the broker section of Celery's ``stats``: the connection, without secrets."""
    info: Mapping[str, Any] = connection.info()
    safe = {k: v for k, v in info.items() if k != "password"}
    transport = safe.get("transport")
    if isinstance(transport, type):  # a transport given as a class (ours for Redis): its name
        safe["transport"] = getattr(transport, "driver_type", transport.__name__)
    safe["transport_options"] = {
        k: v for k, v in dict(safe.get("transport_options") or {}).items() if "password" not in k
    }
    return {k: fmt.json_safe(v) for k, v in safe.items()}


def _rusage() -> dict[str, Any] | str:
    try:
        import resource
    except ImportError:  # not on this platform
        return "N/A"
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {name[3:]: getattr(usage, name) for name in dir(usage) if name.startswith("ru_")}


def start(
    broker: Any,
    *,
    worker_id: str,
    terminate: Callable[[str], bool] | None = None,
    worker: WorkerView | None = None,
    events: bool = False,
) -> ControlListener | None:
    """Start listening for Celery control commands on ``broker``'s server, if it has them.

    ``terminate(task_id)`` stops a running attempt (the runner's ``terminate``); ``worker``
    tells what ``active``, ``stats`` and ``shutdown`` need. With ``events`` (or Celery's
    setting, see ``events_enabled``) the worker's Celery events are sent too.
    """
    if not broker.kind.carries_control:
        if events:
            logger.warning("Celery events need Redis or RabbitMQ; not sending them.")
        return None
    namespace = "celery"
    from django_ray import registry

    app = registry.celery_app()
    if app is not None:
        namespace = app.conf.control_exchange
    sender = None
    if worker is not None and events_enabled(events):
        try:
            import celery  # noqa: F401
        except ImportError:
            logger.warning("Celery events need Celery installed; not sending them.")
        else:
            sender = EventSender(
                broker.connection, hostname=fmt.node_name(worker_id), worker=worker, app=app
            )
            worker.watch(sender.on_task)
            sender.start()
            logger.info("Sending Celery task events and worker heartbeats.")
    listener = ControlListener(
        broker.connection,
        hostname=fmt.node_name(worker_id),
        namespace=namespace,
        terminate=terminate or time_limits.terminate,
        worker=worker,
        events=sender,
    )
    listener.start()
    return listener


def broadcast(
    command: str,
    arguments: dict[str, Any] | None = None,
    *,
    destination: Sequence[str] = (),
    timeout: float = 1.0,
) -> dict[str, Any]:
    """Broadcast a Celery control command as ``app.control`` does; return replies by node.

    Used by the ``django-ray`` command line (``inspect``, ``revoke --terminate``); raises
    ``ModeNotAvailable`` on a broker without Celery's pidbox (``django://``).
    """
    from django_ray import registry
    from django_ray.exceptions import ModeNotAvailable
    from django_ray.transport import Broker

    broker = Broker()
    if not broker.kind.carries_control:
        broker.close()
        raise ModeNotAvailable(
            f"Remote control needs a Redis or RabbitMQ broker, not {broker.kind}://."
        )
    app = registry.celery_app()
    namespace = app.conf.control_exchange if app is not None else "celery"
    replies: dict[str, Any] = {}
    try:
        with broker.connection.clone() as conn:
            mailbox = Mailbox(
                namespace, type="fanout", accept=["json"], serializer="json",
                queue_ttl=300.0, reply_queue_ttl=300.0, queue_expires=10.0,
                reply_queue_expires=10.0,
            )(conn)  # fmt: skip
            answers = mailbox._broadcast(
                command,
                arguments or {},
                list(destination) or None,
                reply=True,
                timeout=timeout,
                limit=len(destination) or None,
            )
        for answer in answers or ():
            if isinstance(answer, dict):
                replies.update(answer)
    finally:
        broker.close()
    return replies
