"""The one execution path: run a ``TaskMessage`` and store its outcome.

Every runner calls ``execute()``: the sync runner in the worker process, the Ray runners
inside a ``@ray.remote`` function, job mode from the job's entrypoint. Its steps:

1. prepare the process (``bootstrap.ensure_ready``: Django and the registry, once);
2. resolve the task name in the registry (an unknown name is refused, FAILED);
3. guard: a finished record is a duplicate delivery, an expired or revoked one ends REVOKED;
4. run the task through the adapter of its kind (a Django ``@task`` here; Celery-style
   tasks in ``celery_exec`` / ``compat_exec``), which fills ``TaskContext`` /
   ``self.request``, makes the result JSON and records the task's own outcome;
5. settle whatever escaped the adapter (``SystemExit``, a ``RecursionError`` while storing,
   a broken follow-up): FAILED, once (``runtime.settle``). Only ``KeyboardInterrupt`` (a
   forced stop) leaves no outcome: the message goes back to the broker.

It returns an ``Outcome`` naming the messages the worker must publish next (a retry, the
next chain step, callbacks).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from django.db import InterfaceError, OperationalError

from django_ray import conf, progress, registry
from django_ray.celery import results
from django_ray.exceptions import NotRegistered
from django_ray.message import TaskMessage
from django_ray.runtime import bootstrap, celery_exec, compat_exec, settle
from django_ray.runtime.settle import Outcome, Verdict
from django_ray.runtime.values import error_info, json_result

logger = logging.getLogger(__name__)

__all__ = [
    "Outcome",
    "error_info",
    "execute",
    "json_result",
]


def execute(message: TaskMessage, *, worker_id: str) -> Outcome:
    """Run ``message`` once and store the outcome in its ``TaskRecord``."""
    bootstrap.ensure_ready()
    bootstrap.check_connections()
    return _execute(message, worker_id)


def _execute(message: TaskMessage, worker_id: str) -> Outcome:
    from django.tasks.exceptions import InvalidTask, InvalidTaskBackend
    from django.utils import timezone

    from django_ray.records import record_for
    from django_ray.runtime import django_exec

    # resolve
    try:
        entry = registry.resolve(message.task)
    except NotRegistered as e:
        logger.error("Refused task %s [%s]: %s", message.task, message.id, e)
        return settle.failed(message, e, with_traceback=False, reason=str(e))

    # guard
    record = record_for(message)
    if record.is_finished:
        logger.info("Task %s [%s] already %s; skipping.", message.task, message.id, record.status)
        publish: tuple[TaskMessage, ...] = ()
        if record.celery_state == "REVOKED":
            # Revoked before it started (django_ray.celery.control): tell its Celery client now.
            publish = tuple(results.mirror(record, message))
        elif message.chord is not None:
            publish = tuple(results.store().redelivered(message))
        return Outcome(task_id=message.id, status=record.status, duplicate=True, publish=publish)
    if message.expires is not None and message.expires < timezone.now():
        return settle.revoked(message, "expired", record=record)
    if results.is_revoked(message.id, check_database=False):  # the record was just read
        return settle.revoked(message, "revoked", record=record)
    if record.status == "RUNNING" and _over_delivery_cap(record):
        # Every earlier delivery started it and none finished: its worker died each time.
        return settle.dead_letter(message, record)

    task = entry.obj
    if entry.kind == "django":
        try:
            task = django_exec.bind(task, record)
        except (InvalidTask, InvalidTaskBackend) as e:
            # The message asks for what TASKS does not allow here (an unknown backend alias,
            # a queue outside QUEUES): the task cannot start, which Django calls FAILED.
            logger.error("Refused task %s [%s]: %s", message.task, message.id, e)
            return settle.failed(message, e, record=record, with_traceback=False, reason=str(e))

    # run, then settle
    if not record.mark_running(worker_id):  # another worker moved it on since it was read
        return settle.superseded(message, record)
    try:
        with progress.attempt(message.id, record.last_attempted_at):  # reports are fenced to it
            verdict = _adapter(entry.kind, task)(task, message, record)
        return settle.settle(message, record, verdict)
    except KeyboardInterrupt:
        # Stopped at once (a second SIGTERM): no outcome, the message goes back to the
        # broker, and the record waits READY for its next delivery instead of staying RUNNING.
        with contextlib.suppress(Exception):
            record.mark_ready()
        raise
    except BaseException as e:
        if isinstance(e, OperationalError | InterfaceError) and bootstrap.connection_lost(record):
            # The database went away while the outcome was written (a restart, a network
            # cut): nothing can be recorded now. The worker gives the message back to the
            # broker and its next delivery runs it again, as at-least-once delivery promises.
            # (A database that is there and refused one value ends FAILED, below.)
            raise
        # What no adapter turned into a verdict (a failure in Celery's tracer, SystemExit
        # that the tracer re-raises, an error while writing the outcome): FAILED, once.
        # A record that was already written stays as it is.
        logger.exception("Task %s [%s] failed outside its adapter.", message.task, message.id)
        return settle.failed(message, e)


def _over_delivery_cap(record: Any) -> bool:
    cap = conf.get("MAX_DELIVERIES")
    # Attempts started without an outcome: each finished attempt recorded an error or ended.
    unfinished = len(record.worker_ids) - len(record.errors)
    return bool(cap) and unfinished >= int(cap)


def _adapter(kind: str, task: Any) -> Callable[[Any, TaskMessage, Any], Verdict]:
    """Return the adapter that calls ``task``: Django's, Celery's tracer, or compat's."""
    if kind == "django":
        from django_ray.runtime import django_exec

        return django_exec.run
    if celery_exec.is_celery_task(task):
        return celery_exec.run
    return compat_exec.run
