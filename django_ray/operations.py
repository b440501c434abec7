"""Operations on the system of record: prune finished tasks, report the queues' health.

``prune()`` deletes finished ``TaskRecord`` rows ``BATCH_SIZE`` ids per ``DELETE``, so no
single statement holds its locks on a large table for long. ``status()`` reads, per queue,
the records by status, the broker's backlog (the django:// table ``QueueMessage``, or the
Redis / RabbitMQ queue through ``transport.Broker``), its dead letters and the ETA
schedule (``ScheduledMessage``), and the live workers' heartbeats (``WorkerHeartbeat``).
The commands ``django_ray_prune`` and ``django_ray_status`` only parse
arguments and print what these return.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, F, Q, QuerySet
from django.db.models.functions import Coalesce
from django.utils import timezone

from django_ray import conf
from django_ray.exceptions import DeliveryLimitExceeded
from django_ray.models import (
    FINISHED,
    QueueMessage,
    ScheduledMessage,
    TaskRecord,
    TaskStatus,
    WorkerHeartbeat,
)
from django_ray.runtime.settle import DEAD_LETTER_SUFFIX

__all__ = [
    "BATCH_SIZE",
    "PruneResult",
    "QueueStatus",
    "RunningTask",
    "StatusReport",
    "WorkerStatus",
    "age_warning",
    "prune",
    "status",
]

# How a record that exhausted MAX_DELIVERIES names its error (dead-lettered).
DEAD_LETTER = f"{DeliveryLimitExceeded.__module__}.{DeliveryLimitExceeded.__qualname__}"

# Ids per DELETE: each statement holds its row (or SQLite database) lock only briefly.
BATCH_SIZE = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class PruneResult:
    """What ``prune()`` deleted, or with ``dry_run`` would delete."""

    records: dict[str, int]  # by status: SUCCESSFUL, FAILED, REVOKED
    scheduled: int  # parked messages of finished tasks
    dry_run: bool


def prune(
    *,
    min_age: timedelta,
    failed_min_age: timedelta | None = None,
    queues: Sequence[str] = (),
    task_name: str | None = None,
    dry_run: bool = False,
) -> PruneResult:
    """Delete finished records older than their age, and parked messages of finished tasks."""
    for name, age in (("min_age", min_age), ("failed_min_age", failed_min_age)):
        if age is not None and age < timedelta(0):
            raise ValueError(f"{name} must not be negative, not {age!r}; pass zero or more.")
    now = timezone.now()
    selected = TaskRecord.objects.all()
    if queues:
        selected = selected.for_queues(list(queues))
    if task_name is not None:
        selected = selected.filter(task_name=task_name)
    # Any age: a finished task never runs again, so its parked message is only dropped later.
    parked = ScheduledMessage.objects.filter(task_id__in=selected.finished().values("pk"))
    scheduled = parked.count() if dry_run else _delete_parked(parked)
    ages = {status: min_age for status in FINISHED}
    if failed_min_age is not None:
        ages[TaskStatus.FAILED] = failed_min_age
    records: dict[str, int] = {}
    for status, age in ages.items():
        rows = _outside_running_groups(selected.filter(status=status).older_than(now - age))
        if dry_run:
            records[status.value] = rows.count()
        else:
            records[status.value], more_parked = _delete_records(rows)
            scheduled += more_parked
    return PruneResult(records=records, scheduled=scheduled, dry_run=dry_run)


def age_warning(*ages: timedelta | None) -> str | None:
    """Return a warning if an age is shorter than the visibility timeout, else None."""
    timeout = float(conf.get("VISIBILITY_TIMEOUT"))
    if all(age is None or age.total_seconds() >= timeout for age in ages):
        return None
    return (
        f"An age below VISIBILITY_TIMEOUT ({timeout:g} s) can delete a record whose message "
        "is still to be redelivered; that task would then run again. Use at least 1 day."
    )


def _outside_running_groups(rows: QuerySet[TaskRecord]) -> QuerySet[TaskRecord]:
    # A chord counts its finished parts through TaskRecord: keep them while a part still runs.
    running_groups = TaskRecord.objects.unfinished().filter(group_id__isnull=False)
    return rows.exclude(group_id__in=running_groups.values("group_id"))


def _delete_records(rows: QuerySet[TaskRecord]) -> tuple[int, int]:
    """Delete ``rows`` and their parked messages; return both counts."""
    deleted = parked = 0
    while ids := list(rows.order_by().values_list("pk", flat=True)[:BATCH_SIZE]):
        # Parked messages first: published without their record, the task would run again.
        parked += ScheduledMessage.objects.filter(task_id__in=ids).delete()[0]
        # By id only: MySQL refuses a DELETE whose subquery reads the same table.
        deleted += TaskRecord.objects.filter(pk__in=ids).finished().delete()[0]
    return deleted, parked


def _delete_parked(rows: QuerySet[ScheduledMessage]) -> int:
    deleted = 0
    while ids := list(rows.order_by().values_list("pk", flat=True)[:BATCH_SIZE]):
        deleted += ScheduledMessage.objects.filter(pk__in=ids).delete()[0]
    return deleted


@dataclass(frozen=True, slots=True, kw_only=True)
class RunningTask:
    """A RUNNING record; ``stale`` when its last attempt is older than the visibility timeout."""

    id: str
    task_name: str
    worker_id: str | None
    last_attempted_at: datetime | None
    stale: bool
    # The progress this attempt last reported (django_ray.progress), if any.
    progress_state: str | None = None
    progress: Any = None
    progress_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        attempted = self.last_attempted_at
        reported = None
        if self.progress_state:
            at = self.progress_at
            reported = {
                "state": self.progress_state,
                "meta": self.progress,
                "at": at.isoformat() if at else None,
            }
        return {
            "id": self.id,
            "task_name": self.task_name,
            "worker_id": self.worker_id,
            "last_attempted_at": attempted.isoformat() if attempted else None,
            "stale": self.stale,
            "progress": reported,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueStatus:
    """One queue: its records by status and its messages waiting in the database."""

    name: str
    tasks: dict[str, int]
    oldest_ready_id: str | None
    oldest_ready_age: float | None  # seconds since it became due
    running: tuple[RunningTask, ...]
    messages_visible: int
    messages_hidden: int
    scheduled_due: int
    scheduled_future: int
    waiting: int | None = None  # on the broker, ready for delivery (None: broker unreachable)
    dead_lettered: int = 0  # FAILED records with DeliveryLimitExceeded
    dead_letter_waiting: int | None = 0  # messages in "<queue>.dead-letter"

    @property
    def stale(self) -> int:
        return sum(task.stale for task in self.running)

    def as_dict(self) -> dict[str, Any]:
        oldest = None
        if self.oldest_ready_id is not None:
            oldest = {"id": self.oldest_ready_id, "age_seconds": self.oldest_ready_age}
        return {
            "tasks": dict(self.tasks),
            "oldest_ready": oldest,
            "running": [task.as_dict() for task in self.running],
            "stale": self.stale,
            "messages": {"visible": self.messages_visible, "hidden": self.messages_hidden},
            "scheduled": {"due": self.scheduled_due, "future": self.scheduled_future},
            "waiting": self.waiting,
            "dead_letter": {"failed": self.dead_lettered, "waiting": self.dead_letter_waiting},
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerStatus:
    """A worker's last heartbeat; ``stale`` when older than 3 x ``HEARTBEAT_INTERVAL``."""

    worker_id: str
    hostname: str
    pid: int
    mode: str
    queues: tuple[str, ...]
    in_flight: int
    started_at: datetime
    last_seen: datetime
    age: float  # seconds since last_seen
    stale: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "hostname": self.hostname,
            "pid": self.pid,
            "mode": self.mode,
            "queues": list(self.queues),
            "in_flight": self.in_flight,
            "started_at": self.started_at.isoformat(),
            "last_seen": self.last_seen.isoformat(),
            "heartbeat_age_seconds": round(self.age, 3),
            "stale": self.stale,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusReport:
    """The health of every queue (or of the queues asked for), at ``generated_at``."""

    generated_at: datetime
    visibility_timeout: float
    queues: tuple[QueueStatus, ...]
    broker: str = "django://"  # the broker URL, password masked
    broker_kind: str = "django"
    broker_error: str | None = None  # why the backlog could not be read
    heartbeat_interval: float = 5.0
    workers: tuple[WorkerStatus, ...] = ()

    @property
    def stale_workers(self) -> int:
        return sum(worker.stale for worker in self.workers)

    def as_dict(self) -> dict[str, Any]:
        return {
            "generated_at": self.generated_at.isoformat(),
            "visibility_timeout": self.visibility_timeout,
            "queues": {queue.name: queue.as_dict() for queue in self.queues},
            "broker": self.broker,
            "broker_kind": self.broker_kind,
            "broker_error": self.broker_error,
            "heartbeat_interval": self.heartbeat_interval,
            "workers": [worker.as_dict() for worker in self.workers],
        }


