"""Exceptions raised by django-ray."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

__all__ = [
    "DeliveryLimitExceeded",
    "DjangoRayError",
    "ImproperlyConfiguredRay",
    "MalformedMessage",
    "ModeNotAvailable",
    "NotRegistered",
    "NotSupported",
    "PreflightFailed",
    "ProcessSetupFailed",
    "RequeueLimitExceeded",
    "TaskTimeLimitExceeded",
    "WorkerLost",
]


class DjangoRayError(Exception):
    """Root of every django-ray error."""


class ImproperlyConfiguredRay(DjangoRayError, ImproperlyConfigured):
    """A django-ray setting is missing or wrong."""


class MalformedMessage(DjangoRayError):
    """A broker message is not a valid protocol-v2 JSON task message."""

    def __init__(self, reason: str, *, task_id: str | None = None, task_name: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.task_id = task_id
        self.task_name = task_name


class NotRegistered(DjangoRayError, KeyError):
    """A message names a task that is not in the registry."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class NotSupported(DjangoRayError, NotImplementedError):
    """A Celery option, route or signature that django-ray does not honour (never ignored)."""


class ProcessSetupFailed(DjangoRayError):
    """A process could not be set up to run tasks (settings, installed apps, task modules)."""


class PreflightFailed(ImproperlyConfiguredRay):
    """The Ray cluster does not see the same project as the worker (``runtime.preflight``)."""


class ModeNotAvailable(DjangoRayError):
    """The requested execution mode cannot run here."""


class TaskTimeLimitExceeded(DjangoRayError):
    """A task ran past its hard time limit and was stopped."""


class DeliveryLimitExceeded(DjangoRayError):
    """A message was delivered ``MAX_DELIVERIES`` times and never reached an outcome."""


class RequeueLimitExceeded(DjangoRayError):
    """A task rejected its message with ``Reject(requeue=True)`` too many times in a row."""


class WorkerLost(DjangoRayError):
    """The process running a task died before reporting an outcome."""
