"""Remote control from Celery clients: ``AsyncResult.revoke()`` reaches our worker.

Celery broadcasts control commands on the fanout exchange ``celery.pidbox`` (on Redis a
``PUBLISH`` on ``/{db}.celery.pidbox``). ``ControlListener`` is a kombu pidbox node on
its own connection and thread, so a task running in the main thread (``--sync``) does not
delay it. It handles ``revoke`` only: the ids are marked REVOKED in ``TaskRecord`` (durable
and shared by every worker process, see ``results.revoke``) and their Celery result is
stored when its message comes up, so the task never starts; with ``terminate=True`` an
attempt this worker runs is stopped by its runner (``BaseRunner.terminate``: SIGALRM in
``--sync``, ``ray.cancel(force=True)`` in ``--local``/``--cluster``, a stopped job in Ray
Job mode) and stored REVOKED "terminated". Other commands (ping, inspect) are left to
Celery workers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from kombu import Connection
from kombu.pidbox import Mailbox

from django_ray import celery_format as fmt
from django_ray.runtime import time_limits

logger = logging.getLogger("django_ray.control")

__all__ = ["ControlListener", "start"]

# Brokers that carry Celery's pidbox fanout.
CONTROL_BROKERS = frozenset({"redis", "amqp"})
# How often the listener looks up from the broker to see whether it should stop.
POLL_SECONDS = 0.5


class ControlListener(threading.Thread):
    """Consume the pidbox of one worker on a daemon thread until ``stop()``."""

    def __init__(
        self,
        connection: Connection,
        *,
        hostname: str,
        namespace: str = "celery",
        terminate: Callable[[str], bool] = time_limits.terminate,
    ) -> None:
        super().__init__(name="django-ray-control", daemon=True)
        self.connection = connection
        self.hostname = hostname
        self.namespace = namespace
        self.terminate = terminate
        self.ready = threading.Event()
        self._stopping = threading.Event()

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
                queue_ttl=300.0, queue_expires=10.0, queue_exclusive=False,
            )(conn)  # fmt: skip
            channel = conn.channel()
            node = mailbox.Node(self.hostname, channel=channel, handlers={"revoke": self._revoke})

            def on_message(body: Any, message: Any) -> None:
                # Only revoke is ours; answering ping/inspect would mislead Celery's tools.
                if isinstance(body, dict) and body.get("method") == "revoke":
                    node.handle_message(body, message)

            consumer = node.listen(callback=on_message)
            logger.info("Listening for Celery revoke commands as %s.", self.hostname)
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


def start(
    broker: Any, *, worker_id: str, terminate: Callable[[str], bool] | None = None
) -> ControlListener | None:
    """Start listening for Celery control commands on ``broker``'s server, if it has them.

    ``terminate(task_id)`` stops a running attempt (the runner's ``terminate``).
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
    )
    listener.start()
    return listener
