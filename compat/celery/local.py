"""Per-thread state: the stack of running tasks, the current app and eager mode.

``current_task`` and ``current_app`` are Celery names for *whatever is current when they
are read*, so they cannot be plain module attributes bound at import; each is one small
object that looks the current value up on every attribute access. That is the only
indirection here, and it is why these two exist as objects rather than functions.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compat.celery.app import Celery
    from compat.celery.task import Task

__all__ = [
    "allow_join_result",
    "current_app",
    "current_task",
    "eager_mode",
    "get_current_app",
    "get_current_task",
    "get_current_worker_task",
    "in_eager_mode",
    "join_allowed",
    "pop_task",
    "push_task",
    "set_current_app",
]

_tls = threading.local()
_eager: ContextVar[bool] = ContextVar("compat_celery_eager", default=False)
_apps: dict[str, Celery | None] = {"current": None}


def _stack() -> list[Task[Any, Any]]:
    stack: list[Task[Any, Any]] | None = getattr(_tls, "tasks", None)
    if stack is None:
        stack = _tls.tasks = []
    return stack


def push_task(task: Task[Any, Any]) -> None:
    _stack().append(task)


def pop_task() -> None:
    stack = _stack()
    if stack:
        stack.pop()


def get_current_task() -> Task[Any, Any] | None:
    """Return the task running in this thread (directly called or not), if any."""
    stack = _stack()
    return stack[-1] if stack else None


def get_current_worker_task() -> Task[Any, Any] | None:
    """Return the innermost running task that a worker (or eager mode) started."""
    for task in reversed(_stack()):
        if not task.request.called_directly:
            return task
    return None


@contextmanager
def allow_join_result() -> Iterator[None]:
    """Allow ``AsyncResult.get()`` inside a running task (Celery's escape hatch)."""
    previous = getattr(_tls, "allow_join", False)
    _tls.allow_join = True
    try:
        yield
    finally:
        _tls.allow_join = previous


def join_allowed() -> bool:
    return bool(getattr(_tls, "allow_join", False))


@contextmanager
def eager_mode() -> Iterator[None]:
    """Mark this context as running tasks eagerly (``request.is_eager`` reads True)."""
    token = _eager.set(True)
    try:
        yield
    finally:
        _eager.reset(token)


def in_eager_mode() -> bool:
    return _eager.get()


def set_current_app(app: Celery) -> None:
    _apps["current"] = app


def get_current_app() -> Celery:
    """Return the app created last, or the default app reading ``CELERY_*`` settings."""
    app = _apps["current"]
    if app is None:
        from compat.celery.app import Celery

        app = Celery(None, set_as_current=False)
        app.config_from_object("django.conf:settings", namespace="CELERY")
        _apps["current"] = app
    return app


class _Current:
    """Attribute access on the value ``getter`` returns at the time of access."""

    __slots__ = ("_getter", "_label")

    def __init__(self, getter: Any, label: str) -> None:
        object.__setattr__(self, "_getter", getter)
        object.__setattr__(self, "_label", label)

    def __getattr__(self, name: str) -> Any:
        target = self._getter()
        if target is None:
            raise AttributeError(f"No {self._label} is running, so it has no {name!r}.")
        return getattr(target, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._getter()(*args, **kwargs)

    def __bool__(self) -> bool:
        return self._getter() is not None

    def __eq__(self, other: object) -> bool:
        return self._getter() == other

    def __hash__(self) -> int:
        return hash(self._getter())

    def __repr__(self) -> str:
        return repr(self._getter())


#: The task running in this thread (falsy when none is).
current_task: Any = _Current(get_current_task, "task")
#: The Celery app in use.
current_app: Any = _Current(get_current_app, "app")
