"""Who is sending: the Celery settings and task options a message is built with.

Building a Celery message (``send.build_message``) and applying a signature
(``canvas``) need four of Celery's settings (``task_routes``, ``task_default_queue``,
``task_default_priority``, ``task_inherit_parent_priority``), the options a task declares
(queue, priority, time limits, ...) and, when sent from inside a running task, that task's
request (its id and root id; its message, for the priority it passes on).

``Client`` is that in one small interface. The core's own, ``SettingsClient``, reads the
project's real Celery app (``DJANGO_RAY["CELERY_APP"]``) if it has one, else the
``CELERY_*`` Django settings; it is what the worker uses for a follow-up message and what
the periodic scheduler uses when the project has no client of its own. ``compat.celery``
installs its client when it is imported (its app's ``conf``, its tasks, its running task),
so a message means the same thing whichever side builds it.
"""

from __future__ import annotations

from typing import Any, Protocol

from django_ray.exceptions import NotSupported

__all__ = ["SEND_DEFAULTS", "Client", "SettingsClient", "current", "install", "unsupported"]

# The Celery settings a message is built with, and Celery's defaults for them.
SEND_DEFAULTS: dict[str, Any] = {
    "task_default_queue": "celery",
    "task_default_priority": None,
    "task_routes": None,
    "task_inherit_parent_priority": False,
}


class Client(Protocol):
    """The side that sends (see the module docstring)."""

    #: The exception class raised for an option, route or signature we cannot honour.
    unsupported: type[Exception]

    def lookup(self, name: str) -> tuple[Any, Any]:
        """Return ``(conf, task)``: the settings to send task ``name`` with, and the task
        object (with Celery's option attributes) if this side declares it, else None."""
        ...

    def current_request(self) -> Any:
        """Return the request of the task running in this thread, if any (with ``id``,
        ``root_id`` and ``message``), else None."""
        ...

    def beat_schedule(self) -> tuple[str, Any]:
        """Return ``(where, schedule)``: the periodic entries this side's app declares
        (Celery's ``beat_schedule``; None for none) and where, for error messages."""
        ...


class _SettingsConf:
    """Celery's lower-case send settings, read from ``settings.CELERY_<NAME>``."""

    def __getattr__(self, name: str) -> Any:
        from django.conf import settings

        if name not in SEND_DEFAULTS:
            raise AttributeError(name)
        return getattr(settings, f"CELERY_{name.upper()}", SEND_DEFAULTS[name])


class SettingsClient:
    """The core's client: the real Celery app's settings, else the ``CELERY_*`` settings."""

    unsupported: type[Exception] = NotSupported

    def lookup(self, name: str) -> tuple[Any, Any]:
        from django_ray import registry

        app = registry.celery_app()
        return (app.conf if app is not None else _SettingsConf()), None

    def current_request(self) -> Any:
        return None

    def beat_schedule(self) -> tuple[str, Any]:
        from django_ray import conf, registry

        app = registry.celery_app()
        if app is None:  # CELERY_BEAT_SCHEDULE is read by the scheduler itself
            return "no Celery app", None
        return f"the beat_schedule of {conf.get('CELERY_APP')}", app.conf.get("beat_schedule")


_installed: list[Client] = [SettingsClient()]


def install(client: Client) -> None:
    """Make ``client`` the one messages are built for from now on (``compat`` calls this)."""
    _installed[0] = client


def current() -> Client:
    return _installed[0]


def unsupported(text: str) -> Exception:
    """Return the exception the current client raises for what we cannot honour."""
    return current().unsupported(text)
