"""Settle: the one place that turns a verdict on an attempt into its recorded outcome.

A task adapter (``django_exec``, ``celery_exec``, ``compat_exec``) only calls the task and
returns a ``Verdict``: succeeded, retry, failed, rejected, ignored or terminated. ``settle()``
turns it into the ``TaskRecord`` transition, the Celery result-store write, the follow-up
messages (a retry, callbacks, the next chain step, errbacks, a chord's end) and the
``Outcome`` the worker acknowledges, then runs the adapter's ``after`` (Django's
``task_finished`` signal, a Celery-style task's hooks).

What a task kind leaves to settle is said by ``Verdict.results``:

* ``"record"``: a Django task: the record alone (no Celery result, no canvas);
* ``"ours"``: a Celery-style task run without Celery (``compat.celery``): settle writes the
  result store and builds the follow-ups;
* ``"tracer"``: a real Celery task: Celery's own tracer wrote its result backend and sent
  its follow-ups; settle writes the record (and publishes our own retry or requeue).

Attempts decided outside a task end here too, through ``failed``, ``revoked``, ``lost`` and
``time_limit``: the refusal paths (an unknown name, a malformed message, options Ray
refuses), the guard in ``execute()`` (anything that escaped an adapter), the Ray runners
(a process that died, a hard time limit, a client's terminate) and the guards before a run
(expired, revoked). Each reads the record fresh when not given one: a record that already
finished means a duplicate delivery, and nothing changes.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from django_ray import registry
from django_ray.celery import results
from django_ray.celery.follow_ups import on_success
from django_ray.exceptions import (
    DeliveryLimitExceeded,
    NotRegistered,
    RequeueLimitExceeded,
    TaskTimeLimitExceeded,
    WorkerLost,
)
from django_ray.message import TaskMessage
from django_ray.runtime.bootstrap import check_connections
from django_ray.runtime.values import error_info

logger = logging.getLogger(__name__)

__all__ = [
    "DEAD_LETTER_SUFFIX",
    "MAX_REJECT_REQUEUES",
    "REQUEUE_HEADER",
    "Outcome",
    "Verdict",
    "dead_letter",
    "duplicate",
    "failed",
    "lost",
    "revoked",
    "settle",
    "superseded",
    "time_limit",
]

# Reject(requeue=True) puts a message back at most this many times, then it FAILS: a task
# that always rejects would otherwise loop between the broker and the workers forever.
MAX_REJECT_REQUEUES = 3
REQUEUE_HEADER = "django_ray_requeues"

State = Literal["succeeded", "retry", "failed", "rejected", "ignored", "terminated"]
Results = Literal["record", "ours", "tracer"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What became of one delivery of a message."""

    task_id: str
    status: str
    # Messages to publish before the delivery is acknowledged.
    publish: tuple[TaskMessage, ...] = ()
    # True when the record had already finished: the message was a duplicate delivery.
    duplicate: bool = False
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """What one attempt of a task came to, as its adapter saw it."""

    state: State
    results: Results
    value: Any = None  # succeeded: the JSON value
    error: BaseException | None = None  # failed / retry / rejected: the cause, for the record
    traceback: str | None = None  # a better traceback text than ``error``'s (Celery's)
    # retry: the next attempt, published by settle (None: the tracer published it; then
    # ``eta`` is when it runs).
    again: TaskMessage | None = None
    eta: datetime | None = None
    reason: BaseException | None = None  # retry: the exception given to retry(), if any
    retry_traceback: str | None = None  # retry: the text stored with the RETRY state
    requeue: bool = False  # rejected: put the message back
    store_result: bool = True  # "ours": write the result (False: ignore_result)
    after: Callable[[], None] | None = None  # run once the outcome is written


def settle(message: TaskMessage, record: Any, verdict: Verdict) -> Outcome:
    """Write ``verdict`` for ``message``'s attempt and return what the worker does next."""
    outcome = _SETTLERS[verdict.state](message, record, verdict)
    if verdict.after is not None and not outcome.duplicate:
        try:
            verdict.after()
        except Exception:
            logger.exception("After settling %s [%s]: a hook failed.", message.task, message.id)
    return outcome


# -- one settler per state ------------------------------------------------------------------


def _succeeded(message: TaskMessage, record: Any, verdict: Verdict) -> Outcome:
    follow_ups: list[TaskMessage] = []
    children: list[str] = []
    if verdict.results == "ours":
        follow_ups = _guarded(message, "callbacks not sent", _on_success, message, verdict.value)
        children = [m.id for m in follow_ups]
    elif verdict.results == "tracer":
        children = _embedded_ids(message)
    if not record.mark_successful(verdict.value, children=children):
        return superseded(message, record)
    if verdict.results == "ours":
        follow_ups += _guarded(
            message, "storing the result failed", _store().done, message, verdict.value,
            children=children, store=verdict.store_result,
        )  # fmt: skip
    return Outcome(task_id=message.id, status=record.status, publish=tuple(follow_ups))


