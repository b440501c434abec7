"""``Celery``: the app: configuration, the task decorator, ``send_task``, autodiscovery.

Nothing here reads settings or imports task modules at import time: ``conf`` reads the
configured object when a value is read, and ``autodiscover_tasks()`` waits for Django's
apps to be ready.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any, Concatenate, Literal, overload

from django.utils import timezone
from django.utils.module_loading import import_string

from compat.celery import local
from compat.celery.canvas import Signature, signature
from compat.celery.config import Settings
from compat.celery.decorators import (
    register_task,
    registered_tasks,
    shared_task,
    task_decorator,
)
from compat.celery.exceptions import NotSupported
from compat.celery.messages import build_message
from compat.celery.producer import send
from compat.celery.result import AsyncResult, GroupResult
from compat.celery.result import AsyncResult as Result
from compat.celery.retry import add_autoretry_behaviour
from compat.celery.task import Task as BaseTask

__all__ = ["Celery", "shared_task"]


class Control:
    """``app.control``: only ``revoke`` is provided."""

    def revoke(
        self,
        task_id: str | Iterable[str],
        destination: Any = None,
        terminate: bool = False,
        signal: Any = None,
        **kwargs: Any,
    ) -> None:
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        for one in ids:
            AsyncResult(one).revoke(terminate=terminate, signal=signal, **kwargs)

    def __getattr__(self, name: str) -> Any:
        raise NotSupported(
            f"app.control.{name}() is not supported by compat.celery; only revoke() is."
        )


class Loader:
    """``app.loader``: what ``django_ray.registry.autodiscover`` calls on a Celery app."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def import_default_modules(self) -> None:
        self.app.finalize()


class Celery:
    """A Celery app: configuration, task decorator, ``send_task`` and result classes."""

    # Celery's names for the classes an app uses (``app.Task`` is the default ``base=``).
    Task: type[BaseTask[Any, Any]] = BaseTask
    AsyncResult = Result
    GroupResult = GroupResult

    def __init__(
        self,
        main: str | None = None,
        *,
        broker: str | None = None,
        backend: str | None = None,
        include: Iterable[str] | None = None,
        config_source: Any = None,
        namespace: str | None = None,
        task_cls: type[BaseTask[Any, Any]] | str | None = None,
        set_as_current: bool = True,
        **kwargs: Any,
    ) -> None:
        given = {"broker": broker, "backend": backend, **kwargs}
        unsupported = sorted(k for k, v in given.items() if v is not None)
        if unsupported:
            raise NotSupported(
                f"Celery(...) argument(s) {unsupported!r} are not supported by compat.celery; "
                "configure the broker with DJANGO_RAY['BROKER_URL'] or CELERY_BROKER_URL."
            )
        self.main = main
        self.conf = Settings()
        self.control = Control()
        self.loader = Loader(self)
        self._include = list(include or ())
        self._pending: list[tuple[Any, str]] = []
        if task_cls is not None:
            self.Task = import_string(task_cls) if isinstance(task_cls, str) else task_cls
        if config_source is not None:
            self.config_from_object(config_source, namespace=namespace)
        if set_as_current:
            local.set_current_app(self)

    def config_from_object(
        self, obj: Any, silent: bool = False, force: bool = False, namespace: str | None = None
    ) -> None:
        """Read settings from ``obj``, e.g. ``('django.conf:settings', namespace='CELERY')``."""
        self.conf.configure(obj, namespace)

    def autodiscover_tasks(
        self,
        packages: Iterable[str] | Callable[[], Iterable[str]] | None = None,
        related_name: str = "tasks",
        force: bool = False,
    ) -> None:
        """Import ``<package>.tasks`` for each package (default: every installed app).

        Done now with ``force=True`` or once Django's apps are ready; before that it waits
        until the tasks are first needed (``app.tasks``, ``finalize()``, the worker).
        """
        from django.apps import apps

        self._pending.append((packages, related_name))
        if force or apps.ready:
            self.finalize()

    def finalize(self, auto: bool = False) -> None:
        """Import the ``include`` modules and the packages waiting for ``autodiscover_tasks``."""
        from django.apps import apps

        from django_ray.registry import import_optional

        for module in self._include:
            importlib.import_module(module)
        pending, self._pending = self._pending, []
        for packages, related_name in pending:
            if packages is None:
                packages = [config.name for config in apps.get_app_configs()]
            elif callable(packages):
                packages = packages()
            for package in packages:
                import_optional(f"{package}.{related_name}")

    @property
    def tasks(self) -> dict[str, BaseTask[Any, Any]]:
        """Every compat task by name (Celery's shared tasks are in every app)."""
        self.finalize()
        return registered_tasks()

    @overload
    def task[**P, R](self, fun: Callable[P, R], /) -> BaseTask[P, R]: ...
    @overload
    def task[**P, R](
        self, *, bind: Literal[True], **options: Any
    ) -> Callable[[Callable[Concatenate[Any, P], R]], BaseTask[P, R]]: ...
    @overload
    def task[**P, R](
        self, *, bind: Literal[False] = False, **options: Any
    ) -> Callable[[Callable[P, R]], BaseTask[P, R]]: ...
    def task(self, *args: Any, **options: Any) -> Any:
        """Declare a task on this app: ``@app.task`` or ``@app.task(bind=True, ...)``."""
        return task_decorator(self, args, options)

    def register_task(self, task: BaseTask[Any, Any]) -> BaseTask[Any, Any]:
        """Register an instance of a class-based task (a ``Task`` subclass with ``run``)."""
        task._app = task._app or self
        add_autoretry_behaviour(task)
        return register_task(task)

    def send_task(
        self,
        name: str,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Result:
        """Send a task by name, registered here or not (never run eagerly, as in Celery)."""
        message = build_message(name, args, kwargs, options, app=self)
        send((message,), app=self, eager=False)
        return Result(message.id, task_name=name, app=self)

    def signature(self, *args: Any, **kwargs: Any) -> Signature:
        return signature(*args, **kwargs)

    def set_current(self) -> None:
        local.set_current_app(self)

    set_default = set_current

    def now(self) -> Any:
        return timezone.now()

    def __repr__(self) -> str:
        return f"<Celery {self.main or '__main__'}>"
