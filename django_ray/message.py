"""The one task model, ``TaskMessage``, and its wire format (Celery protocol v2, JSON).

Our producers and a real Celery client put the same thing on the broker: headers
(``task``, ``id``, ``eta``, ``expires``, ``retries``, ``timelimit``, ``root_id``,
``parent_id``, ``group``, ...) and a JSON body ``[args, kwargs, embed]``. Decoding never
unpickles: anything that is not ``application/json`` is refused before it is read.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from django.utils.json import normalize_json

from django_ray.exceptions import MalformedMessage

__all__ = [
    "CONTENT_TYPE",
    "KNOWN_HEADERS",
    "MAX_HEADER_BYTES",
    "TaskMessage",
    "decode",
    "new_task_id",
]

CONTENT_TYPE = "application/json"
# Headers we read ourselves; anything else a client sends is kept in ``headers``.
KNOWN_HEADERS = frozenset(
    {
        "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index",
        "retries", "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr",
        "origin", "ignore_result", "replaced_task_nesting", "stamped_headers", "stamps",
        "django_ray_priority", "django_ray_backend",
    }
)  # fmt: skip
# Refuse messages whose headers alone exceed this (a broken or hostile producer).
MAX_HEADER_BYTES = 256 * 1024
# What a TaskRecord column can hold on every supported database: ids, names and queues
# are varchar(255), counters int4; times stay well inside every backend's range.
MAX_NAME_LENGTH = 255
MAX_INT4 = 2**31 - 1
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
EMBED_KEYS = ("callbacks", "errbacks", "chain", "chord")


def new_task_id() -> str:
    """Return a fresh task id (a UUID4 string, as Celery and django-tasks-db use)."""
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskMessage:
    """One task to run, whoever produced it (Django Tasks, compat.celery or real Celery)."""

    id: str
    task: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    queue: str = "default"
    # Django's scale: -100..100, higher runs first. Brokers get it mapped to their own.
    priority: int = 0
    eta: datetime | None = None
    expires: datetime | None = None
    retries: int = 0
    time_limit: float | None = None
    soft_time_limit: float | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    callbacks: tuple[dict[str, Any], ...] = ()
    errbacks: tuple[dict[str, Any], ...] = ()
    chain: tuple[dict[str, Any], ...] = ()
    chord: dict[str, Any] | None = None
    ignore_result: bool | None = None
    # The Django Tasks backend alias; None for a message a Celery client sent.
    backend: str | None = None
    shadow: str | None = None
    origin: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)
    delivery_info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_django_task(self) -> bool:
        return self.backend is not None

    def replace(self, **changes: Any) -> TaskMessage:
        return replace(self, **changes)

    # -- encoding -----------------------------------------------------------------

    def wire_headers(self) -> dict[str, Any]:
        """Return protocol-v2 headers for this message."""
        headers: dict[str, Any] = dict(self.headers)
        headers.update(
            {
                "lang": "py",
                "task": self.task,
                "id": self.id,
                "shadow": self.shadow,
                "eta": _iso(self.eta),
                "expires": _iso(self.expires),
                "group": self.group,
                "group_index": self.group_index,
                "retries": self.retries,
                "timelimit": [self.time_limit, self.soft_time_limit],
                "root_id": self.root_id or self.id,
                "parent_id": self.parent_id,
                "argsrepr": _short_repr(tuple(self.args)),
                "kwargsrepr": _short_repr(dict(self.kwargs)),
                "origin": self.origin or f"gen{os.getpid()}@{socket.gethostname()}",
                "ignore_result": self.ignore_result,
                "replaced_task_nesting": 0,
                "stamped_headers": None,
                "stamps": {},
                "django_ray_priority": self.priority,
            }
        )
        if self.backend is not None:
            headers["django_ray_backend"] = self.backend
        return headers

    def wire_body(self) -> str:
        """Return the JSON body ``[args, kwargs, embed]``."""
        embed = {
            "callbacks": list(self.callbacks) or None,
            "errbacks": list(self.errbacks) or None,
            "chain": list(self.chain) or None,
            "chord": self.chord,
        }
        return json.dumps([list(self.args), dict(self.kwargs), embed])


def decode(
    *,
    headers: Mapping[str, Any] | None,
    body: bytes | str,
    content_type: str | None,
    properties: Mapping[str, Any] | None = None,
    delivery_info: Mapping[str, Any] | None = None,
    broker_priority: int | None = None,
    queue: str | None = None,
) -> TaskMessage:
    """Build a ``TaskMessage`` from a protocol-v2 message, or raise ``MalformedMessage``.

    ``broker_priority`` is the message priority already mapped to Django's scale by the
    transport (used when the producer did not send ``django_ray_priority``).
    """
    headers = dict(headers or {})
    properties = dict(properties or {})
    task_id = headers.get("id") if isinstance(headers.get("id"), str) else None
    name = headers.get("task") if isinstance(headers.get("task"), str) else None

    def bad(reason: str) -> MalformedMessage:
        # Only an id and name a task record can hold go with the refusal (to record it).
        return MalformedMessage(
            reason, task_id=task_id if _storable(task_id) else None,
            task_name=name if _storable(name) else None,
        )  # fmt: skip

    if (content_type or "").split(";")[0].strip().lower() != CONTENT_TYPE:
        raise bad(f"Refused content type {content_type!r}: only {CONTENT_TYPE!r} is accepted.")
    if len(json.dumps(headers, default=str)) > MAX_HEADER_BYTES:
        raise bad(f"Headers exceed {MAX_HEADER_BYTES} bytes.")
    if not name:
        raise bad("Message has no 'task' header: it is not a protocol-v2 task message.")
    if not task_id:
        raise bad("Message has no 'id' header.")
    for label, value in (("Task id", task_id), ("Task name", name)):
        if not _storable(value):
            raise bad(f"{label} must be at most {MAX_NAME_LENGTH} characters, without NUL.")

    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(f"Body is not valid JSON: {e}.") from e
    except RecursionError:
        raise bad("Body is nested too deeply to decode.") from None
    if _has_nul(body) and _holds_nul(payload):
        # PostgreSQL cannot store U+0000 in JSON or text: refuse it on every database alike.
        raise bad("Body holds a NUL character (U+0000), which the task record cannot store.")
    if isinstance(payload, dict):
        raise bad(
            "Body is a dict (protocol v1); only protocol v2 [args, kwargs, embed] is accepted."
        )
    if not isinstance(payload, list) or len(payload) != 3:
        raise bad("Body must be a JSON array [args, kwargs, embed].")
    args, kwargs, embed = payload
    if not isinstance(args, list):
        raise bad(f"Body args must be a list, not {type(args).__name__}.")
    if not isinstance(kwargs, dict):
        raise bad(f"Body kwargs must be an object, not {type(kwargs).__name__}.")
    if embed is None:
        embed = {}
    if not isinstance(embed, dict):
        raise bad(f"Body embed must be an object, not {type(embed).__name__}.")

    try:
        eta = _parse_time(headers.get("eta"))
        expires = _parse_time(headers.get("expires"))
    except ValueError as e:
        raise bad(str(e)) from e

    hard, soft = _time_limits(headers.get("timelimit"))
    priority = headers.get("django_ray_priority")
    if not isinstance(priority, int) or isinstance(priority, bool):
        priority = broker_priority or 0
    retries = headers.get("retries") or 0
    if not isinstance(retries, int) or not 0 <= retries <= MAX_INT4:
        raise bad(f"Header 'retries' must be an integer from 0 to {MAX_INT4}, not {retries!r}.")
    group_index = _typed(headers.get("group_index"), int)
    if group_index is not None and not 0 <= group_index <= MAX_INT4:
        raise bad(f"Header 'group_index' must be from 0 to {MAX_INT4}, not {group_index!r}.")
    ids = {key: _str_or_none(headers.get(key)) for key in ("root_id", "parent_id", "group")}
    for key, value in ids.items():
        if value is not None and not _storable(value):
            raise bad(f"Header {key!r} must be at most {MAX_NAME_LENGTH} characters, no NUL.")
    delivery = dict(delivery_info or properties.get("delivery_info") or {})
    queue = queue or delivery.get("routing_key") or "default"
    if not _storable(queue):
        raise bad(f"Queue name must be a string of at most {MAX_NAME_LENGTH} characters.")
    backend = _str_or_none(headers.get("django_ray_backend"))
    if backend is not None and len(backend) > 64:
        raise bad("Header 'django_ray_backend' is longer than 64 characters.")
    extra = {k: v for k, v in headers.items() if k not in KNOWN_HEADERS}
    chord = embed.get("chord")
    if chord is not None:
        _check_signature(chord, "chord", bad)
    return TaskMessage(
        id=task_id,
        task=name,
        args=tuple(args),
        kwargs=kwargs,
        queue=queue,
        priority=max(-100, min(100, priority)),
        eta=eta,
        expires=expires,
        retries=retries,
        time_limit=hard,
        soft_time_limit=soft,
        root_id=ids["root_id"],
        parent_id=ids["parent_id"],
        group=ids["group"],
        group_index=group_index,
        callbacks=_signatures(embed.get("callbacks"), "callbacks", bad),
        errbacks=_signatures(embed.get("errbacks"), "errbacks", bad),
        chain=_signatures(embed.get("chain"), "chain", bad),
        chord=chord,
        ignore_result=_typed(headers.get("ignore_result"), bool),
        backend=backend,
        shadow=_str_or_none(headers.get("shadow")),
        origin=_str_or_none(headers.get("origin")),
        correlation_id=_str_or_none(properties.get("correlation_id")) or task_id,
        reply_to=_str_or_none(properties.get("reply_to")),
        headers=extra,
        delivery_info=delivery,
    )


def normalize_arguments(args: Any, kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Return JSON-normal args and kwargs, raising ``TypeError`` for non-JSON values."""
    try:
        normal = normalize_json({"args": args, "kwargs": kwargs})
        # A real round trip catches what normalize_json lets through (e.g. non-str keys).
        normal = json.loads(json.dumps(normal, allow_nan=False))
    except ValueError as e:
        raise TypeError(f"Task arguments must be JSON-serializable: {e}") from e
    return tuple(normal["args"]), normal["kwargs"]


