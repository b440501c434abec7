"""Celery's request, signature and result formats, built without importing Celery.

Shared by the Celery result stores (``django_ray.celery.stores``) and the executors of
Celery-style tasks (``django_ray.runtime.celery_exec``, ``django_ray.runtime.compat_exec``),
so a task run by ``django_ray_worker`` looks to an unchanged Celery client exactly as if a
Celery worker had run it (the format is in ``celery/backends/base.py``, ``_get_result_meta``).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from django_ray.celery.states import (
    EXCEPTION_STATES,
    READY_STATES,
)
from django_ray.message import TaskMessage

__all__ = [
    "CELERY_EXCEPTION_NAMES",
    "EXCEPTION_STATES",
    "READY_STATES",
    "encode_exception",
    "node_name",
    "plain_number",
    "request_dict",
    "result_meta",
    "result_tuple",
]

# Where a class lives for a Celery client, when ours stands in for Celery's own: an
# unchanged Celery client then re-raises Celery's class (``celery.exceptions`` re-exports
# billiard's time-limit and worker-lost errors, and Celery stores them under billiard).
_BILLIARD = ("SoftTimeLimitExceeded", "TimeLimitExceeded", "WorkerLostError")
_CELERY = (
    "CeleryError", "ChordError", "Ignore", "ImproperlyConfigured", "InvalidTaskError",
    "MaxRetriesExceededError", "NotRegistered", "Reject", "Retry", "TaskError",
    "TaskPredicate", "TaskRevokedError", "TimeoutError",
)  # fmt: skip
WIRE_MODULES = {
    "django_ray.runtime.time_limits.SoftTimeLimitExceeded": "billiard.exceptions",
    "django_ray.runtime.time_limits.TimeLimitExceeded": "billiard.exceptions",
    **{f"compat.celery.exceptions.{name}": "billiard.exceptions" for name in _BILLIARD},
    **{f"compat.celery.exceptions.{name}": "celery.exceptions" for name in _CELERY},
}


# Errors of ours that a Celery client knows under Celery's name (the one table: the worker's
# result mirror and compat.celery's exception rebuild both read it).
CELERY_EXCEPTION_NAMES: dict[str, tuple[str, str]] = {
    "django_ray.exceptions.NotRegistered": ("celery.exceptions", "NotRegistered"),
    "django_ray.exceptions.MalformedMessage": ("celery.exceptions", "InvalidTaskError"),
    "django_ray.exceptions.TaskTimeLimitExceeded": ("billiard.exceptions", "TimeLimitExceeded"),
    "django_ray.exceptions.WorkerLost": ("billiard.exceptions", "WorkerLostError"),
}


def node_name(worker_id: str) -> str:
    """Return the Celery-style node name (``name@host``) of the worker ``worker_id``."""
    return f"django_ray.{worker_id}@{socket.gethostname()}"


def json_safe(value: Any) -> Any:
    """Return ``value`` if it survives JSON, else its repr (Celery's ``ensure_serializable``)."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        return repr(value)


def encode_exception(exc: BaseException) -> dict[str, Any]:
    """Return ``exc`` as Celery's JSON result backend stores it."""
    cls = type(exc)
    module = cls.__module__
    module = WIRE_MODULES.get(f"{module}.{cls.__qualname__}", module)
    return {
        "exc_type": cls.__qualname__,
        "exc_message": [json_safe(arg) for arg in exc.args],
        "exc_module": module,
    }


def result_tuple(task_id: str) -> list[Any]:
    """Return the ``children`` entry Celery stores for a simple result."""
    return [[task_id, None], None]


def result_meta(
    task_id: str,
    state: str,
    result: Any,
    traceback: str | None = None,
    *,
    children: Sequence[str] = (),
    parent_id: str | None = None,
    group_id: str | None = None,
) -> dict[str, Any]:
    """Return the ``celery-task-meta-<id>`` document for one state change."""
    meta: dict[str, Any] = {
        "status": state,
        "result": result,
        "traceback": traceback,
        "children": [result_tuple(c) for c in children],
        "date_done": datetime.now(UTC).isoformat() if state in READY_STATES else None,
    }
    if group_id:
        meta["group_id"] = group_id
    if parent_id:
        meta["parent_id"] = parent_id
    meta["task_id"] = task_id
    return meta


def request_dict(
    message: TaskMessage, *, hostname: str, broker_priority: int | None
) -> dict[str, Any]:
    """Return what a Celery worker passes to its tracer as the request of ``message``.

    Celery's ``Request`` copies the headers, then adds the properties, the delivery info,
    the body and the embed (``celery/worker/request.py`` and ``app/trace.py``).
    """
    delivery = dict(message.delivery_info)
    properties = {
        "correlation_id": message.correlation_id or message.id,
        "reply_to": message.reply_to,
        "delivery_mode": 2,
        "priority": broker_priority,
    }
    return {
        **dict(message.headers),
        "lang": "py",
        "task": message.task,
        "id": message.id,
        "shadow": message.shadow,
        "eta": message.eta.isoformat() if message.eta else None,
        "expires": message.expires.isoformat() if message.expires else None,
        "group": message.group,
        "group_index": message.group_index,
        "retries": message.retries,
        "timelimit": [plain_number(message.time_limit), plain_number(message.soft_time_limit)],
        "root_id": message.root_id or message.id,
        "parent_id": message.parent_id,
        "origin": message.origin,
        "ignore_result": message.ignore_result,
        "properties": properties,
        "reply_to": message.reply_to,
        "correlation_id": message.correlation_id or message.id,
        "hostname": hostname,
        "delivery_info": {
            "exchange": delivery.get("exchange"),
            "routing_key": delivery.get("routing_key") or message.queue,
            "priority": broker_priority,
            "redelivered": bool(delivery.get("redelivered", False)),
        },
        "args": list(message.args),
        "kwargs": dict(message.kwargs),
        # The custom headers alone, as Celery's Context keeps them (None when there are none).
        "headers": dict(message.headers) or None,
        "called_directly": False,
        "is_eager": False,
        "callbacks": list(message.callbacks) or None,
        "errbacks": list(message.errbacks) or None,
        "chain": list(message.chain) or None,
        "chord": message.chord,
    }


def plain_number(value: float | None) -> float | int | None:
    """Return ``value`` as an int when it is whole (as a Celery client sends limits)."""
    if value is None:
        return None
    return int(value) if float(value).is_integer() else value
