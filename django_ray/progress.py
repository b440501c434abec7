"""Task progress: what a running task reports about itself (docs/progress.md).

A Django ``@task`` declared with ``takes_context=True`` calls
``set_progress(context, {"done": 3, "total": 10})``; a ``compat.celery`` task calls
``self.update_state(state="PROGRESS", meta={...})`` as with Celery (which comes here too).
Either writes ``TaskRecord.progress`` / ``progress_state`` / ``progress_at`` from
whatever process runs the task (the worker in ``--sync``, a Ray worker process in the
other modes): the database is the one place every mode shares.

The write is fenced: it lands only while the record is RUNNING for the attempt that
reports (its ``last_attempted_at``), so a task that finished, waits for a retry, or was
taken over by a later delivery is never marked in progress again. The record stays
RUNNING: Django's ``TaskResultStatus`` has no progress state. A Celery-style report is
also written where an unchanged Celery client's ``AsyncResult`` reads (the project's result
store: ``django_ray.celery.results.store()``), so ``.state`` is the reported state and
``.info`` its meta.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django.tasks import TaskContext

    from django_ray.message import TaskMessage
    from django_ray.models import TaskRecord

logger = logging.getLogger(__name__)

__all__ = ["PROGRESS", "Progress", "attempt", "of", "report", "set_progress"]

#: The state a report has unless it names another (Celery's convention).
PROGRESS = "PROGRESS"
#: States a running task cannot report: its outcome is written when it returns or raises.
OUTCOME_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
MAX_STATE_LENGTH = 64

# The attempt running in this context: (task id, its last_attempted_at), set by the
# execution core around a task's call, so a Celery-style report is fenced to its attempt.
_running: contextvars.ContextVar[tuple[str, datetime | None] | None] = contextvars.ContextVar(
    "django_ray_running_attempt", default=None
)


@dataclass(frozen=True, slots=True)
class Progress:
    """A record's last reported progress."""

    state: str
    meta: Any
    at: datetime | None


def set_progress(context: TaskContext, meta: Any = None, *, state: str = PROGRESS) -> bool:
    """Report the progress of the Django task running with ``context``.

    ``meta`` is any JSON value (a dict such as ``{"done": 3, "total": 10}`` reads best);
    ``state`` a short name ("PROGRESS" unless given). Return True when it was stored, False
    when this attempt no longer runs (it finished, or another delivery took the task over):
    the task may stop early then. Raises ``TypeError`` for a meta that is not JSON, and
    ``ValueError`` for an empty state, one over 64 characters, or an outcome state.
    """
    result = context.task_result
    return report(result.id, state, meta, attempt=result.last_attempted_at, celery=False)


def report(
    task_id: str,
    state: str,
    meta: Any,
    *,
    attempt: datetime | object | None = None,
    celery: bool = True,
    message: TaskMessage | None = None,
) -> bool:
    """Store ``state`` and ``meta`` on ``task_id``'s record while it runs (fenced).

    ``attempt`` is the reporting attempt's ``last_attempted_at``; left out, it is the
    attempt this context runs for ``task_id``, else whichever attempt is running.
    ``celery=True`` also writes the Celery result store (``message`` gives its request).
    """
    from django_ray.models import TaskRecord

    state = _checked_state(state)
    meta = _json(meta)
    if attempt is None:
        attempt = current_attempt(task_id)
    if not TaskRecord.report_progress(task_id, state, meta, attempt=attempt):
        logger.debug("Progress of %s not stored: it is not running (this attempt).", task_id)
        return False
    if celery:
        _to_result_store(task_id, state, meta, message)
    return True


def of(record: TaskRecord) -> Progress | None:
    """Return ``record``'s last reported progress, or None."""
    if not record.progress_state:
        return None
    return Progress(state=record.progress_state, meta=record.progress, at=record.progress_at)


@contextlib.contextmanager
def attempt(task_id: str, last_attempted_at: datetime | None) -> Iterator[None]:
    """Mark ``task_id``'s attempt as the one running in this context (the execution core)."""
    token = _running.set((task_id, last_attempted_at))
    try:
        yield
    finally:
        _running.reset(token)


def current_attempt(task_id: str) -> datetime | object | None:
    """Return the attempt of ``task_id`` running in this context (``ANY_ATTEMPT`` if none)."""
    from django_ray.models import ANY_ATTEMPT

    running = _running.get()
    return running[1] if running is not None and running[0] == task_id else ANY_ATTEMPT


def _checked_state(state: Any) -> str:
    if not isinstance(state, str) or not state.strip():
        raise ValueError(f"A progress state is a non-empty string, not {state!r}.")
    if len(state) > MAX_STATE_LENGTH:
        raise ValueError(f"A progress state has at most {MAX_STATE_LENGTH} characters.")
    if state in OUTCOME_STATES:
        raise ValueError(
            f"A running task cannot report {state}: its outcome is stored when it returns "
            "(SUCCESS) or raises (FAILURE); report PROGRESS or a state of your own."
        )
    return state


def _json(meta: Any) -> Any:
    from django.utils.json import normalize_json

    try:
        return json.loads(json.dumps(normalize_json(meta), allow_nan=False))
    except (TypeError, ValueError) as e:
        raise TypeError(f"Progress meta must be JSON-serializable: {e}") from e


def _to_result_store(task_id: str, state: str, meta: Any, message: TaskMessage | None) -> None:
    from django_ray.celery import results

    try:
        results.store().progress(task_id, state, meta, message)
    except Exception:
        # The record holds it; a result backend outage must not fail the task.
        logger.exception("Could not write the progress of %s to the result backend.", task_id)
