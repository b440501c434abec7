"""Rebuild a task's exception from its ``TaskRecord.errors`` entry, as compat's classes.

The rebuild itself is ``django_ray.celery.failures`` (one for the worker and the client);
here Celery's exceptions come back as ``compat.celery.exceptions`` classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from compat.celery import exceptions
from django_ray.celery.failures import rebuild_error

__all__ = ["exception_from_error"]


def exception_from_error(error: Mapping[str, Any] | None) -> BaseException:
    """Rebuild the exception described by a ``TaskRecord.errors`` entry."""
    exc = rebuild_error(error, celery_namespace=exceptions)
    if exc is None:
        return exceptions.TaskError("The task failed without recording an error.")
    return exc