def _signatures(value: Any, key: str, bad: Any) -> tuple[dict[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise bad(f"Embed {key!r} must be a list of signature objects.")
    for sig in value:
        _check_signature(sig, key, bad)
    return tuple(value)


# Canvas nesting deeper than this is refused (Celery's own canvases are a few levels deep).
MAX_SIGNATURE_DEPTH = 32


def _check_signature(sig: Any, key: str, bad: Any, depth: int = 0) -> None:
    """Refuse a signature the worker could not apply after the task ran (Celery's shape:
    ``task`` named, ``args`` a list, ``kwargs`` and ``options`` objects; a group's or
    chain's ``kwargs.tasks`` and a chord's ``kwargs.header``/``body`` signatures too)."""
    if depth > MAX_SIGNATURE_DEPTH:
        raise bad(f"Embed {key!r} nests signatures more than {MAX_SIGNATURE_DEPTH} deep.")
    if not isinstance(sig, dict):
        raise bad(f"Embed {key!r} must hold signature objects, not {type(sig).__name__}.")
    if not isinstance(sig.get("task"), str) or not sig["task"]:
        raise bad(f"Embed {key!r} holds a signature without a task name.")
    for name, kind in (("args", list), ("kwargs", dict), ("options", dict)):
        if sig.get(name) is not None and not isinstance(sig[name], kind):
            raise bad(f"Embed {key!r}: signature {name!r} must be a {kind.__name__}.")
    kwargs = sig.get("kwargs") or {}
    subtask_type = sig.get("subtask_type")
    if subtask_type in ("group", "chain"):
        parts = kwargs.get("tasks")
        if not isinstance(parts, list):
            raise bad(f"Embed {key!r}: a {subtask_type} signature needs a list of tasks.")
        for part in parts:
            _check_signature(part, key, bad, depth + 1)
    elif subtask_type == "chord":
        header, body = kwargs.get("header"), kwargs.get("body")
        if body is None:
            raise bad(f"Embed {key!r}: a chord signature needs a body.")
        _check_signature(body, key, bad, depth + 1)
        for part in header if isinstance(header, list) else [header]:
            _check_signature(part, key, bad, depth + 1)


def _parse_time(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"Time header must be an ISO-8601 string, not {value!r}.")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as e:
        raise ValueError(f"Time header {value!r} is not ISO-8601.") from e
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        in_utc = parsed.astimezone(UTC)
    except OverflowError:
        in_utc = None
    if in_utc is None or not EARLIEST <= in_utc < LATEST:
        raise ValueError(
            f"Time header {value!r} is outside {EARLIEST.year}-{LATEST.year}, "
            "the range a task record can hold."
        )
    return parsed


def _time_limits(value: Any) -> tuple[float | None, float | None]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        return None, None
    hard, soft = value
    return (
        float(hard) if isinstance(hard, int | float) and hard > 0 else None,
        float(soft) if isinstance(soft, int | float) and soft > 0 else None,
    )


def _storable(value: Any) -> bool:
    """Return True if ``value`` fits a task record's varchar(255) on every database."""
    return isinstance(value, str) and len(value) <= MAX_NAME_LENGTH and "\x00" not in value


def _has_nul(body: bytes | str) -> bool:
    """Cheap first look: can the JSON text hold an escaped NUL at all?"""
    if isinstance(body, bytes):
        return b"\\u0000" in body
    return "\\u0000" in body


def _holds_nul(value: Any) -> bool:
    """Return True if a string (or key) anywhere in ``value`` holds U+0000."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
    return False


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _typed(value: Any, kind: type) -> Any:
    return value if isinstance(value, kind) else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 1024 else text[:1021] + "..."
