"""Celery-format results for unchanged Celery clients, and the revoked-id set.

``store()`` picks where a Celery client's ``AsyncResult`` looks: the project's Celery app
backend when Celery is installed and ``DJANGO_RAY["CELERY_APP"]`` names an app, else
Celery's Redis format written with redis-py from ``CELERY_RESULT_BACKEND``, else
``TaskRecord`` alone (``RecordStore``; the record is the system of record either way).
``mirror()`` copies a record's state there for outcomes decided outside a task (unknown
name, expired, revoked, malformed, time limit, lost) and returns what that outcome sends
on. Revoked ids are kept
durably as REVOKED records, so every worker process sees them; their Celery result is
written when their message comes up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from django_ray.celery import failures
from django_ray.celery import wire as fmt
from django_ray.celery.stores import CeleryAppStore, RecordStore, RedisStore, ResultStore
from django_ray.message import TaskMessage

logger = logging.getLogger(__name__)

__all__ = ["as_celery", "is_revoked", "mirror", "revoke", "store"]

_lock = threading.Lock()
_stores: dict[tuple[Any, ...], ResultStore] = {}
# Ids revoked in this process, newest last (the records keep them for every process).
_revoked: dict[str, None] = {}
MAX_REVOKED_IN_MEMORY = 50_000
CELERY_NAMES = fmt.CELERY_EXCEPTION_NAMES


def store() -> ResultStore:
    """Return the Celery result store of this process (``RecordStore`` when there is none)."""
    from django_ray import conf, registry

    app = registry.celery_app()
    url = conf.celery_result_backend()
    key = (id(app), url)
    with _lock:
        if key not in _stores:
            _stores[key] = _make_store(app, url)
        return _stores[key]


def _make_store(app: Any, url: str | None) -> ResultStore:
    from django_ray import conf

    if app is not None and not _is_disabled(app):
        return CeleryAppStore(app)
    if url and url.split("://", 1)[0] in {"redis", "rediss", "unix"}:
        return RedisStore(url, expires=conf.result_expires())
    if url:
        logger.warning(
            "Result backend %r needs Celery: set DJANGO_RAY['CELERY_APP'] to write to it.", url
        )
    return RecordStore()


def _is_disabled(app: Any) -> bool:
    return type(app.backend).__name__ == "DisabledBackend"


def mirror(record: Any, message: TaskMessage) -> list[TaskMessage]:
    """Write ``record``'s state where a Celery client's ``AsyncResult`` looks for it.

    Return the messages its outcome sends on (errbacks; the end of a chord it belongs to,
    joined through ``TaskRecord`` when there is no result store), for the worker to publish.
    """
    state = record.celery_state
    try:
        target = store()
        if state == "REVOKED":
            reason = (record.last_error or {}).get("exc_message") or ["revoked"]
            return target.revoked(message.id, str(reason[0]), message)
        if state == "FAILURE":
            exc = _exception(record, message)
            return target.failed(message, exc, _traceback(record), store=True)
        if state == "SUCCESS":
            return target.done(message, record.return_value, children=(), store=True)
    except Exception:
        # The record is the system of record; a result backend outage must not lose it.
        logger.exception("Could not write the Celery result of %s [%s].", message.task, message.id)
    return []


def is_revoked(task_id: str, *, check_database: bool = True) -> bool:
    """Return True if ``task_id`` was revoked before it started.

    ``check_database=False`` when the caller has just read the record and seen it is not
    REVOKED: only a revoke heard by this process since then is left to check.
    """
    if task_id in _revoked:
        return True
    if not check_database:
        return False
    from django_ray.models import TaskRecord, TaskStatus

    return TaskRecord.objects.filter(pk=task_id, status=TaskStatus.REVOKED).exists()


def revoke(task_ids: Iterable[str], *, reason: str = "revoked") -> list[str]:
    """Keep ``task_ids`` from starting: mark them REVOKED now; return the ids marked."""
    from django.db import IntegrityError, transaction

    from django_ray.models import TaskRecord, TaskStatus

    marked = []
    for task_id in task_ids:
        _remember_revoked(task_id)
        record = TaskRecord.objects.filter(pk=task_id).first()
        if record is None:
            try:
                with transaction.atomic():
                    record = TaskRecord.objects.create(id=task_id, task_name="", origin="celery")
            except IntegrityError:  # its message arrived meanwhile
                record = TaskRecord.objects.get(pk=task_id)
        # A running attempt finishes (Celery's revoke without terminate does the same).
        if record.is_finished or record.status == TaskStatus.RUNNING:
            continue
        # The Celery result is written when the message comes up (runtime.execute), as a
        # Celery worker does: a task already running on another worker is not misreported.
        # (A worker that started it meanwhile wins: the fenced write changes nothing.)
        if record.mark_revoked(reason):
            marked.append(task_id)
    return marked


def _remember_revoked(task_id: str) -> None:
    with _lock:
        _revoked[task_id] = None
        while len(_revoked) > MAX_REVOKED_IN_MEMORY:
            del _revoked[next(iter(_revoked))]


def as_celery(exc: BaseException, message: TaskMessage) -> BaseException:
    """Return ``exc`` as a Celery client knows it: ours under Celery's name, others as they are."""
    cls = type(exc)
    path = f"{cls.__module__}.{cls.__qualname__}"
    return _named(path, list(exc.args), message) if path in CELERY_NAMES else exc


def _exception(record: Any, message: TaskMessage) -> BaseException:
    """Rebuild the exception of ``record``'s last error, under Celery's name if it has one."""
    error = record.last_error or {}
    path = error.get("exception_class_path") or "builtins.Exception"
    return _named(path, list(error.get("exc_message") or []), message)


def _named(path: str, args: list[Any], message: TaskMessage) -> BaseException:
    """Return the exception at ``path`` (Celery's, for ours) with ``args``, as Celery stores it."""
    if path in CELERY_NAMES:
        name = CELERY_NAMES[path][1]
        # Celery stores NotRegistered(<task name>), TimeLimitExceeded(<seconds>) and
        # InvalidTaskError(<reason>) / WorkerLostError(<reason>).
        if name == "NotRegistered":
            args = [message.task]
        elif name == "TimeLimitExceeded":
            args = [fmt.plain_number(message.time_limit)] if message.time_limit else []
        else:
            args = args[:1]
    return failures.rebuild(path, args)


def _traceback(record: Any) -> str | None:
    text = (record.last_error or {}).get("traceback")
    return text or None
