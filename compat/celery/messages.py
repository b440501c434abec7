"""compat.celery as a sending side: its app's settings, its tasks and its running task.

The message builder and the canvas are core (``django_ray.celery.send`` and
``django_ray.celery.canvas``); this module gives them compat's view through
``CompatClient``, installed when ``compat.celery`` is imported, and keeps the builder's
compat signature (``app=``) for ``Task.apply_async``, ``app.send_task`` and retries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from compat.celery import local
from compat.celery.exceptions import NotSupported
from django_ray.celery import client, send
from django_ray.celery.send import (
    custom_headers,
    expires_at,
    parse_moment,
    to_django_priority,
    wire_signature,
)
from django_ray.message import TaskMessage

if TYPE_CHECKING:
    from compat.celery.app import Celery

__all__ = [
    "CompatClient",
    "build_message",
    "custom_headers",
    "expires_at",
    "install",
    "parse_moment",
    "to_django_priority",
    "wire_signature",
]


class CompatClient:
    """The settings of the task's app (else the current app), its task, its running task."""

    unsupported: type[Exception] = NotSupported

    def lookup(self, name: str) -> tuple[Any, Any]:
        from compat.celery.decorators import lookup_task

        app, task = lookup_task(name)
        return app.conf, task

    def current_request(self) -> Any:
        current = local.get_current_worker_task()
        return current.request if current is not None else None

    def beat_schedule(self) -> tuple[str, Any]:
        from django_ray import registry

        if registry.celery_app() is not None:  # the project's real Celery app comes first
            return client.SettingsClient().beat_schedule()
        schedule = local.get_current_app().conf.get("beat_schedule")
        return "the beat_schedule of the compat.celery app", schedule


def install() -> None:
    client.install(CompatClient())


def build_message(
    name: str,
    args: Any,
    kwargs: Any,
    options: Mapping[str, Any],
    *,
    app: Celery,
    task: Any = None,
    parent: TaskMessage | None = None,
) -> TaskMessage:
    """Return the ``TaskMessage`` that ``apply_async(args, kwargs, **options)`` publishes."""
    return send.build_message(name, args, kwargs, options, conf=app.conf, task=task, parent=parent)