def _failed(message: TaskMessage, record: Any, verdict: Verdict) -> Outcome:
    error = verdict.error if verdict.error is not None else RuntimeError("no error recorded")
    info = error_info(error)
    if verdict.traceback is not None:
        info["traceback"] = verdict.traceback
    if not record.mark_failed(info):
        return superseded(message, record)
    follow_ups: list[TaskMessage] = []
    if verdict.results == "ours":
        follow_ups = _guarded(
            message, "storing the failure failed", _store().failed, message,
            results.as_celery(error, message), info["traceback"] or None,
            store=verdict.store_result,
        )  # fmt: skip
    return Outcome(
        task_id=message.id, status=record.status, publish=tuple(follow_ups),
        error=info["exception_class_path"],
    )  # fmt: skip


def _retry(message: TaskMessage, record: Any, verdict: Verdict) -> Outcome:
    again = verdict.again
    retries = again.retries if again is not None else message.retries + 1
    eta = again.eta if again is not None else verdict.eta
    info = error_info(verdict.error) if verdict.error is not None else None
    if not record.mark_retrying(info, retries=retries, eta=eta):
        return superseded(message, record)
    if verdict.results == "ours":
        _guarded(
            message, "storing the retry failed", _store().retried, message, verdict.reason,
            verdict.retry_traceback,
        )  # fmt: skip
    return Outcome(
        task_id=message.id, status=record.status, publish=(again,) if again is not None else ()
    )


def _rejected(message: TaskMessage, record: Any, verdict: Verdict) -> Outcome:
    """``Reject(requeue=True)`` puts the message back, a bounded number of times (counted in
    its ``django_ray_requeues`` header); ``requeue=False`` fails the task."""
    if verdict.requeue:
        count = message.headers.get(REQUEUE_HEADER)
        count = count if isinstance(count, int) and not isinstance(count, bool) else 0
        if count < MAX_REJECT_REQUEUES:
            if not record.mark_ready():
                return superseded(message, record)
            again = message.replace(headers={**message.headers, REQUEUE_HEADER: count + 1})
            return Outcome(task_id=message.id, status=record.status, publish=(again,))
        error = RequeueLimitExceeded(
            f"Task {message.task!r} [{message.id}] was rejected with requeue=True "
            f"{count + 1} times in a row; raise Reject(requeue=False), or "
            "self.retry(countdown=...) to try again later."
        )
        logger.error("%s", error)
        return failed(message, error, record=record, with_traceback=False, reason="Reject")
    cause = verdict.error if verdict.error is not None else RuntimeError("rejected")
    if not record.mark_failed(error_info(cause)):
        return superseded(message, record)
    return Outcome(task_id=message.id, status=record.status, error="Reject")


def _ignored(message: TaskMessage, record: Any, verdict: Verdict) -> Outcome:
    # E.g. Celery's Task.replace(): its replacement runs under the same id.
    if not record.mark_ready():
        return superseded(message, record)
    return Outcome(task_id=message.id, status=record.status)


def _terminated(message: TaskMessage, record: Any, verdict: Verdict) -> Outcome:
    logger.warning("Terminated %s [%s] at a client's request.", message.task, message.id)
    if verdict.results == "tracer":  # Celery's backend already holds REVOKED
        if not record.mark_revoked("terminated"):
            return superseded(message, record)
        return Outcome(task_id=message.id, status=record.status, error="terminated")
    return revoked(message, "terminated", record=record)


_SETTLERS: dict[State, Callable[[TaskMessage, Any, Verdict], Outcome]] = {
    "succeeded": _succeeded,
    "retry": _retry,
    "failed": _failed,
    "rejected": _rejected,
    "ignored": _ignored,
    "terminated": _terminated,
}


# -- attempts decided outside a task ----------------------------------------------------------


def duplicate(record: Any) -> Outcome:
    """The outcome of a delivery whose record had already finished: nothing changes."""
    return Outcome(task_id=record.id, status=record.status, duplicate=True)


def superseded(message: TaskMessage, record: Any) -> Outcome:
    """The outcome of an attempt whose record another attempt or worker moved on meanwhile
    (the fence refused the write): logged and dropped; the record stays as it is."""
    logger.warning(
        "Task %s [%s]: the record moved on to %s meanwhile (a later delivery, or another "
        "worker); this attempt's outcome is dropped.", message.task, message.id, record.status,
    )  # fmt: skip
    return duplicate(record)


def failed(
    message: TaskMessage,
    error: BaseException,
    *,
    record: Any = None,
    with_traceback: bool = True,
    reason: str | None = None,
) -> Outcome:
    """Record FAILED with ``error`` (unless already finished) and tell the Celery client."""
    record = _fresh(message) if record is None else record
    if record.is_finished:
        return duplicate(record)
    verdict = Verdict(
        state="failed", results="ours", error=error, traceback=None if with_traceback else ""
    )
    outcome = settle(message, record, verdict)
    if reason is None:
        return outcome
    return Outcome(
        task_id=outcome.task_id, status=outcome.status, publish=outcome.publish, error=reason
    )