def status(*, queues: Sequence[str] = ()) -> StatusReport:
    """Return the health of ``queues`` (default: every queue that has records or messages)."""
    now = timezone.now()
    timeout = float(conf.get("VISIBILITY_TIMEOUT"))
    only = Q(queue__in=list(queues)) if queues else Q()
    with_dead = Q(queue__in=[*queues, *(q + DEAD_LETTER_SUFFIX for q in queues)]) if queues else Q()
    records = TaskRecord.objects.filter(only).order_by().values_list("queue", "status")
    counts: dict[str, dict[str, int]] = {}
    for queue, state, count in records.annotate(Count("pk")):
        counts.setdefault(queue, dict.fromkeys(TaskStatus.values, 0))[state] = count
    visible = _split_counts(QueueMessage.objects.filter(with_dead), Q(visible_at__lte=now))
    due = _split_counts(ScheduledMessage.objects.filter(only), Q(eta__lte=now))
    dead = dict(
        TaskRecord.objects.filter(only, status=TaskStatus.FAILED, errors__icontains=DEAD_LETTER)
        .order_by()
        .values_list("queue")
        .annotate(Count("pk"))
    )
    workers = _workers(now)
    consumed = {q for w in workers if not w.stale for q in w.queues if q != "*"}
    if queues:
        consumed &= set(queues)
    found = set(counts) | set(visible) | set(due) | set(dead) | consumed
    # A dead-letter queue is shown with the queue it collects for.
    names = sorted(set(queues) | {q.removesuffix(DEAD_LETTER_SUFFIX) for q in found})
    stale_before = now - timedelta(seconds=timeout)
    url, kind, backlog, error = _broker_backlog(names, visible)
    return StatusReport(
        generated_at=now,
        visibility_timeout=timeout,
        queues=tuple(
            replace(
                _queue_status(
                    name,
                    counts.get(name) or dict.fromkeys(TaskStatus.values, 0),
                    visible.get(name, (0, 0)),
                    due.get(name, (0, 0)),
                    now=now,
                    stale_before=stale_before,
                ),
                waiting=backlog.get(name),
                dead_lettered=dead.get(name, 0),
                dead_letter_waiting=backlog.get(name + DEAD_LETTER_SUFFIX),
            )
            for name in names
        ),
        broker=url,
        broker_kind=kind,
        broker_error=error,
        heartbeat_interval=float(conf.get("HEARTBEAT_INTERVAL")),
        workers=workers,
    )


