"""The adapter of ``compat.celery`` tasks (any object with Celery's Task interface), no Celery.

The contract with ``compat.celery``: the task object has ``run``, ``push_request(**request)``
and ``pop_request()``, Celery's option attributes (``autoretry_for``, ``retry_kwargs``,
``retry_backoff``, ``retry_backoff_max``, ``retry_jitter``, ``ignore_result``,
``store_errors_even_if_ignored``, ``track_started``, ``time_limit``, ``soft_time_limit``)
and optional hooks (``before_start``, ``on_success``, ``on_failure``, ``on_retry``,
``after_return``). ``retry()`` checks ``max_retries`` and raises a ``Retry`` (an exception
class named ``Retry`` with ``exc``, ``when`` and, optionally, ``message``: the next attempt's
``TaskMessage``) without publishing anything. The request pushed for a run also carries
``message``, the ``TaskMessage`` being run.

The adapter calls the task and returns a ``Verdict`` with ``results="ours"``: ``settle``
stores the result, publishes the retry (the same id, ``retries + 1``), the callbacks and
the next chain step, then runs the task's hooks (``Verdict.after``, with the request pushed
again, as Celery's tracer runs them inside the task's request).
"""

from __future__ import annotations

import logging
import random
import traceback
from dataclasses import dataclass
from typing import Any

from django_ray.celery import results
from django_ray.celery import wire as fmt
from django_ray.message import TaskMessage
from django_ray.runtime.celery_exec import retry_eta
from django_ray.runtime.settle import Verdict
from django_ray.runtime.time_limits import (
    HardTimeLimit,
    Terminated,
    limit_exceptions,
    time_limits,
)
from django_ray.runtime.values import json_result

logger = logging.getLogger(__name__)

__all__ = ["ExceptionInfo", "run"]


@dataclass(frozen=True, slots=True)
class ExceptionInfo:
    """What the failure hooks receive as ``einfo`` (Celery's has the same three fields)."""

    exception: BaseException
    type: type[BaseException]
    traceback: str


def run(task: Any, message: TaskMessage, record: Any) -> Verdict:
    """Run ``task`` for ``message``'s attempt (the record is RUNNING); return the verdict."""
    hostname = fmt.node_name(record.worker_ids[-1])
    soft_exc, hard_exc = limit_exceptions(celery=False)
    hard = message.time_limit or getattr(task, "time_limit", None)
    soft = message.soft_time_limit or getattr(task, "soft_time_limit", None)
    ignore = message.ignore_result
    if ignore is None:
        ignore = bool(getattr(task, "ignore_result", False))
    if getattr(task, "track_started", False) and not ignore:
        results.store().started(message, hostname)
    request = {**fmt.request_dict(message, hostname=hostname, broker_priority=None)}
    hooks = _Hooks(task, message, request)
    task.push_request(**request, message=message)
    try:
        with time_limits(hard, soft, soft_exc=soft_exc, task_id=message.id):
            value = _call(task, message)
    except KeyboardInterrupt:
        raise  # a forced stop: no verdict
    except Terminated:
        return Verdict(state="terminated", results="ours")
    except HardTimeLimit as e:
        logger.error(
            "Hard time limit (%ss) exceeded for %s[%s].", e.seconds, message.task, message.id
        )
        return _failed(task, hooks, hard_exc(fmt.plain_number(e.seconds)), ignore)
    except BaseException as exc:  # SystemExit and MemoryError too: the attempt FAILED
        names = {cls.__name__ for cls in type(exc).__mro__}
        if "Retry" in names:
            return _retried(message, hooks, exc)
        if "Ignore" in names:
            return Verdict(state="ignored", results="ours")
        if "Reject" in names:
            requeue = bool(getattr(exc, "requeue", False))
            return Verdict(state="rejected", results="ours", error=exc, requeue=requeue)
        return _failed(task, hooks, exc, ignore)
    finally:
        task.pop_request()
    try:
        value = json_result(value)
    except TypeError as e:
        return _failed(task, hooks, e, ignore)
    args, kwargs = list(message.args), dict(message.kwargs)

    def succeeded() -> None:
        hooks("on_success", value, message.id, args, kwargs)
        hooks("after_return", "SUCCESS", value, message.id, args, kwargs, None)

    return Verdict(
        state="succeeded", results="ours", value=value, store_result=not ignore, after=succeeded
    )


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


def _failed(task: Any, hooks: _Hooks, exc: BaseException, ignore: bool) -> Verdict:
    message = hooks.message
    text = "".join(traceback.format_exception(exc))
    einfo = ExceptionInfo(exc, type(exc), text)
    args, kwargs = list(message.args), dict(message.kwargs)

    def failed() -> None:
        hooks("on_failure", exc, message.id, args, kwargs, einfo)
        hooks("after_return", "FAILURE", exc, message.id, args, kwargs, einfo)

    store = not ignore or bool(getattr(task, "store_errors_even_if_ignored", False))
    return Verdict(state="failed", results="ours", error=exc, store_result=store, after=failed)


def _retried(message: TaskMessage, hooks: _Hooks, retry: BaseException) -> Verdict:
    reason = getattr(retry, "exc", None)
    reason = reason if isinstance(reason, BaseException) else None
    cause = reason or retry
    again = getattr(retry, "message", None)
    if not isinstance(again, TaskMessage):  # retry() left the next attempt to us
        when = getattr(retry, "when", None)
        again = message.replace(retries=message.retries + 1, eta=retry_eta(when))
    text = "".join(traceback.format_exception(retry))
    einfo = ExceptionInfo(retry, type(retry), text)
    args, kwargs = list(message.args), dict(message.kwargs)

    def retried() -> None:
        hooks("on_retry", cause, message.id, args, kwargs, einfo)
        hooks("after_return", "RETRY", cause, message.id, args, kwargs, einfo)

    return Verdict(
        state="retry", results="ours", error=cause, again=again, reason=reason,
        retry_traceback=text, after=retried,
    )  # fmt: skip


class _Hooks:
    """Call a task's optional hooks inside its request, as Celery's tracer does.

    A hook's failure is logged; it never changes the stored outcome.
    """

    def __init__(self, task: Any, message: TaskMessage, request: dict[str, Any]) -> None:
        self.task, self.message, self.request = task, message, request

    def __call__(self, name: str, *args: Any) -> None:
        hook = getattr(self.task, name, None)
        if hook is None:
            return
        self.task.push_request(**self.request, message=self.message)
        try:
            hook(*args)
        except Exception:
            logger.exception(
                "The %s hook of %s failed.", name, getattr(self.task, "name", self.task)
            )
        finally:
            self.task.pop_request()
