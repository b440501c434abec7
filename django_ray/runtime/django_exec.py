"""The adapter of Django ``@task`` tasks: bind the task to the record, call it, return a verdict.

``bind()`` applies what the record asks for (priority, queue, backend alias) through
``Task.using()``; what ``TASKS`` does not allow there refuses the task before any attempt.
``run()`` sends Django's ``task_started``, calls the task (with a ``TaskContext`` when it
takes one, under its hard time limit), makes the result JSON, and decides between success,
another attempt (``max_attempts``, ``retry_delay``, ``retry_backoff``) and failure.
``task_finished`` is sent once the outcome is written (``Verdict.after``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.tasks import Task, TaskContext
from django.tasks.signals import task_finished, task_started
from django.utils import timezone

from django_ray.message import TaskMessage
from django_ray.records import to_task_result
from django_ray.runtime.settle import Verdict
from django_ray.runtime.values import json_result

logger = logging.getLogger(__name__)

__all__ = ["bind", "run"]


def bind(task: Task, record: Any) -> Task:
    """Return ``task`` as the record asks to run it (``InvalidTask``/``InvalidTaskBackend``)."""
    return task.using(
        priority=record.priority, queue_name=record.queue, backend=record.backend or None
    )


def run(task: Task, message: TaskMessage, record: Any) -> Verdict:
    """Call ``task`` for ``message``'s attempt (the record is RUNNING) and judge the result."""
    sender = type(task.get_backend())
    result = to_task_result(record, task)
    _send(task_started, sender, result)

    def finished() -> None:
        _send(task_finished, sender, to_task_result(record, task))

    try:
        args = (
            (TaskContext(task_result=result), *record.args) if task.takes_context else record.args
        )
        value = json_result(_call_with_limit(task, message, args, record.kwargs))
    except KeyboardInterrupt:
        raise  # a forced stop: no verdict
    except BaseException as e:  # SystemExit and MemoryError too: the attempt failed
        allowed = getattr(task, "max_attempts", 1) or 1
        if record.attempts < allowed:
            delay = _retry_delay(task, record.attempts)
            logger.warning(
                "Task %s [%s] failed attempt %d/%d; retrying in %.1fs.",
                message.task, message.id, record.attempts, allowed, delay,
            )  # fmt: skip
            eta = timezone.now() + timedelta(seconds=delay)
            again = message.replace(retries=message.retries + 1, eta=eta)
            return Verdict(state="retry", results="record", error=e, again=again)
        return Verdict(state="failed", results="record", error=e, after=_handling(e, finished))
    return Verdict(state="succeeded", results="record", value=value, after=finished)


def _handling(error: BaseException, call: Callable[[], None]) -> Callable[[], None]:
    """Return ``call`` run while ``error`` is being handled (``sys.exc_info()`` is set), as
    Django sends ``task_finished`` for a failure: its logging receiver logs the exception."""

    def handling() -> None:
        try:
            raise error
        except BaseException:
            call()

    return handling


def _call_with_limit(task: Task, message: TaskMessage, args: Any, kwargs: Any) -> Any:
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


def _retry_delay(task: Task, attempts: int) -> float:
    base = float(getattr(task, "retry_delay", 0) or 0)
    return base * (2 ** (attempts - 1)) if getattr(task, "retry_backoff", False) else base


def _send(signal: Any, sender: type, result: Any) -> None:
    """Send a task signal; a failing receiver is logged, never corrupts the task's state."""
    for receiver, response in signal.send_robust(sender=sender, task_result=result):
        if isinstance(response, Exception):
            logger.error("Receiver %r of %s failed.", receiver, signal, exc_info=response)
