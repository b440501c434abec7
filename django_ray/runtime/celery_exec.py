"""Run Celery-style tasks: real Celery tasks through Celery's own tracer, compat tasks through ours.

A real Celery task (from the project's Celery app) runs through
``celery.app.trace.build_tracer``, exactly as a Celery worker runs it: ``self.request``,
``retry()`` and ``autoretry_for``, the task's hooks, ``track_started``, callbacks, the next
chain step, chord accounting and result storage through ``app.backend`` all come from
Celery, and Celery's producer publishes the follow-up messages. This module adds what a
Celery worker's pool would: time limits, the hard-limit failure, and the ``TaskRecord``.

A ``compat.celery`` task (any object registered with ``registry.register``) runs through
``django_ray.runtime.compat_exec``, which needs no Celery.
"""

from __future__ import annotations

import logging
import reprlib
import sys
import threading
from datetime import UTC, datetime, timedelta
from numbers import Real
from typing import Any

from django.utils import timezone

from django_ray import celery_format as fmt
from django_ray.exceptions import RequeueLimitExceeded
from django_ray.message import TaskMessage
from django_ray.runtime.execute import Outcome, error_info, json_result, set_celery_executor
from django_ray.runtime.time_limits import HardTimeLimit, Terminated, time_limits

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_REJECT_REQUEUES",
    "REQUEUE_HEADER",
    "execute_celery",
    "is_celery_task",
    "rejected",
    "retry_eta",
]

# Reject(requeue=True) puts a message back at most this many times, then it FAILS: a task
# that always rejects would otherwise loop between the broker and the workers forever.
MAX_REJECT_REQUEUES = 3
REQUEUE_HEADER = "django_ray_requeues"

_tracers: dict[tuple[int, str], Any] = {}
_tracers_lock = threading.Lock()


def is_celery_task(obj: Any) -> bool:
    """Return True if ``obj`` is a task of a real Celery app (never imports Celery)."""
    # None: the import is blocked (``sys.modules["celery"] = None``), so nothing is Celery's.
    if sys.modules.get("celery") is None:
        return False
    from celery.app.task import Task

    return isinstance(obj, Task)


def execute_celery(entry: Any, message: TaskMessage, record: Any, worker_id: str) -> Outcome:
    """Run the Celery-style task ``entry.obj`` for ``message`` and store its outcome."""
    if is_celery_task(entry.obj):
        return _run_celery_task(entry.obj, message, record, worker_id)
    from django_ray.runtime.compat_exec import run_compat_task

    return run_compat_task(entry.obj, message, record, worker_id)


def retry_eta(when: Any) -> datetime | None:
    """Return the ETA of a retry from ``Retry.when`` (seconds or a datetime)."""
    if isinstance(when, datetime):
        return when if timezone.is_aware(when) else when.replace(tzinfo=UTC)
    if isinstance(when, Real) and not isinstance(when, bool):
        return timezone.now() + timedelta(seconds=float(when))
    return None


def _tracer(task: Any, hostname: str) -> Any:
    from celery.app.trace import build_tracer

    key = (id(task), hostname)
    with _tracers_lock:
        if key not in _tracers:
            _tracers[key] = build_tracer(task.name, task, hostname=hostname, app=task._get_app())
        return _tracers[key]


def _limits(task: Any, message: TaskMessage) -> tuple[float | None, float | None]:
    # The message's ``timelimit`` header wins over the task's options (request.py).
    hard = message.time_limit or task.time_limit or task._get_app().conf.task_time_limit
    soft = (
        message.soft_time_limit or task.soft_time_limit or task._get_app().conf.task_soft_time_limit
    )
    return hard, soft


