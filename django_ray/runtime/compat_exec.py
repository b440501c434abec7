"""Run a ``compat.celery`` task (or any object with Celery's Task interface) without Celery.

The contract with ``compat.celery``: the task object has ``run``, ``push_request(**request)``
and ``pop_request()``, Celery's option attributes (``autoretry_for``, ``retry_kwargs``,
``retry_backoff``, ``retry_backoff_max``, ``retry_jitter``, ``ignore_result``,
``track_started``, ``time_limit``, ``soft_time_limit``) and optional hooks
(``before_start``, ``on_success``, ``on_failure``, ``on_retry``, ``after_return``).
``retry()`` checks
``max_retries`` and raises a ``Retry`` (an exception class named ``Retry`` with ``exc``,
``when`` and, optionally, ``message``: the next attempt's ``TaskMessage``) without
publishing anything: this executor publishes the retry (the same id, ``retries + 1``), the
callbacks and the next chain step through ``Outcome.publish``. The request pushed for a
run also carries ``message``, the ``TaskMessage`` being run.
"""

from __future__ import annotations

import logging
import random
import traceback
from dataclasses import dataclass
from typing import Any

from django_ray import celery_format as fmt
from django_ray import results
from django_ray.message import TaskMessage
from django_ray.result_stores import ResultStore
from django_ray.runtime.celery_exec import rejected, retry_eta
from django_ray.runtime.execute import Outcome, error_info, json_result
from django_ray.runtime.follow_ups import on_success
from django_ray.runtime.time_limits import (
    HardTimeLimit,
    Terminated,
    limit_exceptions,
    time_limits,
)

logger = logging.getLogger(__name__)

__all__ = ["ExceptionInfo", "run_compat_task"]


@dataclass(frozen=True, slots=True)
class ExceptionInfo:
    """What the failure hooks receive as ``einfo`` (Celery's has the same three fields)."""

    exception: BaseException
    type: type[BaseException]
    traceback: str


def run_compat_task(task: Any, message: TaskMessage, record: Any, worker_id: str) -> Outcome:
    """Run ``task`` for ``message`` once and store its outcome."""
    hostname = fmt.node_name(worker_id)
    target = results.store()
    soft_exc, hard_exc = limit_exceptions(celery=False)
    hard = message.time_limit or getattr(task, "time_limit", None)
    soft = message.soft_time_limit or getattr(task, "soft_time_limit", None)
    ignore = message.ignore_result
    if ignore is None:
        ignore = bool(getattr(task, "ignore_result", False))
    record.mark_running(worker_id)
    if getattr(task, "track_started", False) and not ignore:
        target.started(message, hostname)
    request = fmt.request_dict(message, hostname=hostname, broker_priority=None)
    task.push_request(**request, message=message)
    try:
        with time_limits(hard, soft, soft_exc=soft_exc, task_id=message.id):
            value = _call(task, message)
    except KeyboardInterrupt:
        # Stopped at once: the message goes back to the broker; the record waits READY.
        record.mark_ready()
        raise
    except Terminated:
        logger.warning("Terminated %s[%s] at a client's request.", message.task, message.id)
        record.mark_revoked("terminated")
        publish = tuple(results.mirror(record, message))
        return Outcome(
            task_id=message.id, status=record.status, publish=publish, error="terminated"
        )
    except HardTimeLimit as e:
        logger.error(
            "Hard time limit (%ss) exceeded for %s[%s].", e.seconds, message.task, message.id
        )
        return _failed(task, message, record, target, hard_exc(fmt.plain_number(e.seconds)), ignore)
    except BaseException as exc:  # SystemExit and MemoryError too: the attempt FAILED
        names = {cls.__name__ for cls in type(exc).__mro__}
        if "Retry" in names:
            return _retried(task, message, record, target, exc)
        if "Ignore" in names:
            record.mark_ready()
            return Outcome(task_id=message.id, status=record.status)
        if "Reject" in names:
            return rejected(message, record, exc)
        return _failed(task, message, record, target, exc, ignore)
    finally:
        task.pop_request()
    return _succeeded(task, message, record, target, value, ignore)


def _call(task: Any, message: TaskMessage) -> Any:
    try:
        before_start = getattr(task, "before_start", None)
        if before_start is not None:  # inside the attempt: its failure fails the task
            before_start(message.id, message.args, dict(message.kwargs))
        return task.run(*message.args, **dict(message.kwargs))
    except Exception as exc:
        if _should_autoretry(task, exc):
            retry = task.retry(exc=exc, **_retry_kwargs(task, message.retries))
            raise retry from exc  # retry() raises; with throw=False it returns the Retry
        raise