def _broker_backlog(
    names: Sequence[str], visible: dict[str, tuple[int, int]]
) -> tuple[str, str, dict[str, int], str | None]:
    """Return the broker (masked URL, kind), the messages waiting per queue, and any error.

    Every queue and its dead-letter queue: on django:// the visible ``QueueMessage`` rows
    (a dead-letter queue is never consumed: all of its rows), else the broker's own count.
    """
    from django_ray.transport import Broker, broker_kind, masked_url

    url = conf.broker_url()
    kind = broker_kind(url)
    backlog: dict[str, int] = {}
    if kind.in_database:
        for name in names:
            backlog[name] = visible.get(name, (0, 0))[0]
            backlog[name + DEAD_LETTER_SUFFIX] = sum(visible.get(name + DEAD_LETTER_SUFFIX, ()))
        return url, kind, backlog, None  # no password; masked_url would add a slash
    try:
        broker = Broker(url)
    except Exception as e:  # an unknown scheme, a bad URL
        return masked_url(url), kind, backlog, f"{type(e).__name__}: {e}"
    try:
        broker.connection.ensure_connection(max_retries=1, timeout=5)
        for name in names:
            for queue in (name, name + DEAD_LETTER_SUFFIX):
                backlog[queue] = broker.queue_size(queue)
    except Exception as e:  # unreachable: the records are still worth showing
        return masked_url(url), kind, backlog, f"{type(e).__name__}: {e}"
    finally:
        with contextlib.suppress(Exception):  # a connection that never opened
            broker.close()
    return masked_url(url), kind, backlog, None


