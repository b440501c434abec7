"""Bridges between ``TaskMessage``, ``TaskRecord`` and Django's ``TaskResult``."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.tasks import Task, TaskResult, TaskResultStatus
from django.tasks.base import TaskError

from django_ray.message import TaskMessage
from django_ray.models import TaskRecord

__all__ = ["record_fields", "record_for", "to_task_result"]


def record_fields(message: TaskMessage) -> dict[str, Any]:
    """Return the ``TaskRecord`` fields that come from ``message``."""
    return {
        "task_name": message.task,
        "backend": message.backend or "",
        "queue": message.queue,
        "priority": message.priority,
        "origin": "django" if message.is_django_task else "celery",
        "args": list(message.args),
        "kwargs": dict(message.kwargs),
        "run_after": message.eta,
        "expires": message.expires,
        "retries": message.retries,
        "root_id": message.root_id,
        "parent_id": message.parent_id,
        "group_id": message.group,
        "group_index": message.group_index,
    }


def record_for(message: TaskMessage) -> TaskRecord:
    """Return the record of ``message``, creating it for a message a Celery client sent."""
    record = TaskRecord.objects.by_id(message.id)
    if record is not None:
        return record
    try:
        with transaction.atomic():
            return TaskRecord.objects.create(id=message.id, **record_fields(message))
    except IntegrityError:  # another worker created it first
        return TaskRecord.objects.get(pk=message.id)


def to_task_result(record: TaskRecord, task: Task) -> TaskResult:
    """Return Django's view of ``record`` (only the four public statuses)."""
    result: TaskResult[Any, Any] = TaskResult(
        task=task,
        id=record.id,
        status=TaskResultStatus(record.django_status),
        enqueued_at=record.enqueued_at,
        started_at=record.started_at,
        last_attempted_at=record.last_attempted_at,
        finished_at=record.finished_at,
        args=list(record.args),
        kwargs=dict(record.kwargs),
        backend=record.backend or task.backend,
        errors=[
            TaskError(
                exception_class_path=e.get("exception_class_path", "builtins.Exception"),
                traceback=e.get("traceback", ""),
            )
            for e in record.errors
        ],
        worker_ids=list(record.worker_ids),
    )
    if record.status == "SUCCESSFUL":
        object.__setattr__(result, "_return_value", record.return_value)
    return result
