"""The durable ETA schedule: future messages wait in the database, not unacked in memory.

A message whose ETA lies in the future is parked here (one row per task id and attempt,
so a redelivered copy is not parked twice) and its broker message is acknowledged. The
worker publishes due rows back to the broker, claiming them with ``SKIP LOCKED`` where
the database has it so that two workers never publish the same row.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from django_ray.exceptions import MalformedMessage
from django_ray.message import TaskMessage, decode
from django_ray.models import ScheduledMessage
from django_ray.transport import publish_now

logger = logging.getLogger(__name__)

__all__ = ["next_due", "park", "publish_due"]


def park(message: TaskMessage) -> bool:
    """Keep ``message`` until its ETA; return False if it was already parked."""
    assert message.eta is not None
    try:
        with transaction.atomic():
            ScheduledMessage.objects.create(
                task_id=message.id,
                retries=message.retries,
                queue=message.queue,
                eta=message.eta,
                payload={"headers": message.wire_headers(), "body": message.wire_body()},
            )
    except IntegrityError:
        return False
    return True


def publish_due(queues: list[str], *, limit: int = 100, url: str | None = None) -> int:
    """Publish the parked messages of ``queues`` whose ETA has come to the broker at ``url``."""
    rows = ScheduledMessage.objects.filter(eta__lte=timezone.now()).order_by("eta")
    if "*" not in queues:
        rows = rows.filter(queue__in=queues)
    if connection.features.has_select_for_update_skip_locked:
        rows = rows.select_for_update(skip_locked=True)
    published = 0
    with transaction.atomic():
        for row in rows[:limit]:
            try:
                message = decode(
                    headers=row.payload["headers"],
                    body=row.payload["body"],
                    content_type="application/json",
                    queue=row.queue,
                )
            except MalformedMessage as e:
                _drop_unpublishable(row, e, url=url)
                continue
            # Due now: the receiving worker must not park it again.
            publish_now(message.replace(eta=None), url=url)
            if ScheduledMessage.objects.filter(pk=row.pk).delete()[0]:
                published += 1
    return published


def _drop_unpublishable(row: ScheduledMessage, error: MalformedMessage, *, url: str | None) -> None:
    """Record FAILED the parked message that cannot be published again, and drop its row."""
    from django_ray.runtime import settle

    logger.error("Dropping parked message %s: it cannot be published again: %s", row.task_id, error)
    stub = TaskMessage(id=row.task_id, task=error.task_name or "<unknown>", queue=row.queue)
    outcome = settle.failed(stub, error, with_traceback=False)
    ScheduledMessage.objects.filter(pk=row.pk).delete()
    for follow_up in outcome.publish:
        publish_now(follow_up, url=url)


def next_due(queues: list[str]) -> datetime | None:
    """Return the earliest ETA parked for ``queues``."""
    rows = ScheduledMessage.objects.all()
    if "*" not in queues:
        rows = rows.filter(queue__in=queues)
    row = rows.order_by("eta").only("eta").first()
    return row.eta if row else None
