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
import json
import logging
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django_ray.message import TaskMessage
from django_ray.runtime import bootstrap
from django_ray.runtime.settle import Outcome

logger = logging.getLogger(__name__)

__all__ = [
    "Outcome",
    "close_stale_connections",
    "error_info",
    "execute",
    "json_result",
]


def close_stale_connections() -> None:
    """Close unusable or expired database connections, as Django does around a request.

    A connection inside ``atomic()`` is left alone: it belongs to the caller (a test case,
    or ``call_command("django_ray_worker")`` run inside a transaction), and Django's
    ``close_old_connections()`` would close it mid-transaction.
    """
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:
            conn.close_if_unusable_or_obsolete()


def error_info(exc: BaseException) -> dict[str, Any]:
    """Describe ``exc`` as stored in ``TaskRecord.errors``."""
    cls = type(exc)
    return {
        "exception_class_path": f"{cls.__module__}.{cls.__qualname__}",
        "traceback": "".join(traceback.format_exception(exc)),
        "exc_message": _json_safe(list(exc.args)),
    }


def json_result(value: Any) -> Any:
    """Return ``value`` as it reads back from JSON, or raise ``TypeError``."""
    from django.utils.json import normalize_json

    try:
        return json.loads(json.dumps(normalize_json(value), allow_nan=False))
    except ValueError as e:
        raise TypeError(f"Task return value is not JSON-serializable: {e}") from e
    except RecursionError:
        raise TypeError("Task return value is not JSON-serializable: nested too deeply.") from None


# A runner for Celery-style tasks plugs in here (see django_ray.runtime.celery_exec).
CeleryExecutor = Callable[..., Outcome]
_celery_executor: CeleryExecutor | None = None


def set_celery_executor(executor: CeleryExecutor) -> None:
    global _celery_executor
    _celery_executor = executor


def execute(message: TaskMessage, *, worker_id: str) -> Outcome:
    """Run ``message`` once and store the outcome in its ``TaskRecord``."""
    bootstrap.ensure_ready()
    close_stale_connections()
    try:
        return _execute(message, worker_id)
    finally:
        close_stale_connections()


def _execute(message: TaskMessage, worker_id: str) -> Outcome:
    from django.utils import timezone

    from django_ray import registry, results
    from django_ray.exceptions import NotRegistered
    from django_ray.records import record_for
    from django_ray.runtime import settle

    try:
        entry = registry.resolve(message.task)
    except NotRegistered as e:
        logger.error("Refused task %s [%s]: %s", message.task, message.id, e)
        return settle.failed(message, e, with_traceback=False, reason=str(e))

    record = record_for(message)
    if record.is_finished:
        logger.info("Task %s [%s] already %s; skipping.", message.task, message.id, record.status)
        publish: tuple[TaskMessage, ...] = ()
        if record.celery_state == "REVOKED":
            # Revoked before it started (django_ray.control): tell its Celery client now.
            publish = tuple(results.mirror(record, message))
        elif message.chord is not None:
            publish = tuple(results.store().redelivered(message))
        return Outcome(task_id=message.id, status=record.status, duplicate=True, publish=publish)
    if message.expires is not None and message.expires < timezone.now():
        return settle.revoked(message, "expired", record=record)
    if results.is_revoked(message.id, check_database=False):  # the record was just read
        return settle.revoked(message, "revoked", record=record)

    try:
        if entry.kind == "django":
            return _run_django(entry.obj, message, record, worker_id)
        if _celery_executor is None:
            from django_ray.runtime import celery_exec  # noqa: F401  (registers the executor)
        assert _celery_executor is not None
        return _celery_executor(entry, message, record, worker_id)
    except KeyboardInterrupt:
        raise  # a forced stop: no outcome, the message goes back to the broker
    except BaseException as e:
        # The adapter did not settle it (SystemExit from the task, a failure while storing
        # or building follow-ups): FAILED, once. A record the adapter finished stays.
        logger.exception("Task %s [%s] ended outside its adapter.", message.task, message.id)
        return settle.failed(message, e)