def _run_celery_task(task: Any, message: TaskMessage, record: Any, worker_id: str) -> Outcome:
    from celery import states
    from celery.exceptions import SoftTimeLimitExceeded

    from django_ray import conf
    from django_ray.transport import broker_kind, to_broker_priority

    hostname = fmt.node_name(worker_id)
    priority = to_broker_priority(broker_kind(conf.broker_url()), message.priority)
    request = fmt.request_dict(message, hostname=hostname, broker_priority=priority)
    hard, soft = _limits(task, message)
    record.mark_running(worker_id)
    try:
        with time_limits(hard, soft, soft_exc=SoftTimeLimitExceeded, task_id=message.id):
            retval, info, _, _ = _tracer(task, hostname)(
                message.id, list(message.args), dict(message.kwargs), dict(request)
            )
    except HardTimeLimit as e:
        return _hard_limit(task, message, record, request, e.seconds)
    except Terminated:
        return _terminated(task, message, record, request)
    except KeyboardInterrupt:
        # Stopped at once: the message goes back to the broker; the record waits READY.
        record.mark_ready()
        raise

    state = info.state if info is not None else states.SUCCESS
    if state == states.SUCCESS:
        record.mark_successful(_json_or_repr(retval), children=_follow_up_ids(message))
        return Outcome(task_id=message.id, status=record.status)
    if state == states.RETRY:
        retry = info.retval
        reason = retry.exc if isinstance(retry.exc, BaseException) else retry
        eta = retry_eta(retry.when)
        record.mark_retrying(error_info(reason), retries=message.retries + 1, eta=eta)
        return Outcome(task_id=message.id, status=record.status)
    if state == states.REJECTED:
        return rejected(message, record, info.retval)
    if state == states.IGNORED:
        # Task.replace() raises Ignore after sending its replacement under the same id.
        record.mark_ready()
        return Outcome(task_id=message.id, status=record.status)
    exc = info.retval
    error = error_info(exc)
    if getattr(retval, "traceback", None):
        error["traceback"] = retval.traceback
    record.mark_failed(error)
    return Outcome(task_id=message.id, status=record.status, error=error["exception_class_path"])


def _hard_limit(
    task: Any, message: TaskMessage, record: Any, request: dict[str, Any], seconds: float
) -> Outcome:
    """Fail the attempt that passed its hard limit, as a Celery worker's ``on_timeout`` does."""
    from billiard.einfo import ExceptionInfo
    from celery.app.task import Context
    from celery.exceptions import TimeLimitExceeded

    logger.error("Hard time limit (%ss) exceeded for %s[%s].", seconds, message.task, message.id)
    exc = TimeLimitExceeded(fmt.plain_number(seconds))
    try:
        raise exc
    except TimeLimitExceeded:
        einfo = ExceptionInfo()
    try:
        task.backend.mark_as_failure(message.id, exc, request=Context(request))
        task.on_failure(exc, message.id, list(message.args), dict(message.kwargs), einfo)
    except Exception:
        logger.exception(
            "Storing the time-limit failure of %s [%s] failed.", message.task, message.id
        )
    error = error_info(exc)
    record.mark_failed(error)
    return Outcome(task_id=message.id, status=record.status, error=error["exception_class_path"])


def _terminated(task: Any, message: TaskMessage, record: Any, request: dict[str, Any]) -> Outcome:
    """End an attempt a client revoked with ``terminate=True``: REVOKED "terminated"."""
    from celery.app.task import Context

    logger.warning("Terminated %s[%s] at a client's request.", message.task, message.id)
    try:
        task.backend.mark_as_revoked(message.id, "terminated", request=Context(request))
    except Exception:
        logger.exception("Storing the revoke of %s [%s] failed.", message.task, message.id)
    record.mark_revoked("terminated")
    return Outcome(task_id=message.id, status=record.status, error="terminated")


def rejected(message: TaskMessage, record: Any, reject: Any) -> Outcome:
    """``Reject(requeue=True)`` puts the message back (a bounded number of times, counted in
    its ``django_ray_requeues`` header); ``requeue=False`` fails the task."""
    from django_ray import results

    if getattr(reject, "requeue", False):
        count = message.headers.get(REQUEUE_HEADER)
        count = count if isinstance(count, int) and not isinstance(count, bool) else 0
        if count < MAX_REJECT_REQUEUES:
            record.mark_ready()
            again = message.replace(headers={**message.headers, REQUEUE_HEADER: count + 1})
            return Outcome(task_id=message.id, status=record.status, publish=(again,))
        error = RequeueLimitExceeded(
            f"Task {message.task!r} [{message.id}] was rejected with requeue=True "
            f"{count + 1} times in a row; raise Reject(requeue=False), or "
            "self.retry(countdown=...) to try again later."
        )
        logger.error("%s", error)
        record.mark_failed(error_info(error) | {"traceback": ""})
        publish = tuple(results.mirror(record, message))
        return Outcome(task_id=message.id, status=record.status, publish=publish, error="Reject")
    record.mark_failed(error_info(reject))
    return Outcome(task_id=message.id, status=record.status, error="Reject")


def _follow_up_ids(message: TaskMessage) -> list[str]:
    signatures = [*message.callbacks, *message.chain[-1:]]
    ids = [(sig.get("options") or {}).get("task_id") for sig in signatures]
    return [i for i in ids if isinstance(i, str)]


def _json_or_repr(value: Any) -> Any:
    try:
        return json_result(value)
    except TypeError:  # stored by Celery's serializer anyway (e.g. ignore_result)
        try:
            return repr(value)
        except RecursionError:
            return reprlib.repr(value)


set_celery_executor(execute_celery)
