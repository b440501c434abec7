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
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from kombu import Connection
from kombu.clocks import LamportClock
from kombu.pidbox import Mailbox

from django_ray import celery_format as fmt
from django_ray.runtime import time_limits

if TYPE_CHECKING:
    from django_ray.message import TaskMessage
    from django_ray.runners import BaseRunner

logger = logging.getLogger("django_ray.control")

__all__ = ["COMMANDS", "ControlListener", "WorkerView", "request_info", "start"]

# Brokers that carry Celery's pidbox fanout.
CONTROL_BROKERS = frozenset({"redis", "amqp"})
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
    ) -> None:
        super().__init__(name="django-ray-control", daemon=True)
        self.connection = connection
        self.hostname = hostname
        self.namespace = namespace
        self.terminate = terminate
        self.worker = worker
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

    def stop(self, timeout: float = 0.0) -> None:
        """Ask the thread to end (within ``POLL_SECONDS``); wait up to ``timeout`` for it."""
        self._stopping.set()
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

        from django_ray import results

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


def _broker_info(connection: Connection) -> dict[str, Any]:
    """Return the broker section of Celery's ``stats``: the connection, without secrets."""
    info: Mapping[str, Any] = connection.info()
    safe = {k: v for k, v in info.items() if k != "password"}
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
) -> ControlListener | None:
    """Start listening for Celery control commands on ``broker``'s server, if it has them.

    ``terminate(task_id)`` stops a running attempt (the runner's ``terminate``); ``worker``
    tells what ``active``, ``stats`` and ``shutdown`` need.
    """
    if broker.kind not in CONTROL_BROKERS:
        return None
    namespace = "celery"
    from django_ray import registry

    app = registry.celery_app()
    if app is not None:
        namespace = app.conf.control_exchange
    listener = ControlListener(
        broker.connection,
        hostname=fmt.node_name(worker_id),
        namespace=namespace,
        terminate=terminate or time_limits.terminate,
        worker=worker,
    )
    listener.start()
    return listener
