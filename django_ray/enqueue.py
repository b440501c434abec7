"""The one enqueue: a task's ``TaskRecord`` and its message, in one transaction.

Every producer goes through ``enqueue``: the Django backend (``RayTaskBackend.enqueue``),
``compat.celery`` (``apply_async``, ``send_task``, canvas) and the periodic scheduler.
The records are written first, in one statement; then each message is published inside
the same transaction with ``django://`` (the message is a row of the same database), or
once it commits with an external broker (``transport.publish``). So a message is never
seen by a worker without its record, and a rolled-back transaction sends nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from django.db import DEFAULT_DB_ALIAS, IntegrityError, router, transaction

from django_ray.message import TaskMessage
from django_ray.transport import publish

if TYPE_CHECKING:
    from django_ray.models import TaskRecord

__all__ = ["enqueue"]


def enqueue(messages: Sequence[TaskMessage], *, publish_messages: bool = True) -> list[TaskRecord]:
    """Record ``messages`` and publish them (see the module docstring); return the records.

    A task id that is already used raises ``ValueError``, and nothing is written or sent.
    ``publish_messages=False`` only records them (eager mode runs them in-process).
    """
    from django_ray.models import TaskRecord
    from django_ray.records import record_fields

    using = router.db_for_write(TaskRecord) or DEFAULT_DB_ALIAS
    ids = [m.id for m in messages]
    if len(set(ids)) != len(ids):
        raise ValueError("Two of the messages to enqueue have the same task id.")
    try:
        with transaction.atomic(using=using):
            records = TaskRecord.objects.using(using).bulk_create(
                [TaskRecord(id=m.id, **record_fields(m)) for m in messages]
            )
            if publish_messages:
                for message in messages:
                    publish(message, using=using)
    except IntegrityError:
        # Looked up only now: a fresh id (the usual case) costs no query. The savepoint
        # rolled back, so nothing was written or published.
        taken = TaskRecord.objects.using(using).filter(pk__in=ids).values_list("pk", flat=True)
        if first := next(iter(taken), None):
            raise ValueError(
                f"Task id {first!r} is already used by another task; pass a new task_id."
            ) from None
        raise
    return records