def revoked(message: TaskMessage, reason: str, *, record: Any = None) -> Outcome:
    """Record REVOKED with ``reason`` ("expired", "revoked", "terminated")."""
    record = _fresh(message) if record is None else record
    if record.is_finished:
        return duplicate(record)
    if not record.mark_revoked(reason):
        return superseded(message, record)
    publish = tuple(results.mirror(record, message))
    return Outcome(task_id=message.id, status=record.status, publish=publish, error=reason)


DEAD_LETTER_SUFFIX = ".dead-letter"


def dead_letter(message: TaskMessage, record: Any) -> Outcome:
    """Record FAILED a message that never reached an outcome, and park it in its dead-letter
    queue (``<queue>.dead-letter``: nothing consumes it; an operator may send it back)."""
    starts = len(record.worker_ids) - len(record.errors)
    last = record.worker_ids[-1] if record.worker_ids else "?"
    error = DeliveryLimitExceeded(
        f"Task {message.task!r} [{message.id}] was delivered {starts} times without finishing "
        f"(last worker {last}): its worker died each time. It is dead-lettered to queue "
        f"{message.queue + DEAD_LETTER_SUFFIX!r}."
    )
    logger.error("%s", error)
    outcome = failed(message, error, record=record, with_traceback=False, reason="dead-lettered")
    parked = message.replace(queue=message.queue + DEAD_LETTER_SUFFIX, eta=None)
    return Outcome(
        task_id=outcome.task_id, status=outcome.status, publish=(*outcome.publish, parked),
        error=outcome.error,
    )  # fmt: skip


def time_limit(message: TaskMessage, worker_id: str) -> Outcome:
    """Record FAILED for an attempt the runner stopped at its hard time limit."""
    from django_ray.models import TaskRecord

    record = _attempt(message, worker_id)
    if not isinstance(record, TaskRecord):
        return record
    exc = TaskTimeLimitExceeded(f"Task {message.id} exceeded its {message.time_limit}s time limit.")
    return failed(message, exc, record=record, reason="time limit")


def lost(message: TaskMessage, worker_id: str, reason: str) -> Outcome:
    """Record an attempt whose process died: retry it if attempts remain, else FAILED."""
    from django.utils import timezone

    from django_ray.models import TaskRecord

    record = _attempt(message, worker_id)
    if not isinstance(record, TaskRecord):
        return record
    exc = WorkerLost(f"The process running task {message.id} died: {reason}")
    if record.attempts < max_attempts(message):
        logger.warning("Task %s [%s] lost (%s); retrying.", message.task, message.id, reason)
        again = message.replace(retries=message.retries + 1, eta=timezone.now())
        return settle(
            message, record, Verdict(state="retry", results="record", error=exc, again=again)
        )
    logger.error("Task %s [%s] lost (%s); FAILED.", message.task, message.id, reason)
    return failed(message, exc, record=record, reason=reason)


def max_attempts(message: TaskMessage) -> int:
    """Return how many attempts ``message``'s task allows (1 when it is not registered)."""
    try:
        obj = registry.resolve(message.task).obj
    except NotRegistered:
        return 1
    if hasattr(obj, "max_attempts"):
        return int(obj.max_attempts or 1)
    retries = getattr(obj, "max_retries", 0)
    return 1 + (retries if isinstance(retries, int) and not isinstance(retries, bool) else 0)


# -- helpers -----------------------------------------------------------------------------------


def _store() -> Any:
    return results.store()


def _on_success(message: TaskMessage, value: Any) -> list[TaskMessage]:
    return on_success(message, value, store=_store())


def _guarded(
    message: TaskMessage, what: str, call: Callable[..., Any], *args: Any, **kw: Any
) -> Any:
    """Call a result-store write or follow-up builder; its failure never changes the outcome.

    The record is the system of record: a result backend outage or a signature that cannot
    be applied is logged, and the outcome stands.
    """
    try:
        return call(*args, **kw) or []
    except Exception as e:
        logger.error(
            "Task %s [%s]: %s: %s", message.task, message.id, what,
            "".join(traceback.format_exception_only(e)).strip(),
        )  # fmt: skip
        return []


def _embedded_ids(message: TaskMessage) -> list[str]:
    """Return the ids of the callbacks and next chain step a Celery tracer sent."""
    signatures = [*message.callbacks, *message.chain[-1:]]
    ids = [(sig.get("options") or {}).get("task_id") for sig in signatures]
    return [i for i in ids if isinstance(i, str)]


def _attempt(message: TaskMessage, worker_id: str) -> Any:
    """Return the record of the attempt a runner stopped or lost, or the Outcome if none.

    The runner may have stopped it before its process recorded the attempt (a slow job
    start, a process that died at once): the attempt is recorded now.
    """
    from django_ray.models import TaskStatus

    record = _fresh(message)
    if record.is_finished:
        return duplicate(record)
    if record.status != TaskStatus.RUNNING and not record.mark_running(worker_id):
        return superseded(message, record)  # another worker moved it on meanwhile
    return record


def _fresh(message: TaskMessage) -> Any:
    """Return the record of ``message`` as the database has it now."""
    from django_ray.records import record_for

    check_connections()
    return record_for(message)
