"""Send ``TaskMessage``s: create their ``TaskRecord``s, then publish them or run them eagerly.

``send_signature`` does it for a workflow (freeze, messages, send) and returns the result
object the caller expects (the last step's for a chain, a ``GroupResult`` for a group).

Publishing is exactly what ``RayTaskBackend.enqueue`` does for a Django task: the record
and the message in one transaction (``publish`` waits for the commit on an external
broker). Eager mode (``task_always_eager``, ``apply()``) hands the same messages to the
sync runner, which runs ``django_ray.runtime.execute.execute`` as a worker would; the
messages an outcome asks to publish (a retry, the next chain step, callbacks, a chord
body) are run the same way, at once, depth first, as Celery's eager mode runs them.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from compat.celery import local
from compat.celery.config import check_producer_settings
from compat.celery.failures import exception_from_error
from compat.celery.result import AsyncResult, GroupResult, ResultBase
from django_ray.celery import results
from django_ray.celery.canvas import freeze, messages_from_signature, with_kwargs
from django_ray.celery.follow_ups import store_chord_sizes
from django_ray.enqueue import enqueue
from django_ray.message import TaskMessage

if TYPE_CHECKING:
    from compat.celery.app import Celery

__all__ = ["result_from_signature", "run_eagerly", "send", "send_signature"]


def send(
    messages: Sequence[TaskMessage],
    *,
    app: Celery | None = None,
    eager: bool | None = None,
    propagate: bool | None = None,
) -> bool:
    """Record and publish ``messages`` (or run them eagerly); return True if eager.

    ``eager=None`` follows ``task_always_eager``; ``propagate=None`` follows
    ``task_eager_propagates``.
    """
    app = app or local.get_current_app()
    check_producer_settings(app.conf)
    if eager is None:
        eager = bool(app.conf.task_always_eager)
    enqueue(messages, publish_messages=not eager)
    if eager:
        if propagate is None:
            propagate = bool(app.conf.task_eager_propagates)
        run_eagerly(messages, propagate=propagate)
    return eager


def send_signature(
    sig: Mapping[str, Any],
    *,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    eager: bool | None = None,
) -> AsyncResult | GroupResult:
    """Apply a signature or workflow: freeze it, send its messages, return its result."""
    if kwargs:
        sig = with_kwargs(dict(sig), kwargs)
    frozen = freeze(sig)
    messages = messages_from_signature(frozen, args_prefix=tuple(args))
    store_chord_sizes(results.store(), messages)
    send(messages, eager=eager)
    return result_from_signature(frozen)


def result_from_signature(sig: Mapping[str, Any]) -> AsyncResult | GroupResult:
    """Return the result object for a frozen signature (the last step's for a chain)."""
    kind = sig.get("subtask_type")
    if kind == "chain":
        result: Any = None
        for step in sig["kwargs"]["tasks"]:
            _root(step_result := result_from_signature(step)).parent = result
            result = step_result
        return result  # type: ignore[no-any-return]
    if kind == "group":
        tasks = sig["kwargs"]["tasks"]
        members = [AsyncResult(t["options"]["task_id"], task_name=t["task"]) for t in tasks]
        return GroupResult(sig["options"]["task_id"], members)
    if kind == "chord":
        body = result_from_signature(sig["kwargs"]["body"])
        _root(body).parent = result_from_signature(sig["kwargs"]["header"])
        return body
    return AsyncResult(sig["options"]["task_id"], task_name=sig.get("task"))


def _root(result: ResultBase) -> ResultBase:
    """Return the first result of a chain of parents (where a new parent goes)."""
    while result.parent is not None:
        result = result.parent
    return result


def run_eagerly(messages: Sequence[TaskMessage], *, propagate: bool) -> None:
    """Run ``messages`` and their follow-ups through the sync runner, in this process.

    With ``propagate``, the first task that failed has its exception raised (rebuilt from
    its record, with the task's traceback attached as a note) once all have run.
    """
    from django_ray.models import TaskRecord, TaskStatus
    from django_ray.runners.sync import SyncRunner

    runner = SyncRunner(worker_id=f"eager@{socket.gethostname()}-{os.getpid()}")
    pending = deque(_eager(m) for m in messages)
    failed: list[str] = []
    with local.eager_mode():
        while pending:
            runner.submit(pending.popleft(), None)
            for done in runner.poll():
                outcome = done.outcome
                if outcome is None:
                    raise RuntimeError(
                        f"The sync runner did not run {done.message.id!r}: {done.error!r}"
                    )
                if outcome.status == TaskStatus.FAILED and not outcome.duplicate:
                    failed.append(outcome.task_id)
                # Depth first: a task's follow-ups run before its siblings, as in Celery.
                pending.extendleft(reversed([_eager(m) for m in outcome.publish]))
    if propagate and failed:
        error = TaskRecord.objects.get(pk=failed[0]).last_error
        exc = exception_from_error(error)
        if error and error.get("traceback"):
            exc.add_note(f"Task {failed[0]} failed (run eagerly):\n{error['traceback']}")
        raise exc


def _eager(message: TaskMessage) -> TaskMessage:
    # Eager mode does not wait: a countdown or retry delay is skipped, as in Celery.
    return message.replace(
        eta=None,
        delivery_info={"is_eager": True, "exchange": "", "routing_key": message.queue},
    )
