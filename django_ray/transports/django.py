"""django:// - a kombu transport over the project's own database.

Features
========
* Type: Virtual
* Supports Direct: Yes
* Supports Topic: Yes (kombu's in-memory exchange tables)
* Supports Fanout: No
* Supports Priority: Yes (Django's -100..100, higher first)
* Supports ETA: Yes (a message is invisible until its ``eta`` header)
* Supports TTL: No

Connection string
=================
``django://`` uses the ``default`` database; ``django://<alias>`` another one.

Transport options
=================
* ``visibility_timeout``: seconds before an unacknowledged message is delivered again
  (default: ``DJANGO_RAY["VISIBILITY_TIMEOUT"]``).
* ``polling_interval``: seconds between two looks at an empty queue (default 0.1). On
  PostgreSQL a consumer also ``LISTEN``s for the ``NOTIFY`` each publish sends when its
  transaction commits, and wakes at once instead of at its next look.

A message is a row of ``QueueMessage``. Delivering it hides it for the visibility timeout;
acknowledging deletes it; a worker that dies without acknowledging loses nothing: the row
becomes visible again. On PostgreSQL rows are claimed with ``SELECT ... FOR UPDATE SKIP
LOCKED``; elsewhere an optimistic conditional ``UPDATE`` keeps two consumers from taking
the same row. Publishing inside ``transaction.atomic()`` makes the message part of that
transaction: a rollback removes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import select
import time
from datetime import UTC, datetime, timedelta
from queue import Empty
from typing import Any

from django.db import DatabaseError, connections, transaction
from django.db.models import F
from django.utils import timezone
from kombu.transport import virtual

from django_ray import conf
from django_ray.message import EARLIEST, LATEST
from django_ray.transports.acks import BatchedAcks

logger = logging.getLogger(__name__)

__all__ = ["Channel", "QoS", "Transport"]

# What building a kombu message from a row that is not one raises (bad JSON or base64, an
# unknown body encoding, fields of the wrong type).
UNREADABLE = (ValueError, TypeError, AttributeError, KeyError, LookupError, RecursionError)


class QoS(BatchedAcks):
    """Acknowledge by deleting the row (in ``batched()``, one DELETE for all of them);
    requeue by making it visible again."""

    def remove(self, tags: list[str]) -> None:
        self.channel._delete_rows(tags)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if requeue:
            self.channel._make_visible([delivery_tag])
        else:
            self.channel._delete_rows([delivery_tag])
        self._quick_ack(delivery_tag)

    def restore_unacked(self) -> list[Any]:
        self._flush()
        delivered = dict(self._delivered)
        self._delivered.clear()
        try:
            self.channel._make_visible(list(delivered))
        except DatabaseError as e:  # the database is gone: the timeout restores them
            # kombu wants (error, message) pairs, to log and dump the messages.
            return [(e, message) for message in delivered.values()]
        return []


class Channel(virtual.Channel):
    QoS = QoS
    do_restore = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        options = self.connection.client.transport_options
        self.visibility_timeout = float(
            options.get("visibility_timeout", conf.get("VISIBILITY_TIMEOUT"))
        )
        self.db_alias = self.connection.client.virtual_host.strip("/") or "default"
        if self.db_alias not in connections:
            self.db_alias = "default"

    @property
    def _rows(self):  # type: ignore[no-untyped-def]
        from django_ray.models import QueueMessage

        return QueueMessage.objects.using(self.db_alias)

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        headers = message.get("headers") or {}
        props = message.setdefault("properties", {})
        priority = headers.get("django_ray_priority")
        if not isinstance(priority, int):
            # A Celery-style 0-9 priority: this transport serves higher numbers first.
            priority = props.get("priority") if isinstance(props.get("priority"), int) else 0
        self._rows.create(
            queue=queue,
            payload=json.dumps(message),
            # Django's -100..100, as the worker reads it (a header past int4 is stored too).
            priority=max(-100, min(100, priority)),
            visible_at=_eta(headers.get("eta")) or timezone.now(),
            delivery_tag=props.get("delivery_tag"),
        )
        db = connections[self.db_alias]
        if db.vendor == "postgresql":  # wakes a listening consumer when this commits
            with db.cursor() as cursor:
                cursor.execute("SELECT pg_notify(%s, '')", [notify_channel(queue)])

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        now = timezone.now()
        try:
            with transaction.atomic(using=self.db_alias):
                candidates = self._rows.visible(queue, now)
                if connections[self.db_alias].features.has_select_for_update_skip_locked:
                    # The first visible row nobody holds is ours once locked: read it whole
                    # (one query, not a second one for its payload).
                    candidates = candidates.select_for_update(skip_locked=True)[:1]
                else:
                    # Optimistic claims may lose the race: not the payloads (up to megabytes
                    # each) of rows that may not be claimed.
                    candidates = candidates.only(
                        "pk", "visible_at", "delivery_tag", "delivered_count"
                    )[:10]
                for row in candidates:
                    if not self._claim(row, now):
                        continue
                    try:
                        return self._payload(row)
                    except UNREADABLE as e:
                        # Not a kombu message (a row written by hand or by a broken
                        # producer): nothing in it can be recorded or run. Dropped, or it
                        # would be the first row of the queue for ever.
                        logger.error(
                            "django:// dropped unreadable message #%s of queue %r (%s: %s).",
                            row.pk, queue, type(e).__name__, str(e)[:200],
                        )  # fmt: skip
                        row.delete()
        except DatabaseError as e:  # e.g. SQLite "database is locked": look again later
            logger.debug("django:// could not read queue %r: %s", queue, e)
        raise Empty()

    def _claim(self, row: Any, now: datetime) -> bool:
        hidden_until = now + timedelta(seconds=self.visibility_timeout)
        claimed = self._rows.filter(pk=row.pk, visible_at=row.visible_at).update(
            visible_at=hidden_until, delivered_count=F("delivered_count") + 1
        )
        return claimed == 1

    def _payload(self, row: Any) -> dict[str, Any]:
        payload = json.loads(row.payload)
        if not isinstance(payload, dict) or not isinstance(
            payload.setdefault("properties", {}), dict
        ):
            raise ValueError("the row is not a kombu message (a JSON object with properties)")
        props = payload["properties"]
        props["delivery_tag"] = row.delivery_tag
        if row.delivered_count:
            payload["redelivered"] = True
            props.setdefault("delivery_info", {})["redelivered"] = True
        # What kombu will build from it must build (headers an object, the body decodable),
        # or the failure would escape the worker's drain with the row claimed, and the row
        # come back after every lease.
        self.Message(payload, channel=self)
        return payload

    def _size(self, queue: str) -> int:
        return self._rows.filter(queue=queue).count()

    def _purge(self, queue: str) -> int:
        deleted, _ = self._rows.filter(queue=queue).delete()
        return deleted

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        self._purge(queue)

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return True

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        """Queues need no declaration: a queue is the set of rows with its name."""

    def _restore(self, message: Any) -> None:
        self._make_visible([message.delivery_tag])

    def _delete_rows(self, delivery_tags: list[str]) -> None:
        self._rows.filter(delivery_tag__in=delivery_tags).delete()

    def _make_visible(self, delivery_tags: list[str]) -> None:
        if delivery_tags:
            self._rows.filter(delivery_tag__in=delivery_tags).update(visible_at=timezone.now())


class Transport(virtual.Transport):
    Channel = Channel
    polling_interval = 0.1
    # kombu's ``default_port = None`` makes mypy type the attribute as None.
    default_port = 0  # type: ignore[assignment]
    driver_type = "django"
    driver_name = "django"
    # Our own database; the connection itself never drops the way a socket does.
    connection_errors = (*virtual.Transport.connection_errors,)
    # kombu's one-element default makes mypy type the attribute as a one-element tuple.
    channel_errors = (*virtual.Transport.channel_errors, DatabaseError)  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listener: Listener | None = None

    def driver_version(self) -> str:
        import django

        return django.get_version()

    def drain_events(self, connection: Any, timeout: Any = None) -> Any:  # type: ignore[override]
        """kombu's loop over the channels, waiting between two looks on ``NOTIFY`` if it can."""
        cycle = self.cycle
        assert cycle is not None
        started = time.monotonic()
        interval = self.polling_interval
        if timeout and interval and interval > timeout:
            interval = timeout
        while True:
            try:
                cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                if timeout is not None and time.monotonic() - started >= timeout:
                    raise TimeoutError() from None
                if interval is not None:
                    self._pause(interval)

    def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less when a publish to a queue consumed here commits."""
        queues = {q for channel in self.channels for q in channel._active_queues}
        alias = self.channels[0].db_alias if self.channels else "default"
        if queues and connections[alias].vendor == "postgresql":
            try:
                if self._listener is None:
                    self._listener = Listener(alias)
                self._listener.wait(queues, seconds)
                return
            except Exception as e:  # the database is away: poll as elsewhere
                logger.warning("django:// could not LISTEN for new messages (%s).", e)
                self.close_listener()
        time.sleep(seconds)

    def close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def close_connection(self, connection: Any) -> None:
        self.close_listener()
        super().close_connection(connection)


class Listener:
    """A connection of its own (autocommit) that ``LISTEN``s on the consumed queues."""

    def __init__(self, alias: str) -> None:
        db = connections[alias]
        self.raw = db.get_new_connection(db.get_connection_params())
        self.raw.autocommit = True
        self.listening: set[str] = set()

    def wait(self, queues: set[str], seconds: float) -> None:
        for queue in queues - self.listening:
            self.raw.execute(f'LISTEN "{notify_channel(queue)}"')
            self.listening.add(queue)
        readable, _, _ = select.select([self.raw.fileno()], [], [], seconds)
        if readable:
            for _ in self.raw.notifies(timeout=0):  # read them all: one look serves them
                pass

    def close(self) -> None:
        try:
            self.raw.close()
        except Exception:
            logger.debug("Ignoring an error while closing the LISTEN connection.", exc_info=True)


def notify_channel(queue: str) -> str:
    """The ``NOTIFY`` channel of ``queue`` (a valid identifier, whatever the queue's name)."""
    return "django_ray_" + hashlib.sha1(queue.encode()).hexdigest()[:40]


def _eta(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
        parsed = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        return None  # delivered now; the worker refuses the message with the reason
    return parsed if EARLIEST <= parsed < LATEST else None