def _run_django(task: Any, message: TaskMessage, record: Any, worker_id: str) -> Outcome:
    from django.tasks import TaskContext
    from django.tasks.exceptions import InvalidTask, InvalidTaskBackend
    from django.tasks.signals import task_finished, task_started
    from django.utils import timezone

    from django_ray.records import to_task_result
    from django_ray.runtime import settle

    try:
        task = task.using(
            priority=record.priority, queue_name=record.queue, backend=record.backend or None
        )
    except (InvalidTask, InvalidTaskBackend) as e:
        # The message asks for what TASKS does not allow here (an unknown backend alias, a
        # queue outside QUEUES): the task cannot start, which Django calls FAILED.
        logger.error("Refused task %s [%s]: %s", message.task, message.id, e)
        return settle.failed(message, e, record=record, with_traceback=False, reason=str(e))
    sender = type(task.get_backend())
    record.mark_running(worker_id)
    result = to_task_result(record, task)
    _send(task_started, sender, result)
    try:
        args = (
            (TaskContext(task_result=result), *record.args) if task.takes_context else record.args
        )
        value = json_result(_call_with_limit(task, message, args, record.kwargs))
    except KeyboardInterrupt:
        # Stopped at once (a second SIGTERM): no outcome, the message goes back to the
        # broker, and the record waits READY for its next delivery instead of staying RUNNING.
        with contextlib.suppress(Exception):
            record.mark_ready()
        raise
    except BaseException as e:
        error = error_info(e)
        max_attempts = getattr(task, "max_attempts", 1) or 1
        if record.attempts < max_attempts:
            delay = _retry_delay(task, record.attempts)
            eta = timezone.now() + timedelta(seconds=delay)
            record.mark_retrying(error, retries=message.retries + 1, eta=eta)
            logger.warning(
                "Task %s [%s] failed attempt %d/%d; retrying in %.1fs.",
                message.task, message.id, record.attempts, max_attempts, delay,
            )  # fmt: skip
            retry = message.replace(retries=message.retries + 1, eta=eta)
            return Outcome(task_id=message.id, status=record.status, publish=(retry,))
        record.mark_failed(error)
        _send(task_finished, sender, to_task_result(record, task))
        return Outcome(
            task_id=message.id, status=record.status, error=error["exception_class_path"]
        )
    record.mark_successful(value)
    _send(task_finished, sender, to_task_result(record, task))
    return Outcome(task_id=message.id, status=record.status)


def _call_with_limit(task: Any, message: TaskMessage, args: Any, kwargs: Any) -> Any:
    """Call the task, ending it at its hard time limit (SIGALRM, on the main thread)."""
    from django_ray.exceptions import TaskTimeLimitExceeded
    from django_ray.runtime.time_limits import HardTimeLimit, time_limits

    limit = message.time_limit or getattr(task, "time_limit", None)
    try:
        with time_limits(limit, None, soft_exc=TaskTimeLimitExceeded, task_id=message.id):
            return task.call(*args, **kwargs)
    except HardTimeLimit as e:
        raise TaskTimeLimitExceeded(
            f"Task {message.id} exceeded its {e.seconds}s time limit."
        ) from None


def _retry_delay(task: Any, attempts: int) -> float:
    base = float(getattr(task, "retry_delay", 0) or 0)
    return base * (2 ** (attempts - 1)) if getattr(task, "retry_backoff", False) else base


def _send(signal: Any, sender: type, result: Any) -> None:
    """Send a task signal; a failing receiver is logged, never corrupts the task's state."""
    for receiver, response in signal.send_robust(sender=sender, task_result=result):
        if isinstance(response, Exception):
            logger.error("Receiver %r of %s failed.", receiver, signal, exc_info=response)


def _json_safe(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        return [repr(v) for v in value] if isinstance(value, list) else repr(value)
