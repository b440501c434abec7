"""Celery's public API on django-ray: change ``from celery import ...`` to this package.

Tasks are published as Celery protocol-v2 messages through django-ray's transport, get a
``TaskRecord`` like Django tasks, and run in ``django_ray_worker``; results are read from
``TaskRecord``. ``celery`` itself is never imported. What is supported, and what differs,
is listed in docs/celery-migration.md; anything else raises ``NotSupported``.
"""

from __future__ import annotations

from compat.celery import exceptions, messages, states
from compat.celery.app import Celery
from compat.celery.canvas import Signature, chain, chord, group, maybe_signature, signature, subtask
from compat.celery.decorators import shared_task
from compat.celery.local import current_app, current_task
from compat.celery.result import AsyncResult, GroupResult
from compat.celery.task import Task
from django_ray.message import new_task_id as uuid

messages.install()  # messages built anywhere in this process use compat's app and tasks

__all__ = [  # noqa: RUF022  (grouped by purpose, not sorted)
    # The app and declaring tasks
    "Celery",
    "Task",
    "shared_task",
    # Signatures and workflows
    "Signature",
    "chain",
    "chord",
    "group",
    "maybe_signature",
    "signature",
    "subtask",
    # Results
    "AsyncResult",
    "GroupResult",
    # What is running now
    "current_app",
    "current_task",
    # Modules Celery exposes at the top level, and its id helper
    "exceptions",
    "states",
    "uuid",
]
