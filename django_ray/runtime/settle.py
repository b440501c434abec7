"""Settle: turn an attempt decided outside a task's own code into its recorded outcome.

The task adapters (``execute._run_django``, ``celery_exec``, ``compat_exec``) settle what
the task itself did. Everything else ends here, in one shape: read the record fresh; if it
already finished, the delivery was a duplicate and nothing changes; else make the
transition, write the Celery result where an unchanged client looks (``results.mirror``),
and return the ``Outcome`` with the messages that outcome sends on (errbacks, a chord's
end, a retry). The callers:

* the refusal paths: an unknown task name, a malformed message, options Ray refuses;
* the guard in ``execute()``: anything that escaped a task adapter (``SystemExit``, a
  ``RecursionError`` while storing, a broken follow-up embed) ends FAILED, once;
* the Ray runners: a task whose process died (``lost``), ran past its hard limit
  (``time_limit``) or was terminated by a client (``revoked``);
* the guards before a run: expired, revoked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django_ray.message import TaskMessage

logger = logging.getLogger(__name__)

__all__ = ["Outcome", "duplicate", "failed", "lost", "revoked", "time_limit"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What became of one delivery of a message."""

    task_id: str
    status: str
    # Messages to publish before the delivery is acknowledged.
    publish: tuple[TaskMessage, ...] = ()
    # True when the record had already finished: the message was a duplicate delivery.
    duplicate: bool = False
    error: str | None = None


def duplicate(record: Any) -> Outcome:
    """The outcome of a delivery whose record had already finished: nothing changes."""
    return Outcome(task_id=record.id, status=record.status, duplicate=True)


def failed(
    message: TaskMessage,
    error: BaseException,
    *,
    record: Any = None,
    with_traceback: bool = True,
    reason: str | None = None,
) -> Outcome:
    """Record FAILED with ``error`` (unless already finished) and tell the Celery client."""
    from django_ray.runtime.execute import error_info

    record = _fresh(message) if record is None else record
    if record.is_finished:
        return duplicate(record)
    info = error_info(error)
    if not with_traceback:
        info["traceback"] = ""
    record.mark_failed(info)
    return _finished(record, message, reason or info["exception_class_path"])


def revoked(message: TaskMessage, reason: str, *, record: Any = None) -> Outcome:
    """Record REVOKED with ``reason`` ("expired", "revoked", "terminated")."""
    record = _fresh(message) if record is None else record
    if record.is_finished:
        return duplicate(record)
    record.mark_revoked(reason)
    return _finished(record, message, reason)


def time_limit(message: TaskMessage) -> Outcome:
    """Record FAILED for an attempt the runner stopped at its hard time limit."""
    from django_ray.exceptions import TaskTimeLimitExceeded

    exc = TaskTimeLimitExceeded(f"Task {message.id} exceeded its {message.time_limit}s time limit.")
    return failed(message, exc, reason="time limit")


def lost(message: TaskMessage, worker_id: str, reason: str) -> Outcome:
    """Record an attempt whose process died: retry it if attempts remain, else FAILED."""
    from django.utils import timezone

    from django_ray.exceptions import WorkerLost
    from django_ray.runtime.execute import error_info

    record = _fresh(message)
    if record.is_finished:
        return duplicate(record)
    if record.status != "RUNNING":  # it died before execute() recorded the attempt
        record.mark_running(worker_id)
    exc = WorkerLost(f"The process running task {message.id} died: {reason}")
    if record.attempts < max_attempts(message):
        retry = message.replace(retries=message.retries + 1, eta=timezone.now())
        record.mark_retrying(error_info(exc), retries=retry.retries, eta=retry.eta)
        logger.warning("Task %s [%s] lost (%s); retrying.", message.task, message.id, reason)
        return Outcome(task_id=message.id, status=record.status, publish=(retry,))
    logger.error("Task %s [%s] lost (%s); FAILED.", message.task, message.id, reason)
    return failed(message, exc, record=record, reason=reason)


def max_attempts(message: TaskMessage) -> int:
    """Return how many attempts ``message``'s task allows (1 when it is not registered)."""
    from django_ray import registry
    from django_ray.exceptions import NotRegistered

    try:
        obj = registry.resolve(message.task).obj
    except NotRegistered:
        return 1
    if hasattr(obj, "max_attempts"):
        return int(obj.max_attempts or 1)
    retries = getattr(obj, "max_retries", 0)
    return 1 + (retries if isinstance(retries, int) and not isinstance(retries, bool) else 0)


def _fresh(message: TaskMessage) -> Any:
    """Return the record of ``message`` as the database has it now."""
    from django_ray.records import record_for
    from django_ray.runtime.execute import close_stale_connections

    close_stale_connections()
    return record_for(message)


def _finished(record: Any, message: TaskMessage, error: str) -> Outcome:
    from django_ray import results

    publish = tuple(results.mirror(record, message))
    return Outcome(task_id=message.id, status=record.status, publish=publish, error=error)