def _workers(now: datetime) -> tuple[WorkerStatus, ...]:
    """Return the workers' last heartbeats, freshest first."""
    stale_after = 3 * float(conf.get("HEARTBEAT_INTERVAL"))
    result = []
    for row in WorkerHeartbeat.objects.order_by("-last_seen", "worker_id"):
        age = max((now - row.last_seen).total_seconds(), 0.0)
        result.append(
            WorkerStatus(
                worker_id=row.worker_id,
                hostname=row.hostname,
                pid=row.pid,
                mode=row.mode,
                queues=tuple(str(q) for q in row.queues or ()),
                in_flight=row.in_flight,
                started_at=row.started_at,
                last_seen=row.last_seen,
                age=age,
                stale=age > stale_after,
            )
        )
    return tuple(result)


def _split_counts(rows: QuerySet[Any], condition: Q) -> dict[str, tuple[int, int]]:
    """Return, per queue, how many rows meet ``condition`` and how many do not."""
    grouped = (
        rows.order_by()
        .values_list("queue")
        .annotate(yes=Count("pk", filter=condition), no=Count("pk", filter=~condition))
    )
    return {queue: (yes, no) for queue, yes, no in grouped}


def _queue_status(
    name: str,
    tasks: dict[str, int],
    messages: tuple[int, int],
    scheduled: tuple[int, int],
    *,
    now: datetime,
    stale_before: datetime,
) -> QueueStatus:
    # Waiting since it became due; a READY task deferred to the future is not waiting yet.
    oldest = (
        TaskRecord.objects.filter(queue=name, status=TaskStatus.READY)
        .filter(Q(run_after__isnull=True) | Q(run_after__lte=now))
        .annotate(due_at=Coalesce("run_after", "enqueued_at"))
        .order_by("due_at", "pk")
        .values_list("pk", "due_at")
        .first()
    )
    running = (
        TaskRecord.objects.filter(queue=name, status=TaskStatus.RUNNING)
        .order_by(F("last_attempted_at").asc(nulls_first=True), "pk")
        .values_list(
            "pk", "task_name", "worker_ids", "last_attempted_at",
            "progress_state", "progress", "progress_at",
        )
    )  # fmt: skip
    return QueueStatus(
        name=name,
        tasks=tasks,
        oldest_ready_id=oldest[0] if oldest else None,
        oldest_ready_age=(now - oldest[1]).total_seconds() if oldest else None,
        running=tuple(
            RunningTask(
                id=pk,
                task_name=task,
                worker_id=workers[-1] if workers else None,
                last_attempted_at=attempted,
                # No timestamp cannot be vouched for: report it with the stale ones.
                stale=attempted is None or attempted < stale_before,
                progress_state=state or None,
                progress=meta,
                progress_at=reported_at,
            )
            for pk, task, workers, attempted, state, meta, reported_at in running
        ),
        messages_visible=messages[0],
        messages_hidden=messages[1],
        scheduled_due=scheduled[0],
        scheduled_future=scheduled[1],
    )


# -- acting on records: retry, requeue, cancel, delete (the admin, the command line) ----------


