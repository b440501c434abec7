"""Leases: a delivered message stays invisible to other workers while its worker lives.

A message a worker takes is leased for ``DJANGO_RAY["VISIBILITY_TIMEOUT"]`` seconds (30 by
default). While the worker holds it (the task waits, runs in the worker, in Ray or in a
Ray job) a ``LeaseKeeper`` thread renews the lease every third of that time, on a
connection of its own, so a task that runs for hours is never delivered twice while its
worker lives, and the work of a worker that died comes back within one lease. What a
lease is differs by broker, and is said once here:

* ``django://``: the row's ``visible_at`` (the transport hides a claimed row until then);
* Redis: the delivery's score in the consumer's unacked index (kombu's ``restore_visible``
  puts back what is older than the visibility timeout). django-ray consumers use an index
  of their own (``REDIS_UNACKED_KEYS``), so a Celery worker on the same Redis is never
  restored by our shorter lease, nor we by its;
* RabbitMQ: nothing to renew: the broker requeues a dead consumer's unacknowledged
  messages when its connection drops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django_ray.transports.kinds import BrokerKind

logger = logging.getLogger(__name__)

__all__ = ["REDIS_UNACKED_KEYS", "RESTORE_LOCK_SECONDS", "LeaseKeeper", "lease_seconds"]

# kombu Redis transport options: where django-ray consumers keep their unacknowledged
# deliveries (kombu's defaults are "unacked", "unacked_index", "unacked_mutex").
# Seconds the lock around kombu's restore of expired deliveries outlives a consumer killed
# while holding it. kombu's default, 300, kept a killed worker's messages from coming back
# for five minutes whenever the kill landed inside a restore (each restore takes
# milliseconds; consumers restore on every idle poll).
RESTORE_LOCK_SECONDS = 5

REDIS_UNACKED_KEYS = {
    "unacked_key": "django_ray_unacked",
    "unacked_index_key": "django_ray_unacked_index",
    "unacked_mutex_key": "django_ray_unacked_mutex",
}


def lease_seconds() -> float:
    from django_ray import conf

    return float(conf.get("VISIBILITY_TIMEOUT"))


class LeaseKeeper(threading.Thread):
    """Renew the leases of the deliveries a worker holds, on a daemon thread."""

    def __init__(
        self, kind: BrokerKind, url: str, *, lease: float, options: dict[str, Any]
    ) -> None:
        super().__init__(name="django-ray-leases", daemon=True)
        self.lease = lease
        self.interval = max(0.2, lease / 3)
        self._tags: dict[str, None] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._renew: Callable[[list[str]], None] | None = _renewer(kind, url, lease, options)

    @property
    def needed(self) -> bool:
        return self._renew is not None

    def hold(self, delivery: Any) -> None:
        tag = getattr(delivery, "delivery_tag", None)
        if self._renew is not None and isinstance(tag, str):
            with self._lock:
                self._tags[tag] = None

    def release(self, delivery: Any) -> None:
        tag = getattr(delivery, "delivery_tag", None)
        with self._lock:
            self._tags.pop(tag, None)  # type: ignore[arg-type]

    def held(self) -> list[str]:
        with self._lock:
            return list(self._tags)

    def run(self) -> None:
        while not self._stopping.wait(self.interval):
            self.renew_now()
        if self._renew is not None:
            _close_database_connections()

    def renew_now(self) -> None:
        tags = self.held()
        if not tags or self._renew is None:
            return
        try:
            self._renew(tags)
        except Exception as e:  # the broker or database is away: try again next round
            logger.warning("Could not renew the leases of %d message(s): %s", len(tags), e)

    def stop(self) -> None:
        self._stopping.set()


def _renewer(
    kind: BrokerKind, url: str, lease: float, options: dict[str, Any]
) -> Callable[[list[str]], None] | None:
    if kind.lease == "row":
        return _django_renewer(lease, options)
    if kind.lease == "unacked":
        return _redis_renewer(url, options)
    return None  # RabbitMQ requeues on a dropped connection; others: kombu's own semantics


def _django_renewer(lease: float, options: dict[str, Any]) -> Callable[[list[str]], None]:
    def renew(tags: list[str]) -> None:
        from django.utils import timezone

        from django_ray.models import QueueMessage

        hidden_until = timezone.now() + timedelta(seconds=lease)
        alias = options.get("database", "default")
        QueueMessage.objects.using(alias).filter(delivery_tag__in=tags).update(
            visible_at=hidden_until
        )

    return renew


def _redis_renewer(url: str, options: dict[str, Any]) -> Callable[[list[str]], None]:
    import redis

    client = redis.Redis.from_url(url)
    index = options.get("unacked_index_key", REDIS_UNACKED_KEYS["unacked_index_key"])

    def renew(tags: list[str]) -> None:
        # XX: only deliveries still unacknowledged (an acked one is gone from the index).
        client.zadd(index, dict.fromkeys(tags, time.time()), xx=True)

    return renew


def _close_database_connections() -> None:
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        connection.close()
