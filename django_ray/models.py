"""The system of record (``TaskRecord``), the django:// queue table and the ETA schedule."""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, models, router, transaction
from django.db.models import F, Q
from django.utils import timezone

__all__ = ["JobPayload", "QueueMessage", "ScheduledMessage", "TaskRecord", "TaskStatus"]


class TaskStatus(models.TextChoices):
    """Internal states; Django's four statuses and Celery's states are derived from them."""

    READY = "READY", "Ready"
    RUNNING = "RUNNING", "Running"
    RETRYING = "RETRYING", "Waiting to retry"
    SUCCESSFUL = "SUCCESSFUL", "Successful"
    FAILED = "FAILED", "Failed"
    REVOKED = "REVOKED", "Revoked"


# report_progress(attempt=ANY_ATTEMPT): whichever attempt is running.
ANY_ATTEMPT = object()

FINISHED = (TaskStatus.SUCCESSFUL, TaskStatus.FAILED, TaskStatus.REVOKED)
DJANGO_STATUS = {
    TaskStatus.READY: "READY",
    TaskStatus.RUNNING: "RUNNING",
    TaskStatus.RETRYING: "READY",
    TaskStatus.SUCCESSFUL: "SUCCESSFUL",
    TaskStatus.FAILED: "FAILED",
    TaskStatus.REVOKED: "FAILED",
}
CELERY_STATE = {
    TaskStatus.READY: "PENDING",
    TaskStatus.RUNNING: "STARTED",
    TaskStatus.RETRYING: "RETRY",
    TaskStatus.SUCCESSFUL: "SUCCESS",
    TaskStatus.FAILED: "FAILURE",
    TaskStatus.REVOKED: "REVOKED",
}


class TaskRecordQuerySet(models.QuerySet["TaskRecord"]):
    def finished(self) -> TaskRecordQuerySet:
        return self.filter(status__in=FINISHED)

    def unfinished(self) -> TaskRecordQuerySet:
        return self.exclude(status__in=FINISHED)

    def for_queues(self, queues: list[str]) -> TaskRecordQuerySet:
        return self if "*" in queues else self.filter(queue__in=queues)

    def older_than(self, moment: datetime) -> TaskRecordQuerySet:
        return self.filter(finished_at__lt=moment)

    def by_id(self, task_id: str) -> TaskRecord | None:
        """Return the record ``task_id`` or None: ``get(pk=...)`` without the ORM's compiler.

        The worker reads a record once per task. One select of the model's columns, each
        value passed through the converters the ORM would apply (the backend's and the
        field's: time zones, JSON), builds the same object in a quarter of the time.
        """
        connection = connections[self.db]
        meta = self.model._meta
        fields = meta.concrete_fields
        qn = connection.ops.quote_name
        columns = ", ".join(qn(_column(f)) for f in fields)
        sql = f"SELECT {columns} FROM {qn(meta.db_table)} WHERE {qn(_column(meta.pk))} = %s"
        with connection.cursor() as cursor:
            cursor.execute(sql, [task_id])
            row = cursor.fetchone()
        if row is None:
            return None
        values = []
        for (col, converters), value in zip(_converters(connection, fields), row, strict=True):
            for convert in converters:
                value = convert(value, col, connection)
            values.append(value)
        return self.model.from_db(self.db, [f.attname for f in fields], values)


_CONVERTERS: dict[tuple[str, str], list[tuple[Any, list[Any]]]] = {}


def _converters(connection: Any, fields: Any) -> list[tuple[Any, list[Any]]]:
    """Each column's expression and converters, as the ORM's compiler finds them (cached)."""
    key = (connection.alias, connection.vendor)
    found = _CONVERTERS.get(key)
    if found is None:
        found = []
        for field in fields:
            col = field.get_col(field.model._meta.db_table)
            found.append(
                (col, connection.ops.get_db_converters(col) + col.get_db_converters(connection))
            )
        _CONVERTERS[key] = found
    return found


