"""Declaring tasks: ``shared_task``, ``app.task`` and the registry of compat tasks.

Every task is registered with ``django_ray.registry.register(name, task)`` when it is
declared, so ``django_ray_worker`` can run it. Names are Celery's: ``<module>.<function>``
(``<app.main>.<function>`` for ``__main__``) or ``name=``. As in Celery, the decorator
makes one ``Task`` subclass per function, options become its attributes, and a name
declared twice returns the task declared first.
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Concatenate, Literal, overload

from compat.celery import local
from compat.celery.exceptions import NotSupported
from compat.celery.retry import add_autoretry_behaviour
from compat.celery.task import FromConfig, Task
from django_ray import registry

if TYPE_CHECKING:
    from compat.celery.app import Celery

__all__ = [
    "create_task",
    "lookup_task",
    "register_task",
    "registered_tasks",
    "shared_task",
    "task_decorator",
]

RATE_LIMIT = re.compile(r"^\d+(\.\d+)?(/[smh])?$")

_tasks: dict[str, Task[Any, Any]] = {}

# Celery task options we do not honour, with the value that means "not used".
UNSUPPORTED_TASK_OPTIONS: dict[str, Any] = {
    "reject_on_worker_lost": None,
    "acks_on_failure_or_timeout": True,
    "store_errors_even_if_ignored": False,
    "throws": (),
    "pydantic": False,
    "exchange": None,
    "routing_key": None,
    "compression": None,
    "shadow_name": None,
    "trail": True,
    "send_events": True,
    "lazy": True,
    "filter": None,
    "backend": None,
}


def registered_tasks() -> dict[str, Task[Any, Any]]:
    """Return every compat task by name (the dict itself, as Celery's ``app.tasks``)."""
    return _tasks


def lookup_task(name: str) -> tuple[Celery, Task[Any, Any] | None]:
    """Return ``(app, task)`` for a registered compat task name, else ``(current app, None)``."""
    task = _tasks.get(name)
    return (task.app if task is not None else local.get_current_app()), task


def create_task(
    fun: Callable[..., Any],
    *,
    app: Celery | None,
    name: str | None = None,
    base: type[Task[Any, Any]] | None = None,
    bind: bool = False,
    **options: Any,
) -> Task[Any, Any]:
    """Make the Task subclass for ``fun`` (as Celery does), instantiate and register it."""
    _check_task_options(options)
    main = (app or local.get_current_app()).main
    module = main if fun.__module__ == "__main__" and main else fun.__module__
    task_name = name or f"{module}.{fun.__name__}"
    if task_name in _tasks:  # Celery returns the task already registered under the name
        return _tasks[task_name]
    base = base or (app.Task if app is not None else Task)
    attrs = {
        "name": task_name,
        "run": fun if bind else staticmethod(fun),
        "_app": app,
        "__doc__": fun.__doc__,
        "__module__": fun.__module__,
        "__wrapped__": fun,
        **options,
    }
    task: Task[Any, Any] = type(fun.__name__, (base,), attrs)()
    add_autoretry_behaviour(task)
    register_task(task)
    return task


def register_task(task: Task[Any, Any]) -> Task[Any, Any]:
    """Make ``task`` known to compat.celery and runnable by the worker."""
    if not task.name:
        raise ValueError(f"Task {task!r} has no name; set the class attribute 'name'.")
    declared = inspect.getattr_static(task, "rate_limit")
    if declared is not None and not isinstance(declared, FromConfig):
        # Accepted so that Celery code imports unchanged, but said out loud: nothing
        # limits the rate yet (Celery's limit is per worker process anyway).
        warnings.warn(
            f"Task {task.name!r}: rate_limit={declared!r} is not enforced by "
            "django_ray_worker; remove it or limit the rate in the task.",
            RuntimeWarning,
            stacklevel=3,
        )
    _tasks[task.name] = task
    registry.register(task.name, task)
    return task


def _check_task_options(options: dict[str, Any]) -> None:
    for key, value in options.items():
        if key in UNSUPPORTED_TASK_OPTIONS and value != UNSUPPORTED_TASK_OPTIONS[key]:
            raise NotSupported(
                f"Task option {key}={value!r} is not supported by compat.celery; remove it "
                "(see docs/celery-migration.md)."
            )
    rate = options.get("rate_limit")
    if rate is not None and not RATE_LIMIT.match(str(rate)):
        raise ValueError(f"rate_limit must look like '10/s', '100/m' or '1/h', not {rate!r}.")
    if options.get("serializer", "json") != "json":
        raise NotSupported(
            f"Task option serializer={options['serializer']!r} is not supported; only 'json' is."
        )


def task_decorator(app: Celery | None, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
    def create(fun: Callable[..., Any]) -> Task[Any, Any]:
        return create_task(fun, app=app, **options)

    if len(args) == 1 and callable(args[0]) and not options:
        return create(args[0])
    if args:
        raise TypeError("The task decorator takes the function, or keyword options only.")
    return create


@overload
def shared_task[**P, R](fun: Callable[P, R], /) -> Task[P, R]: ...
@overload
def shared_task[**P, R](
    *, bind: Literal[True], **options: Any
) -> Callable[[Callable[Concatenate[Any, P], R]], Task[P, R]]: ...
@overload
def shared_task[**P, R](
    *, bind: Literal[False] = False, **options: Any
) -> Callable[[Callable[P, R]], Task[P, R]]: ...
def shared_task(*args: Any, **options: Any) -> Any:
    """Declare a task that belongs to whichever app is current (``@shared_task(bind=True)``)."""
    return task_decorator(None, args, options)
