"""The adapter of a real Celery app's tasks: Celery's own tracer, as a Celery worker runs them.

A task of the project's Celery app runs through ``celery.app.trace.build_tracer``:
``self.request``, ``retry()`` and ``autoretry_for``, the task's hooks, ``track_started``,
callbacks, the next chain step, chord accounting and result storage through
``app.backend`` all come from Celery, and Celery's producer publishes the follow-up
messages. This adapter adds what a Celery worker's pool would (time limits, the hard-limit
failure, a client's terminate) and turns the tracer's state into a ``Verdict`` with
``results="tracer"``: ``settle`` writes the ``TaskRecord`` only.

``compat.celery`` tasks run through ``compat_exec`` instead, which needs no Celery.
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

from django_ray.celery import wire as fmt
from django_ray.message import TaskMessage
from django_ray.runtime.settle import Verdict
from django_ray.runtime.time_limits import HardTimeLimit, Terminated, time_limits
from django_ray.runtime.values import json_result

logger = logging.getLogger(__name__)

__all__ = ["is_celery_task", "retry_eta", "run"]

_tracers: dict[tuple[int, str], Any] = {}
_tracers_lock = threading.Lock()


def is_celery_task(obj: Any) -> bool:
    """Return True if ``obj`` is a task of a real Celery app (never imports Celery)."""
    # None: the import is blocked (``sys.modules["celery"] = None``), so nothing is Celery's.
    if sys.modules.get("celery") is None:
        return False
    from celery.app.task import Task

    return isinstance(obj, Task)


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


def run(task: Any, message: TaskMessage, record: Any) -> Verdict:
    """Run ``task`` for ``message``'s attempt through Celery's tracer; return the verdict."""
    from celery import states
    from celery.exceptions import SoftTimeLimitExceeded

    from django_ray import conf
    from django_ray.transports.kinds import kind_of

    hostname = fmt.node_name(record.worker_ids[-1])
    priority = kind_of(conf.broker_url()).to_broker_priority(message.priority)
    request = fmt.request_dict(message, hostname=hostname, broker_priority=priority)
    hard, soft = _limits(task, message)
    try:
        with time_limits(hard, soft, soft_exc=SoftTimeLimitExceeded, task_id=message.id):
            retval, info, _, _ = _tracer(task, hostname)(
                message.id, list(message.args), dict(message.kwargs), dict(request)
            )
    except HardTimeLimit as e:
        return _hard_limit(task, message, request, e.seconds)
    except Terminated:
        return _terminated(task, message, request)

    state = info.state if info is not None else states.SUCCESS
    if state == states.SUCCESS:
        return Verdict(state="succeeded", results="tracer", value=_json_or_repr(retval))
    if state == states.RETRY:  # Celery's retry() already sent the next attempt
        retry = info.retval
        reason = retry.exc if isinstance(retry.exc, BaseException) else retry
        return Verdict(state="retry", results="tracer", error=reason, eta=retry_eta(retry.when))
    if state == states.REJECTED:
        reject = info.retval
        requeue = bool(getattr(reject, "requeue", False))
        return Verdict(state="rejected", results="tracer", error=reject, requeue=requeue)
    if state == states.IGNORED:
        # Task.replace() raises Ignore after sending its replacement under the same id.
        return Verdict(state="ignored", results="tracer")
    text = getattr(retval, "traceback", None) or None
    return Verdict(state="failed", results="tracer", error=info.retval, traceback=text)


def _hard_limit(
    task: Any, message: TaskMessage, request: dict[str, Any], seconds: float
) -> Verdict:
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
    return Verdict(state="failed", results="tracer", error=exc)


def _terminated(task: Any, message: TaskMessage, request: dict[str, Any]) -> Verdict:
    """End an attempt a client revoked with ``terminate=True``: REVOKED "terminated"."""
    from celery.app.task import Context

    try:
        task.backend.mark_as_revoked(message.id, "terminated", request=Context(request))
    except Exception:
        logger.exception("Storing the revoke of %s [%s] failed.", message.task, message.id)
    return Verdict(state="terminated", results="tracer")


def _json_or_repr(value: Any) -> Any:
    try:
        return json_result(value)
    except TypeError:  # stored by Celery's serializer anyway (e.g. ignore_result)
        try:
            return repr(value)
        except RecursionError:
            return reprlib.repr(value)