RETRYABLE = (TaskStatus.FAILED, TaskStatus.REVOKED)


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionResult:
    """What an action did: the ids it acted on, and why it left the others alone."""

    done: tuple[str, ...] = ()
    skipped: dict[str, str] | None = None
    notes: tuple[str, ...] = ()

    @property
    def refused(self) -> dict[str, str]:
        return dict(self.skipped or {})


def message_of(record: TaskRecord) -> Any:
    """Return the ``TaskMessage`` that runs ``record`` again: the same id, task, arguments,
    queue, priority and canvas ids. What the record does not hold (links, time limits) is
    not in it, and neither are its expiry and ETA: it runs now."""
    from django_ray.message import TaskMessage

    return TaskMessage(
        id=record.id,
        task=record.task_name,
        args=tuple(record.args or ()),
        kwargs=dict(record.kwargs or {}),
        queue=record.queue,
        priority=record.priority,
        retries=record.retries,
        root_id=record.root_id,
        parent_id=record.parent_id,
        group=record.group_id,
        group_index=record.group_index,
        backend=(record.backend or "default") if record.origin == "django" else None,
    )


def retry_record(record: TaskRecord) -> Any:
    """Re-enqueue a FAILED or REVOKED ``record`` as a new attempt; return its message.

    The record goes back to READY (a conditional update: nothing if it moved meanwhile,
    then None is returned) with its errors and worker ids kept; its message
    (``message_of``) is published inside the same transaction (on commit for external
    brokers). A dead-lettered task's parked copy in ``<queue>.dead-letter`` (django://) is
    dropped: the retry is its one way back.
    """
    from django.db import transaction

    from django_ray.transport import publish

    message = message_of(record)
    with transaction.atomic():
        moved = TaskRecord.objects.filter(
            pk=record.pk, status=record.status, finished_at=record.finished_at
        ).update(status=TaskStatus.READY, finished_at=None, run_after=None, expires=None)
        if not moved:
            return None
        _queued_messages(record.pk, record.queue + DEAD_LETTER_SUFFIX).delete()
        publish(message)
    return message


def retry(records: Sequence[TaskRecord]) -> ActionResult:
    """Run FAILED or REVOKED (dead-lettered included) records again, each a new attempt."""
    done, skipped = [], {}
    for record in records:
        if record.status not in RETRYABLE:
            skipped[record.pk] = f"{record.status}, not FAILED or REVOKED"
        elif not record.task_name:
            skipped[record.pk] = "revoked before its message arrived: its task is unknown"
        elif retry_record(record) is None:
            skipped[record.pk] = "changed meanwhile"
        else:
            done.append(record.pk)
    return ActionResult(done=tuple(done), skipped=skipped)


def requeue(records: Sequence[TaskRecord]) -> ActionResult:
    """Publish the message of READY, RETRYING or stale RUNNING records again, to run now.

    For a record whose message was lost (a purged queue, a broker that lost it) or a
    RUNNING one whose worker died (its last attempt is older than ``VISIBILITY_TIMEOUT``;
    it goes back to READY first, fenced). A parked ETA message of the task is dropped (it
    runs now instead). Refused: finished records (retry those), RUNNING ones still within
    their lease, and, on django://, a record whose message is still in its queue (it will
    be delivered anyway). On Redis and RabbitMQ the queue is not searched: a task whose
    message was only late may be delivered twice, and its record lets one attempt through.
    """
    from django.db import transaction

    from django_ray.transport import broker_kind, publish

    timeout = float(conf.get("VISIBILITY_TIMEOUT"))
    stale_before = timezone.now() - timedelta(seconds=timeout)
    on_django = broker_kind(conf.broker_url()).in_database
    done, skipped = [], {}
    for record in records:
        if record.is_finished:
            skipped[record.pk] = f"{record.status}: finished (retry it instead)"
            continue
        if not record.task_name:
            skipped[record.pk] = "its task is unknown (no message ever arrived)"
            continue
        if record.status == TaskStatus.RUNNING:
            attempted = record.last_attempted_at
            if attempted is not None and attempted >= stale_before:
                skipped[record.pk] = (
                    f"RUNNING since {attempted:%H:%M:%S}, within its lease "
                    f"({timeout:g} s): cancel it, or wait"
                )
                continue
        if on_django and _queued_messages(record.pk, record.queue).exists():
            skipped[record.pk] = f"its message is still in queue {record.queue!r}"
            continue
        with transaction.atomic():
            if record.status == TaskStatus.RUNNING and not record.mark_ready():
                skipped[record.pk] = "changed meanwhile"
                continue
            moved = TaskRecord.objects.filter(pk=record.pk, status=record.status).update(
                run_after=None
            )
            if not moved:
                skipped[record.pk] = "changed meanwhile"
                continue
            ScheduledMessage.objects.filter(task_id=record.pk).delete()
            publish(message_of(record))
        done.append(record.pk)
    return ActionResult(done=tuple(done), skipped=skipped)