def _should_autoretry(task: Any, exc: Exception) -> bool:
    # A task whose run() is already wrapped (Celery's add_autoretry_behaviour) retries itself.
    if hasattr(task, "_orig_run"):
        return False
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"Retry", "Ignore", "Reject"}:
        return False
    retry_for = tuple(getattr(task, "autoretry_for", ()) or ())
    dont = tuple(getattr(task, "dont_autoretry_for", ()) or ())
    return bool(retry_for) and isinstance(exc, retry_for) and not (dont and isinstance(exc, dont))


def _retry_kwargs(task: Any, retries: int) -> dict[str, Any]:
    """Return ``retry()`` arguments for an automatic retry (Celery's autoretry.py)."""
    kwargs = dict(getattr(task, "retry_kwargs", None) or {})
    backoff = getattr(task, "retry_backoff", False)
    if backoff:
        factor = int(max(1.0, float(backoff)))
        countdown = min(int(getattr(task, "retry_backoff_max", 600)), factor * 2**retries)
        if getattr(task, "retry_jitter", True):
            countdown = random.randrange(countdown + 1)
        kwargs["countdown"] = max(0, countdown)
    return kwargs


def _succeeded(
    task: Any,
    message: TaskMessage,
    record: Any,
    target: ResultStore,
    value: Any,
    ignore: bool,
) -> Outcome:
    try:
        value = json_result(value)
    except TypeError as e:
        return _failed(task, message, record, target, e, ignore)
    try:
        follow_ups = on_success(message, value)
    except Exception as e:  # a signature that cannot be applied (NotSupported included)
        logger.error("Task %s [%s]: callbacks not sent: %s", message.task, message.id, e)
        follow_ups = []
    children = [m.id for m in follow_ups]
    record.mark_successful(value, children=children)
    try:
        follow_ups += target.done(message, value, children=children, store=not ignore)
    except Exception:
        logger.exception("Storing the result of %s [%s] failed.", message.task, message.id)
    _hook(task, "on_success", value, message.id, list(message.args), dict(message.kwargs))
    _after_return(task, "SUCCESS", value, message, None)
    return Outcome(task_id=message.id, status=record.status, publish=tuple(follow_ups))


def _failed(
    task: Any,
    message: TaskMessage,
    record: Any,
    target: ResultStore,
    exc: BaseException,
    ignore: bool,
) -> Outcome:
    error = error_info(exc)
    record.mark_failed(error)
    store = not ignore or bool(getattr(task, "store_errors_even_if_ignored", False))
    follow_ups: list[TaskMessage] = []
    try:
        follow_ups = target.failed(message, exc, error["traceback"], store=store)
    except Exception:
        logger.exception("Storing the failure of %s [%s] failed.", message.task, message.id)
    einfo = ExceptionInfo(exc, type(exc), error["traceback"])
    _hook(task, "on_failure", exc, message.id, list(message.args), dict(message.kwargs), einfo)
    _after_return(task, "FAILURE", exc, message, einfo)
    return Outcome(
        task_id=message.id, status=record.status, publish=tuple(follow_ups),
        error=error["exception_class_path"],
    )  # fmt: skip


def _retried(
    task: Any, message: TaskMessage, record: Any, target: ResultStore, retry: BaseException
) -> Outcome:
    reason = getattr(retry, "exc", None)
    cause = reason if isinstance(reason, BaseException) else retry
    again = getattr(retry, "message", None)
    if not isinstance(again, TaskMessage):  # retry() left the next attempt to us
        when = getattr(retry, "when", None)
        again = message.replace(retries=message.retries + 1, eta=retry_eta(when))
    record.mark_retrying(error_info(cause), retries=again.retries, eta=again.eta)
    text = "".join(traceback.format_exception(retry))
    try:
        target.retried(message, reason if isinstance(reason, BaseException) else None, text)
    except Exception:
        logger.exception("Storing the retry of %s [%s] failed.", message.task, message.id)
    einfo = ExceptionInfo(retry, type(retry), text)
    _hook(task, "on_retry", cause, message.id, list(message.args), dict(message.kwargs), einfo)
    _after_return(task, "RETRY", cause, message, einfo)
    return Outcome(task_id=message.id, status=record.status, publish=(again,))


def _after_return(task: Any, state: str, value: Any, message: TaskMessage, einfo: Any) -> None:
    args, kwargs = list(message.args), dict(message.kwargs)
    _hook(task, "after_return", state, value, message.id, args, kwargs, einfo)


def _hook(task: Any, name: str, *args: Any) -> None:
    """Call an optional task hook; its failure is logged, never changes the stored outcome."""
    hook = getattr(task, name, None)
    if hook is None:
        return
    try:
        hook(*args)
    except Exception:
        logger.exception("The %s hook of %s failed.", name, getattr(task, "name", task))