class TaskRecord(models.Model):
    """One task, across all its attempts: status, timings, result and errors."""

    id = models.CharField(primary_key=True, max_length=255)
    task_name = models.CharField(max_length=255, db_index=True)
    backend = models.CharField(max_length=64, blank=True, default="")
    queue = models.CharField(max_length=255, default="default", db_index=True)
    priority = models.IntegerField(default=0)
    status = models.CharField(
        max_length=16, choices=TaskStatus.choices, default=TaskStatus.READY, db_index=True
    )
    origin = models.CharField(max_length=16, default="django")
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    run_after = models.DateTimeField(null=True, blank=True)
    expires = models.DateTimeField(null=True, blank=True)
    enqueued_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    last_attempted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    worker_ids = models.JSONField(default=list, blank=True)
    retries = models.PositiveIntegerField(default=0)
    return_value = models.JSONField(null=True, blank=True)
    # One entry per failed attempt: exception_class_path, traceback, exc_message (args).
    errors = models.JSONField(default=list, blank=True)
    root_id = models.CharField(max_length=255, null=True, blank=True)
    parent_id = models.CharField(max_length=255, null=True, blank=True)
    group_id = models.CharField(max_length=255, null=True, blank=True, db_index=True)
    group_index = models.IntegerField(null=True, blank=True)
    # Canvas bookkeeping a runner hands back to the worker (messages to publish).
    children = models.JSONField(default=list, blank=True)
    # The last progress the running attempt reported (django_ray.progress): its state
    # ("PROGRESS" or a custom one), its meta and when. Cleared when an attempt starts; kept
    # once the task finished (the last progress it reached).
    progress = models.JSONField(null=True, blank=True)
    progress_state = models.CharField(max_length=64, null=True, blank=True)
    progress_at = models.DateTimeField(null=True, blank=True)

    objects = TaskRecordQuerySet.as_manager()

    class Meta:
        ordering = ["-enqueued_at"]
        verbose_name = "task"
        indexes = [
            models.Index(fields=["status", "queue"], name="django_ray_status_queue"),
            # Pruning selects finished records by age.
            models.Index(fields=["status", "finished_at"], name="django_ray_status_finished"),
        ]

    def __str__(self) -> str:
        return f"{self.task_name} [{self.id}] {self.status}"

    # -- derived views ----------------------------------------------------------

    @property
    def attempts(self) -> int:
        return len(self.worker_ids)

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED

    @property
    def django_status(self) -> str:
        return DJANGO_STATUS[TaskStatus(self.status)]

    @property
    def celery_state(self) -> str:
        return CELERY_STATE[TaskStatus(self.status)]

    @property
    def last_error(self) -> dict[str, Any] | None:
        return self.errors[-1] if self.errors else None

    # -- the state machine ------------------------------------------------------
    #
    # Each transition writes only the fields it changes, and only if the row is still in
    # the state this object last saw (its status and its attempt, ``last_attempted_at``):
    # a fence. An outcome from an attempt that another delivery has superseded, or for a
    # record that finished meanwhile, changes nothing: the transition returns False and
    # the object is reloaded with what the database holds.

    def mark_running(self, worker_id: str) -> bool:
        """Start an attempt: RUNNING, one more worker id, attempt timestamps."""
        seen = self._seen()
        now = timezone.now()
        self.status = TaskStatus.RUNNING
        self.worker_ids = [*self.worker_ids, worker_id]
        self.started_at = self.started_at or now
        self.last_attempted_at = now
        self.progress = self.progress_state = self.progress_at = None  # this attempt's own
        return self._write(
            seen, "status", "worker_ids", "started_at", "last_attempted_at",
            "progress", "progress_state", "progress_at",
        )  # fmt: skip

    def mark_successful(self, return_value: Any, *, children: list[Any] | None = None) -> bool:
        seen = self._seen()
        self.status = TaskStatus.SUCCESSFUL
        self.return_value = return_value
        self.finished_at = timezone.now()
        self.children = children or []
        return self._write(seen, "status", "return_value", "finished_at", "children")

    def mark_failed(self, error: dict[str, Any] | None) -> bool:
        seen = self._seen()
        self.status = TaskStatus.FAILED
        if error is not None:
            self.errors = [*self.errors, error]
        self.finished_at = timezone.now()
        return self._write(seen, "status", "errors", "finished_at")

    def mark_retrying(
        self, error: dict[str, Any] | None, *, retries: int, eta: datetime | None
    ) -> bool:
        """Wait for another attempt (READY to Django, RETRY to Celery)."""
        seen = self._seen()
        self.status = TaskStatus.RETRYING
        if error is not None:
            self.errors = [*self.errors, error]
        self.retries = retries
        self.run_after = eta
        return self._write(seen, "status", "errors", "retries", "run_after")

    def mark_revoked(self, reason: str) -> bool:
        seen = self._seen()
        self.status = TaskStatus.REVOKED
        self.errors = [
            *self.errors,
            {
                "exception_class_path": "celery.exceptions.TaskRevokedError",
                "traceback": "",
                "exc_message": [reason],
            },
        ]
        self.finished_at = timezone.now()
        return self._write(seen, "status", "errors", "finished_at")

    def mark_ready(self) -> bool:
        """Put a lost attempt back to READY so the redelivered message can run."""
        seen = self._seen()
        self.status = TaskStatus.READY
        return self._write(seen, "status")

    @classmethod
    def report_progress(
        cls, task_id: str, state: str, meta: Any, *, attempt: datetime | object | None = ANY_ATTEMPT
    ) -> bool:
        """Store the progress of ``task_id`` while it runs; return whether it was stored.

        Fenced like the transitions: only a RUNNING record is written, and when ``attempt``
        (the ``last_attempted_at`` of the attempt reporting) is given, only while that
        attempt is the current one. A task that finished, waits for a retry, or was taken
        over by another delivery keeps what it has.
        """
        rows = cls.objects.filter(pk=task_id, status=TaskStatus.RUNNING)
        if attempt is not ANY_ATTEMPT:
            rows = rows.filter(
                Q(last_attempted_at=attempt) if attempt is not None
                else Q(last_attempted_at__isnull=True)
            )  # fmt: skip
        return bool(rows.update(progress=meta, progress_state=state, progress_at=timezone.now()))

    @property
    def celery_progress_state(self) -> str:
        """Celery's state, with a running task's reported progress state in place of STARTED."""
        if self.status == TaskStatus.RUNNING and self.progress_state:
            return self.progress_state
        return self.celery_state

    def _seen(self) -> tuple[str, datetime | None]:
        """The state this object last saw: its status and its attempt."""
        return self.status, self.last_attempted_at

    def _write(self, seen: tuple[str, datetime | None], *fields: str) -> bool:
        """Write ``fields`` if the row is still as ``seen``; else reload and return False."""
        if _fenced_update(self, seen, fields):
            return True
        with contextlib.suppress(TaskRecord.DoesNotExist):  # deleted meanwhile (the admin)
            self.refresh_from_db()
        return False


