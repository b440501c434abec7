"""Celery's exception names, plus ``NotSupported`` for what compat.celery does not do.

The names and constructor signatures follow ``celery.exceptions`` so that ``except``
clauses keep working after the import switch. ``Retry.message`` differs: it is the
``TaskMessage`` to publish (see ``Task.retry``), and a text reason is in ``Retry.reason``.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured as DjangoImproperlyConfigured

from django_ray.exceptions import NotRegistered as CoreNotRegistered
from django_ray.exceptions import NotSupported as CoreNotSupported

if TYPE_CHECKING:
    from compat.celery.canvas import Signature
    from django_ray.message import TaskMessage

__all__ = [
    "CeleryError",
    "ChordError",
    "Ignore",
    "ImproperlyConfigured",
    "InvalidTaskError",
    "MaxRetriesExceededError",
    "NotRegistered",
    "NotSupported",
    "Reject",
    "Retry",
    "SoftTimeLimitExceeded",
    "TaskError",
    "TaskPredicate",
    "TaskRevokedError",
    "TimeLimitExceeded",
    "TimeoutError",
    "WorkerLostError",
]


class CeleryError(Exception):
    """Root of every compat.celery error."""


class NotSupported(CeleryError, CoreNotSupported):
    """A Celery option or call that compat.celery does not implement.

    Raised where the option is used, never ignored; the message names the option and
    what to use instead (see docs/celery-migration.md).
    """


class ImproperlyConfigured(CeleryError, DjangoImproperlyConfigured):
    """The Celery configuration asks for something compat.celery cannot honour."""


class TaskPredicate(CeleryError):
    """Base of the exceptions a task raises to steer the worker."""


class Retry(TaskPredicate):
    """The task is to be retried: raised by ``Task.retry()``.

    ``message`` is the ``TaskMessage`` to publish for the next attempt (same id,
    ``retries + 1``, its ``eta``); the worker publishes it. ``when`` is the ETA (a
    datetime) or the countdown (seconds), ``exc`` the exception that caused the retry.
    """

    def __init__(
        self,
        message: TaskMessage | str | None = None,
        exc: BaseException | str | None = None,
        when: datetime | float | None = None,
        is_eager: bool = False,
        sig: Signature | None = None,
        **kwargs: Any,
    ) -> None:
        self.message: TaskMessage | None = None if isinstance(message, str) else message
        self.reason: str | None = message if isinstance(message, str) else None
        self.exc = exc if isinstance(exc, BaseException) else None
        self.excs = exc if isinstance(exc, str) else (repr(exc) if exc is not None else None)
        self.when = when
        self.is_eager = is_eager
        self.sig = sig
        super().__init__(self.reason, exc, when)

    def humanize(self) -> str:
        if isinstance(self.when, int | float):
            return f"in {self.when}s"
        return f"at {self.when}"

    def __str__(self) -> str:
        if self.reason:
            return self.reason
        if self.excs:
            return f"Retry {self.humanize()}: {self.excs}"
        return f"Retry {self.humanize()}"

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self.reason, self.exc, self.when)


RetryTaskError = Retry


class Ignore(TaskPredicate):
    """Raised by a task so that the worker records no state for it."""


class Reject(TaskPredicate):
    """Raised by a task to reject its message (``requeue`` to put it back)."""

    def __init__(self, reason: Any = None, requeue: bool = False) -> None:
        self.reason = reason
        self.requeue = requeue
        super().__init__(reason, requeue)

    def __repr__(self) -> str:
        return f"reject requeue={self.requeue}: {self.reason}"


class TaskError(CeleryError):
    """Task related errors."""


class NotRegistered(TaskError, CoreNotRegistered):
    """No task is registered under this name (also catches django-ray's ``NotRegistered``)."""

    def __repr__(self) -> str:
        return f"Task of kind {self} never registered, please make sure it's imported."


class TimeoutError(TaskError):
    """``AsyncResult.get()`` waited longer than its ``timeout``."""


class MaxRetriesExceededError(TaskError):
    """``Task.retry()`` was called past ``max_retries`` without an ``exc`` to raise."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.task_args = kwargs.pop("task_args", [])
        self.task_kwargs = kwargs.pop("task_kwargs", {})
        super().__init__(*args, **kwargs)


class TaskRevokedError(TaskError):
    """The task was revoked or had expired, so it has no result."""


class InvalidTaskError(TaskError):
    """The task message was malformed."""


class ChordError(TaskError):
    """A chord's header failed, so its body cannot run."""


class WorkerLostError(CeleryError):
    """The process running the task died."""


class SoftTimeLimitExceeded(CeleryError):
    """Raised inside a task that ran past its ``soft_time_limit``; it may clean up."""


class TimeLimitExceeded(CeleryError):
    """The task ran past its hard ``time_limit`` and was stopped."""