def cancel(records: Sequence[TaskRecord], *, terminate: bool = True) -> ActionResult:
    """Revoke records: a waiting one never starts (REVOKED now); a RUNNING one is asked to
    stop (``revoke`` with ``terminate``, broadcast to the workers; Redis and RabbitMQ only)
    and ends REVOKED "terminated" where its mode can stop it. Finished ones are left alone.
    """
    from django_ray.celery import control, results
    from django_ray.exceptions import ModeNotAvailable

    pending = [r.pk for r in records if not r.is_finished and r.status != TaskStatus.RUNNING]
    running = [r.pk for r in records if r.status == TaskStatus.RUNNING]
    skipped = {r.pk: f"{r.status}: already finished" for r in records if r.is_finished}
    done = list(results.revoke(pending)) if pending else []
    for task_id in pending:
        if task_id not in done:
            skipped[task_id] = "started meanwhile"
    notes = []
    if running and terminate:
        try:
            replies = control.broadcast(
                "revoke", {"task_id": running, "terminate": True, "signal": "SIGTERM"},
                timeout=1.0,
            )  # fmt: skip
        except ModeNotAvailable as e:
            for task_id in running:
                skipped[task_id] = f"RUNNING; not stopped ({e}): it runs to its end"
        else:
            done.extend(running)
            if replies:
                notes.append(f"Asked {len(replies)} worker(s) to stop {len(running)} task(s).")
            else:
                notes.append("No worker replied: the running task(s) may not stop.")
    elif running:
        for task_id in running:
            skipped[task_id] = "RUNNING: it runs to its end"
    return ActionResult(done=tuple(done), skipped=skipped, notes=tuple(notes))


def delete_finished(ids: Sequence[str]) -> ActionResult:
    """Delete the finished records among ``ids`` (and their parked messages).

    A record that has not finished is refused: deleted, its message (still queued, or
    redelivered after its worker's lease) would create it afresh and run the task again.
    The condition is part of the DELETE, so a record that is READY when asked is never
    deleted even if it finishes meanwhile.
    """
    ids = list(dict.fromkeys(ids))
    finished = set(TaskRecord.objects.filter(pk__in=ids).finished().values_list("pk", flat=True))
    states = dict(TaskRecord.objects.filter(pk__in=ids).values_list("pk", "status"))
    _delete_records(TaskRecord.objects.filter(pk__in=list(finished)))
    left = set(TaskRecord.objects.filter(pk__in=list(finished)).values_list("pk", flat=True))
    skipped = {
        task_id: f"{states.get(task_id, '?')}: not finished (cancel it first)"
        for task_id in ids
        if task_id not in finished
    }
    skipped.update({task_id: "changed meanwhile" for task_id in left})
    done = tuple(task_id for task_id in ids if task_id in finished and task_id not in left)
    return ActionResult(done=done, skipped=skipped)


def _queued_messages(task_id: str, queue: str) -> QuerySet[QueueMessage]:
    """The django:// messages of ``task_id`` in ``queue`` (its id is in the payload)."""
    return QueueMessage.objects.filter(queue=queue, payload__contains=f'"id": "{task_id}"')