def _fenced_update(
    record: TaskRecord, seen: tuple[str, datetime | None], names: tuple[str, ...]
) -> int:
    """``UPDATE ... SET names WHERE id, status and attempt are as seen``; return the row count.

    The statement the ORM's ``filter(...).update(...)`` sends, written directly: it runs
    two or three times per task, and building it through the ORM's query compiler cost
    about 0.25 ms each time, five times the statement itself. Values are prepared by the
    fields, as the ORM prepares them (JSON, time zones, each backend's adapters).
    """
    alias = router.db_for_write(TaskRecord, instance=record) or DEFAULT_DB_ALIAS
    connection = connections[alias]
    qn = connection.ops.quote_name
    meta = TaskRecord._meta
    by_name = {f.name: f for f in meta.concrete_fields}
    fields = [by_name[name] for name in names]
    params = [f.get_db_prep_save(getattr(record, f.attname), connection) for f in fields]
    status, attempt = seen
    attempt_field = by_name["last_attempted_at"]
    params += [record.pk, status]
    if attempt is None:
        attempt_sql = "IS NULL"
    else:
        attempt_sql = "= %s"
        params.append(attempt_field.get_db_prep_value(attempt, connection))
    sql = (
        f"UPDATE {qn(meta.db_table)} SET {', '.join(f'{qn(_column(f))} = %s' for f in fields)} "
        f"WHERE {qn(_column(meta.pk))} = %s AND {qn(_column(by_name['status']))} = %s "
        f"AND {qn(_column(attempt_field))} {attempt_sql}"
    )
    with transaction.mark_for_rollback_on_error(using=alias), connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def _column(field: Any) -> str:
    return str(field.column)


class DeadLetter(TaskRecord):
    """A dead-lettered task (the admin's view of them): FAILED ``DeliveryLimitExceeded``."""

    class Meta:
        proxy = True
        verbose_name = "dead letter"


__all__ += ["DeadLetter"]


class JobPayload(models.Model):
    """A task message waiting for the Ray job that runs it (Ray Job mode).

    The job's entrypoint is given only the job's id and reads the message here, so a
    message of any size can start as a job (a shell argument stops near 128 KiB), and a
    task's arguments never show in Ray's job list. The entrypoint deletes the row once
    read; the runner deletes what is left when the job ends.
    """

    id = models.CharField(primary_key=True, max_length=255)  # the job's submission id
    payload = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.id


class QueueMessageQuerySet(models.QuerySet["QueueMessage"]):
    def visible(self, queue: str, now: datetime) -> QueueMessageQuerySet:
        """Messages of ``queue`` that may be delivered now, highest priority first."""
        return self.filter(queue=queue, visible_at__lte=now).order_by(
            F("priority").desc(), "visible_at", "id"
        )


