"""``task_routes``: pick a task's queue (and priority) the way Celery's Router does.

Supported route forms: a dict ``{name_or_glob_or_regex: {"queue": ..., "priority": ...}}``
or ``{name: "queue"}``, a router callable ``(name, args, kwargs, options, task=None)``, a
dotted path to one, or a list of these (the first match wins). A route that sets anything
but ``queue`` and ``priority`` (an exchange or a routing key) raises ``NotSupported``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from typing import Any

from django.utils.module_loading import import_string

from django_ray.celery import client

__all__ = ["route"]

ROUTE_KEYS = frozenset({"queue", "priority"})
Router = Callable[..., Any]


def route(
    routes: Any,
    name: str,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    options: Mapping[str, Any],
    task: Any = None,
) -> dict[str, Any]:
    """Return the route for ``name`` (``{}`` when no router matches)."""
    for router in _routers(routes):
        found = router(name, args, kwargs, options, task=task)
        if found is not None:
            return _expand(found, name)
    return {}


def _routers(routes: Any) -> list[Router]:
    if routes is None:
        return []
    if not isinstance(routes, list | tuple):
        routes = [routes]
    routers: list[Router] = []
    for item in routes:
        if isinstance(item, Mapping):
            routers.append(_map_router(item))
        elif isinstance(item, str):
            routers.append(import_string(item))
        elif callable(item):
            routers.append(item)
        else:
            raise client.unsupported(
                f"Unsupported task_routes entry {item!r}: use a dict or a callable."
            )
    return routers


def _map_router(mapping: Mapping[Any, Any]) -> Router:
    exact: dict[str, Any] = {}
    patterns: list[tuple[re.Pattern[str], Any]] = []
    for key, value in mapping.items():
        if isinstance(key, re.Pattern):
            patterns.append((key, value))
        elif "*" in key:
            patterns.append((re.compile(fnmatch.translate(key)), value))
        else:
            exact[key] = value

    def router(name: str, *args: Any, **kwargs: Any) -> Any:
        if name in exact:
            return exact[name]
        for regex, value in patterns:
            if regex.match(name):
                return value
        return None

    return router


def _expand(found: Any, name: str) -> dict[str, Any]:
    if isinstance(found, str):
        return {"queue": found}
    if not isinstance(found, Mapping):
        raise client.unsupported(
            f"Route {found!r} for task {name!r} is not a dict or a queue name."
        )
    extra = set(found) - ROUTE_KEYS
    if extra:
        raise client.unsupported(
            f"Route option(s) {sorted(extra)!r} for task {name!r} are not supported: "
            "django-ray routes by queue (and priority) only."
        )
    return {k: v for k, v in found.items() if v is not None}
