"""``RayTaskBackend``: Django 6 Tasks on a kombu broker, run by ``django_ray_worker``.

```python
TASKS = {
    "default": {
        "BACKEND": "django_ray.backend.RayTaskBackend",
        "QUEUES": ["default", "high"],
        "OPTIONS": {"TASK_OPTIONS": {"myapp.tasks.resize": {"num_cpus": 2}}},
    }
}
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from django.apps import apps
from django.core import checks
from django.core.exceptions import ValidationError
from django.tasks import Task, TaskResult
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.exceptions import TaskResultDoesNotExist
from django.tasks.signals import task_enqueued

from django_ray import registry
from django_ray.conf import RAY_OPTION_KEYS
from django_ray.exceptions import ImproperlyConfiguredRay, NotRegistered
from django_ray.message import TaskMessage, new_task_id, normalize_arguments

# django_ray.models (TaskRecord) is imported where it is used: a project that forgot
# "django_ray" in INSTALLED_APPS can still import its tasks modules and run `manage.py
# check` (django_ray.E001), and gets ImproperlyConfiguredRay naming the fix on enqueue
# instead of Django's RuntimeError about TaskRecord's app_label.

__all__ = ["RayTask", "RayTaskBackend"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RayTask(Task):
    """A Django Task with retries, a time limit and Ray resources (``@task(max_attempts=3)``)."""

    max_attempts: int = 1
    retry_delay: float = 0
    retry_backoff: bool = False
    time_limit: float | None = None
    ray_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        Task.__post_init__(self)
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {self.max_attempts!r}.")
        unknown = set(self.ray_options) - RAY_OPTION_KEYS
        if unknown:
            raise ValueError(
                f"Unknown Ray option(s) {sorted(unknown)!r}; use {sorted(RAY_OPTION_KEYS)}."
            )
        registry.register_django_task(self)


class RayTaskBackend(BaseTaskBackend):
    task_class = RayTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        options = self.options.get("TASK_OPTIONS", {})
        # A malformed value is reported by check() (django_ray.E002) rather than raised here,
        # where it would break every import of a tasks module.
        self.task_options: dict[str, dict[str, Any]] = (
            {k: v for k, v in options.items() if isinstance(v, dict)}
            if isinstance(options, dict)
            else {}
        )

    def ray_options_for(self, task: Task) -> dict[str, Any]:
        """Return the Ray options of ``task``: its declaration, then ``OPTIONS["TASK_OPTIONS"]``."""
        return {**getattr(task, "ray_options", {}), **self.task_options.get(task.module_path, {})}

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        require_app()
        from django_ray.enqueue import enqueue
        from django_ray.records import to_task_result

        self.validate_task(task)
        # Rejects non-JSON arguments with TypeError before anything is written.
        args, kwargs = normalize_arguments(args, kwargs)
        message = TaskMessage(
            id=new_task_id(),
            task=task.module_path,
            args=args,
            kwargs=kwargs,
            queue=task.queue_name,
            priority=task.priority,
            eta=task.run_after,
            time_limit=getattr(task, "time_limit", None),
            backend=self.alias,
        )
        (record,) = enqueue((message,))
        result = to_task_result(record, task)
        task_enqueued.send(sender=type(self), task_result=result)
        return result

    async def aenqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        return await sync_to_async(self.enqueue, thread_sensitive=True)(task, args, kwargs)

    def get_result(self, result_id: str) -> TaskResult:
        require_app()
        from django_ray.models import TaskRecord
        from django_ray.records import to_task_result

        try:
            record = TaskRecord.objects.get(pk=str(result_id), backend=self.alias)
        except (TaskRecord.DoesNotExist, ValidationError, ValueError, TypeError):
            raise TaskResultDoesNotExist(result_id) from None
        # The name came from a message: look it up in the registry, never import it as is.
        try:
            entry = registry.resolve(record.task_name)
        except NotRegistered:
            raise TaskResultDoesNotExist(result_id) from None
        if entry.kind != "django":
            raise TaskResultDoesNotExist(result_id)
        task = entry.obj.using(
            priority=record.priority,
            queue_name=record.queue,
            run_after=record.run_after,
            backend=self.alias,
        )
        return to_task_result(record, task)

    async def aget_result(self, result_id: str) -> TaskResult:
        return await sync_to_async(self.get_result, thread_sensitive=True)(result_id)

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        from django_ray.checks import check_backend

        return check_backend(self)


def require_app() -> None:
    """Raise ``ImproperlyConfiguredRay`` naming the fix if ``django_ray`` is not installed."""
    if not apps.is_installed("django_ray"):
        raise ImproperlyConfiguredRay(
            "RayTaskBackend needs 'django_ray' in INSTALLED_APPS (its TaskRecord table stores "
            "every task): add 'django_ray' to INSTALLED_APPS, then run `manage.py migrate`."
        )
