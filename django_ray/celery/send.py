"""Turn Celery call options into a ``TaskMessage`` (protocol v2), validating every option.

One builder serves ``compat``'s ``Task.apply_async``, ``app.send_task`` and retries, the
canvas (``django_ray.celery.canvas``: producers and the worker's follow-ups) and the
periodic scheduler, so an option means the same thing wherever it is given. The settings
and the task's own defaults come from the sending side (``django_ray.celery.client``). An
option we cannot honour raises that side's ``NotSupported`` naming it; none is dropped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from django_ray.celery import client
from django_ray.celery.routes import route
from django_ray.message import KNOWN_HEADERS, TaskMessage, new_task_id, normalize_arguments

__all__ = [
    "SEND_OPTIONS",
    "build_message",
    "check_options",
    "custom_headers",
    "expires_at",
    "parse_moment",
    "to_django_priority",
    "wire_signature",
]

# Options a caller may pass to apply_async / send_task / Signature.set.
SEND_OPTIONS = frozenset(
    {
        "countdown",
        "eta",
        "expires",
        "queue",
        "priority",
        "task_id",
        "headers",
        "link",
        "link_error",
        "ignore_result",
        "time_limit",
        "soft_time_limit",
        "shadow",
        # Set by canvas, retries and the worker; accepted from signature dicts too.
        "retries",
        "root_id",
        "parent_id",
        "group_id",
        "group_index",
        "chord",
        "chain",
        "reply_to",
    }
)
# Keys Celery itself stores in a frozen signature's options; they steer nothing here.
PASSIVE_OPTIONS = frozenset({"stamped_headers", "stamps", "replaced_task_nesting", "subtask_type"})
# Celery options accepted only with the value that matches what django-ray always does.
FIXED_OPTIONS: dict[str, Any] = {"retry": True, "serializer": "json", "add_to_parent": True}


def build_message(
    name: str,
    args: Any,
    kwargs: Any,
    options: Mapping[str, Any],
    *,
    conf: Any = None,
    task: Any = None,
    parent: TaskMessage | None = None,
) -> TaskMessage:
    """Return the ``TaskMessage`` that ``apply_async(args, kwargs, **options)`` publishes.

    ``conf`` (Celery's settings) and ``task`` (an object with Celery's task options, if
    ``name`` is one the sender declares) default to what the current client looks up for
    ``name``; ``task`` supplies its execution defaults
    (queue, priority, time limits, ignore_result, expires); ``parent`` is the message
    whose completion sends this one (a chain step, a callback): its id becomes
    ``parent_id`` and its root ``root_id`` (and, with ``task_inherit_parent_priority``,
    its priority is kept unless one is given).
    """
    if conf is None:
        conf, found = client.current().lookup(name)
        task = task if task is not None else found
    check_options(options)
    try:
        args, kwargs = normalize_arguments(list(args or ()), dict(kwargs or {}))
    except TypeError as e:
        raise TypeError(f"Arguments of task {name!r} must be JSON-serializable: {e}") from e
    # An option given as None unsets the task's default, as in Celery (dict(preopts, **options)).
    opts = {k: v for k, v in {**_task_defaults(task), **options}.items() if v is not None}
    if "queue" not in opts or "priority" not in opts:
        routed = route(conf.task_routes, name, args, kwargs, opts, task)
        opts = {**routed, **opts}
    hard, soft = opts.get("time_limit"), opts.get("soft_time_limit")
    if hard and soft and soft > hard:
        raise ValueError(
            f"soft_time_limit ({soft!r}) must be less than or equal to time_limit ({hard!r})."
        )
    now = timezone.now()
    task_id = opts.get("task_id") or new_task_id()
    root_id, parent_id = _lineage(opts, parent)
    return TaskMessage(
        id=str(task_id),
        task=name,
        args=args,
        kwargs=kwargs,
        queue=opts.get("queue") or conf.task_default_queue,
        priority=_priority(opts, conf, parent),
        eta=_eta(opts, now),
        expires=expires_at(opts.get("expires"), now),
        retries=int(opts.get("retries") or 0),
        time_limit=hard,
        soft_time_limit=soft,
        root_id=root_id or str(task_id),
        parent_id=parent_id,
        group=opts.get("group_id"),
        group_index=opts.get("group_index"),
        callbacks=_signatures(opts.get("link")),
        errbacks=_signatures(opts.get("link_error")),
        chain=tuple(wire_signature(s) for s in opts.get("chain") or ()),
        chord=wire_signature(opts["chord"]) if opts.get("chord") else None,
        ignore_result=opts.get("ignore_result"),
        shadow=opts.get("shadow"),
        reply_to=opts.get("reply_to"),
        headers=custom_headers(opts.get("headers")),
    )


def check_options(options: Mapping[str, Any]) -> None:
    """Raise ``NotSupported`` for an option django-ray does not honour."""
    for key, value in options.items():
        if value is None or key in SEND_OPTIONS or key in PASSIVE_OPTIONS:
            continue
        if key in FIXED_OPTIONS and value == FIXED_OPTIONS[key]:
            continue
        if key in FIXED_OPTIONS:
            raise client.unsupported(
                f"Option {key}={value!r} is not supported by django-ray; only "
                f"{key}={FIXED_OPTIONS[key]!r} is (django-ray always behaves that way)."
            )
        raise client.unsupported(
            f"Option {key!r} is not supported by django-ray; see the supported options "
            "in docs/celery-migration.md."
        )


def to_django_priority(value: Any) -> int:
    """Map a Celery priority (0-9) onto Django's -100..100, as the broker would order it.

    On Redis Celery serves 0 first; on RabbitMQ (and django://) 9 runs first. The result
    is what ``transport.from_broker_priority`` gives for a real Celery client's message.
    """
    from django_ray import conf
    from django_ray.transports.kinds import kind_of

    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 9:
        raise ValueError(
            f"priority must be an integer from 0 to 9 (Celery's scale), not {value!r}."
        )
    return kind_of(conf.broker_url()).from_celery_priority(value)


def wire_signature(sig: Any) -> dict[str, Any]:
    """Return ``sig`` (a Signature or dict) as the plain JSON dict Celery puts on the wire."""
    try:
        return json.loads(json.dumps(sig, default=_json_default, allow_nan=False))  # type: ignore[no-any-return]
    except (TypeError, ValueError) as e:
        raise TypeError(f"Signature {sig!r} is not JSON-serializable: {e}") from e


def _task_defaults(task: Any) -> dict[str, Any]:
    if task is None:
        return {}
    values = {
        "queue": task.queue,
        "priority": task.priority,
        "time_limit": task.time_limit,
        "soft_time_limit": task.soft_time_limit,
        "ignore_result": task.ignore_result,
        "expires": task.expires,
    }
    return {k: v for k, v in values.items() if v is not None}


def _lineage(opts: Mapping[str, Any], parent: TaskMessage | None) -> tuple[str | None, str | None]:
    if parent is not None:
        return parent.root_id or parent.id, parent.id
    root_id, parent_id = opts.get("root_id"), opts.get("parent_id")
    request = client.current().current_request()
    if request is not None:
        # Sent from inside a running task: Celery links it to that task's workflow.
        root_id = root_id or request.root_id or request.id
        parent_id = parent_id or request.id
    return root_id, parent_id


def _priority(opts: Mapping[str, Any], conf: Any, parent: TaskMessage | None) -> int:
    value = opts.get("priority")
    if value is not None:
        return to_django_priority(value)
    if conf.task_inherit_parent_priority:
        # The sending task's priority: the message that finished, or the one running.
        request = client.current().current_request()
        running = getattr(request, "message", None) if request is not None else None
        source = parent or running
        if source is not None:
            return source.priority
    value = conf.task_default_priority
    return to_django_priority(value) if value is not None else 0


def _eta(opts: Mapping[str, Any], now: datetime) -> datetime | None:
    countdown = opts.get("countdown")
    if countdown is not None:
        if not isinstance(countdown, int | float) or isinstance(countdown, bool):
            raise TypeError(f"countdown must be a number of seconds, not {countdown!r}.")
        return now + timedelta(seconds=countdown)
    return parse_moment(opts.get("eta"), "eta")


def expires_at(value: Any, now: datetime) -> datetime | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return now + timedelta(seconds=value)
    return parse_moment(value, "expires")


def parse_moment(value: Any, option: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as e:
            raise ValueError(f"{option} {value!r} is not an ISO-8601 date and time.") from e
    if not isinstance(value, datetime):
        raise TypeError(f"{option} must be a datetime, not {value!r}.")
    if timezone.is_naive(value):
        value = timezone.make_aware(value)
    return value


def _signatures(value: Any) -> tuple[dict[str, Any], ...]:
    if not value:
        return ()
    if isinstance(value, Mapping):
        value = [value]
    return tuple(wire_signature(s) for s in value)


def custom_headers(value: Any) -> dict[str, Any]:
    if not value:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"headers must be a dict, not {value!r}.")
    reserved = sorted(set(value) & KNOWN_HEADERS)
    if reserved:
        raise client.unsupported(
            f"Header(s) {reserved!r} are protocol headers that django-ray sets itself; "
            "pass the matching option (e.g. countdown=, task_id=) instead."
        )
    _, normal = normalize_arguments([], dict(value))
    return normal


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")
