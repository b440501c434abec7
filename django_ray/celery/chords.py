"""Join a chord's header through ``TaskRecord`` when the project has no Celery result backend.

Every header part is a record with ``group_id`` and ``group_index`` (compat.celery
creates them all when it sends the chord; a part sent by the worker gets its record when
it runs), and the body signature carries the header size as ``chord_size`` (a real
Celery client stores it in its result backend instead, so the worker needs that backend).
When a part finishes, ``part_finished()`` counts the finished parts; the part that sees
them all claims the body by creating the body's records, in one transaction:

* the count runs after the part's own outcome is committed, so of two parts finishing
  together at least the later one sees both (no chord is left waiting);
* the claim is an ``INSERT`` of the body's primary keys, which only one transaction can
  make on any database (no chord body runs twice). Nothing is read and then written in
  one transaction, so SQLite's snapshot upgrade errors cannot happen either.

The body then gets the header results in ``group_index`` order; if a part failed or was
revoked, the body is stored FAILED with ``ChordError`` instead, as Celery does.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import IntegrityError, transaction

from django_ray.celery import follow_ups
from django_ray.message import TaskMessage

logger = logging.getLogger(__name__)

__all__ = ["part_finished"]

CHORD_ERROR = "celery.exceptions.ChordError"


def part_finished(message: TaskMessage) -> list[TaskMessage]:
    """Return what to publish now that the chord part ``message`` has finished (once per chord)."""
    from django_ray.models import FINISHED, TaskRecord

    if message.chord is None or not message.group:
        return []
    size = message.chord.get("chord_size")
    if not isinstance(size, int):
        # A Celery client stored the size in its result backend, which this worker lacks.
        logger.error(
            "Chord %s has no header size in its message; set CELERY_RESULT_BACKEND for the "
            "worker to the Celery clients' result backend.",
            message.group,
        )
        return []
    finished = list(
        TaskRecord.objects.filter(group_id=message.group, group_index__isnull=False)
        .filter(status__in=FINISHED)
        .order_by("group_index")
        .values_list("id", "group_index", "status", "return_value", "errors")
    )
    if len({row[1] for row in finished}) < size:
        return []
    failed = next((row for row in finished if row[2] != "SUCCESSFUL"), None)
    results = _in_order(finished)
    # Joined through the records: no header size to store for a chord in the body.
    body = follow_ups.chord_body(message, [] if failed is not None else results, store=None)
    if not body or not _claim(body):
        return []
    if failed is None:
        logger.info("Chord %s complete: sending its body.", message.group)
        return body
    return _fail_body(message, body, failed)


def _in_order(rows: list[tuple[Any, ...]]) -> list[Any]:
    """Return each index's result once (a duplicate record of one index is ignored)."""
    by_index: dict[int, Any] = {}
    for _, index, _, value, _ in rows:
        by_index.setdefault(index, value)
    return [by_index[index] for index in sorted(by_index)]


def _claim(body: list[TaskMessage]) -> bool:
    """Create the body's records; return False if another part's worker already did."""
    from django_ray.models import TaskRecord
    from django_ray.records import record_fields

    try:
        with transaction.atomic():
            for message in body:
                TaskRecord.objects.create(id=message.id, **record_fields(message))
    except IntegrityError:
        return False
    return True


def _fail_body(
    message: TaskMessage, body: list[TaskMessage], failed: tuple[Any, ...]
) -> list[TaskMessage]:
    """Store ``ChordError`` on the body; return the body's errbacks to send."""
    from django_ray.models import TaskRecord

    part_id, _, _, _, errors = failed
    cause = str((errors[-1] if errors else {}).get("exception_class_path") or "an error")
    text = f"Dependency {part_id} raised {cause.rpartition('.')[2]}"
    logger.error("Chord %s failed: %s.", message.group, text)
    # Celery's class path, so that a client re-raises ChordError (compat.celery maps it).
    error = {"exception_class_path": CHORD_ERROR, "traceback": "", "exc_message": [text]}
    for record in TaskRecord.objects.filter(pk__in=[m.id for m in body]):
        record.mark_failed(error)
    # A chain after the body is not sent; its results follow their failed parent.
    return [errback for m in body for errback in follow_ups.errbacks(m, store=None)]
