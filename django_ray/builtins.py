"""Celery's built-in tasks ``celery.starmap`` and ``celery.map``, for projects without Celery.

A real Celery client's ``task.starmap(it)``, ``task.map(it)`` and ``task.chunks(it, n)``
publish these names. Where the project has a Celery app, the app provides them (and
Celery's tracer runs them); otherwise ``django_ray.registry`` registers these the first
time it is asked (``autodiscover()`` in the worker, ``resolve()`` in a Ray process),
giving them its own ``resolve`` to find the task they call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["BUILTIN_NAMES", "builtin_tasks"]

BUILTIN_NAMES = frozenset({"celery.starmap", "celery.map"})


class _Builtin:
    """Call a registered task on each item, in order, in this attempt (as Celery does)."""

    max_retries = 0
    ignore_result = False

    def __init__(self, name: str, *, star: bool, resolve: Callable[[str], Any]) -> None:
        self.name = name
        self.star = star
        self._resolve = resolve

    def push_request(self, **request: Any) -> None:
        """Nothing to keep: the built-ins never read their request."""

    def pop_request(self) -> None:
        """Nothing to drop."""

    def run(self, task: dict[str, Any], it: list[Any]) -> list[Any]:
        entry = self._resolve(str(task["task"]))
        obj = entry.obj
        call = obj.call if entry.kind == "django" else (obj if callable(obj) else obj.run)
        return [call(*item) if self.star else call(item) for item in it]


def builtin_tasks(resolve: Callable[[str], Any]) -> dict[str, Any]:
    """Return ``celery.starmap`` and ``celery.map`` by name, finding tasks with ``resolve``."""
    return {
        "celery.starmap": _Builtin("celery.starmap", star=True, resolve=resolve),
        "celery.map": _Builtin("celery.map", star=False, resolve=resolve),
    }