class QueueMessage(models.Model):
    """One message of the django:// broker (a row in the project's own database)."""

    queue = models.CharField(max_length=255)
    payload = models.TextField()
    priority = models.IntegerField(default=0)
    # Not delivered before this moment: the ETA, or the end of a delivery's visibility timeout.
    visible_at = models.DateTimeField(default=timezone.now)
    delivery_tag = models.CharField(max_length=64, null=True, blank=True, unique=True)
    delivered_count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    objects = QueueMessageQuerySet.as_manager()

    class Meta:
        indexes = [
            models.Index(fields=["queue", "visible_at"], name="django_ray_queue_visible"),
            # A claim's order (``visible``): taken from the index, not sorted per claim.
            models.Index(
                fields=["queue", "-priority", "visible_at", "id"], name="django_ray_queue_claim"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.queue} #{self.pk}"


class ScheduledMessage(models.Model):
    """A message with a future ETA, parked durably instead of held unacked in memory."""

    task_id = models.CharField(max_length=255)
    retries = models.PositiveIntegerField(default=0)
    queue = models.CharField(max_length=255)
    eta = models.DateTimeField(db_index=True)
    # The TaskMessage as protocol-v2 parts: {"headers": ..., "body": ..., "priority": ...}.
    payload = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["task_id", "retries"], name="django_ray_schedule_once"),
        ]

    def __str__(self) -> str:
        return f"{self.task_id} at {self.eta:%Y-%m-%d %H:%M:%S}"


def due_schedule(now: datetime) -> models.QuerySet[ScheduledMessage]:
    return ScheduledMessage.objects.filter(Q(eta__lte=now)).order_by("eta")


class PeriodicEntry(models.Model):
    """A periodic task (django_ray.beat): its schedule and the last tick a scheduler sent.

    ``last_run_at`` is the scheduled moment of the last tick sent, claimed with a
    conditional UPDATE so that one scheduler sends each tick (docs/periodic.md).
    """

    class Source(models.TextChoices):
        SETTINGS = "settings", "Settings"
        ADMIN = "admin", "Admin"

    name = models.CharField(max_length=200, unique=True)
    task = models.CharField(max_length=255, help_text="The task's name (as a worker resolves it).")
    schedule = models.JSONField(
        help_text='{"every": <seconds>} or {"crontab": {"minute": "*/15", "hour": "*", '
        '"day_of_week": "*", "day_of_month": "*", "month_of_year": "*"}}'
    )
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    options = models.JSONField(
        default=dict, blank=True, help_text='e.g. {"queue": "reports", "priority": 5}'
    )
    enabled = models.BooleanField(default=True)
    last_run_at = models.DateTimeField(null=True, blank=True, editable=False)
    total_run_count = models.PositiveIntegerField(default=0, editable=False)
    source = models.CharField(
        max_length=16, choices=Source.choices, default=Source.ADMIN, editable=False
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]
        verbose_name = "periodic task"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        from django_ray.timetable import parse_schedule

        try:
            parse_schedule(self.schedule)
        except (TypeError, ValueError) as e:
            raise ValidationError({"schedule": str(e)}) from e
        if not isinstance(self.args, list):
            raise ValidationError({"args": "A list of arguments."})
        if not isinstance(self.kwargs, dict):
            raise ValidationError({"kwargs": "A dict of keyword arguments."})
        if not isinstance(self.options, dict):
            raise ValidationError({"options": "A dict of options."})


__all__ += ["PeriodicEntry"]


class WorkerHeartbeat(models.Model):
    """A live worker: written when it starts and every ``HEARTBEAT_INTERVAL`` seconds."""

    worker_id = models.CharField(primary_key=True, max_length=255)
    hostname = models.CharField(max_length=255, default="")
    pid = models.IntegerField(default=0)
    mode = models.CharField(max_length=32, default="")
    queues = models.JSONField(default=list, blank=True)
    in_flight = models.IntegerField(default=0)
    started_at = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["worker_id"]

    def __str__(self) -> str:
        return self.worker_id

    @classmethod
    def beat(cls, worker_id: str, *, mode: str, queues: list[str], in_flight: int) -> None:
        """Record that ``worker_id`` is alive: one UPDATE, or an INSERT the first time."""
        import os
        import socket

        now = timezone.now()
        rows = cls.objects.filter(pk=worker_id)
        if not rows.update(last_seen=now, in_flight=in_flight):
            cls.objects.update_or_create(
                worker_id=worker_id,
                defaults={"hostname": socket.gethostname()[:255], "pid": os.getpid(),
                          "mode": mode[:32], "queues": list(queues), "in_flight": in_flight,
                          "started_at": now, "last_seen": now},
            )  # fmt: skip


__all__ += ["WorkerHeartbeat"]
