"""The admin as an operations console (docs/admin.md).

* Tasks (``TaskRecord``): a list that answers "what is wrong right now" (status, task,
  queue, attempts, exact start time, duration, an error summary, progress), filters by
  status, queue, task name, time range and trouble; a detail page that leads with the
  error and the traceback of each attempt; actions: retry, requeue, cancel, delete
  (finished records only: a record deleted before it finished would be created afresh
  by its next delivery, and the task would run twice).
* Dead letters: the records failed with ``DeliveryLimitExceeded`` (retry brings them back).
* Queue messages (``django://``) and the ETA schedule, read-only, with the actions that
  make sense on their tasks.

Every time is read as text (``Cast``) and parsed here, so a value the database holds but
Python cannot read (a malformed datetime written by hand in SQLite) shows as such instead
of failing the page.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from django.contrib import admin, messages
from django.db.models import CharField, Q, QuerySet
from django.db.models.functions import Cast
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from django_ray import conf, operations
from django_ray.models import (
    FINISHED,
    DeadLetter,
    QueueMessage,
    ScheduledMessage,
    TaskRecord,
    TaskStatus,
)

# Datetime fields read as text in the admin (see the module's docstring).
TIME_FIELDS = (
    "enqueued_at", "started_at", "last_attempted_at", "finished_at", "run_after", "expires",
    "progress_at",
)  # fmt: skip
STATUS_COLOURS = {
    TaskStatus.READY: "#6b7280",
    TaskStatus.RUNNING: "#2563eb",
    TaskStatus.RETRYING: "#d97706",
    TaskStatus.SUCCESSFUL: "#15803d",
    TaskStatus.FAILED: "#b91c1c",
    TaskStatus.REVOKED: "#4b5563",
}
DEAD_LETTER_ERROR = operations.DEAD_LETTER


# -- reading values defensively -----------------------------------------------------------


def _as_time(text: Any) -> datetime | str | None:
    """Return a stored time (read as text) as an aware datetime, or the raw text if unreadable."""
    if text is None or isinstance(text, datetime):
        return text
    try:
        value = parse_datetime(str(text).replace("T", " ", 1))
    except ValueError:
        value = None
    if value is None:
        return str(text)
    if timezone.is_naive(value):
        value = value.replace(tzinfo=UTC)  # stored in UTC (USE_TZ)
    return value


def _time_of(obj: Any, name: str) -> datetime | str | None:
    return _as_time(getattr(obj, f"{name}_text", None))


def exact_time(value: datetime | str | None) -> str | SafeString:
    """``2026-03-01 10:00:05`` (this site's time zone), with the full ISO time as a tooltip."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return format_html(
            '<span class="dr-unreadable" title="unreadable">{} (unreadable)</span>', value
        )
    local = timezone.localtime(value)
    return format_html(
        '<time datetime="{}" title="{}">{}</time>',
        value.isoformat(), local.isoformat(), local.strftime("%Y-%m-%d %H:%M:%S"),
    )  # fmt: skip


def _errors(obj: Any) -> list[dict[str, Any]]:
    errors = obj.errors
    if not isinstance(errors, list):
        return [{"exception_class_path": "?", "traceback": str(errors), "exc_message": []}]
    return [e if isinstance(e, dict) else {"exception_class_path": repr(e)} for e in errors]


def _error_line(error: dict[str, Any], limit: int | None = 140) -> str:
    path = str(error.get("exception_class_path") or "?")
    args = error.get("exc_message")
    text = " ".join(str(a) for a in args) if isinstance(args, list) else str(args or "")
    if not text:  # no args stored: the last line of the traceback
        text = (str(error.get("traceback") or "").strip().splitlines() or [""])[-1]
    line = f"{path.rsplit('.', 1)[-1]}: {text}" if text else path.rsplit(".", 1)[-1]
    if limit and len(line) > limit:
        line = line[: limit - 1] + "\u2026"
    return line


def _worker_ids(obj: Any) -> list[str]:
    ids = obj.worker_ids
    return [str(w) for w in ids] if isinstance(ids, list) else [str(ids)]


def _json(value: Any, indent: int | None = 2) -> str:
    try:
        return json.dumps(value, indent=indent, sort_keys=True, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


def _compact(value: Any, limit: int = 80) -> str:
    if isinstance(value, dict) and all(not isinstance(v, dict | list) for v in value.values()):
        text = " ".join(f"{k}={v}" for k, v in value.items())
    else:
        text = _json(value, indent=None)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _is_dead_lettered(obj: Any) -> bool:
    return obj.status == TaskStatus.FAILED and any(
        e.get("exception_class_path") == DEAD_LETTER_ERROR for e in _errors(obj)
    )


def _payload(raw: Any) -> dict[str, Any]:
    """A queue message's payload (text or JSON) as a dict; {} when unreadable."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return {}
    return raw if isinstance(raw, dict) else {}


def _headers(raw: Any) -> dict[str, Any]:
    headers = _payload(raw).get("headers")
    return headers if isinstance(headers, dict) else {}


# -- filters ------------------------------------------------------------------------------


class EnqueuedWithinFilter(admin.SimpleListFilter):
    """A time range, counted back from now (the calendar ranges are the next filter)."""

    title = "enqueued within"
    parameter_name = "within"
    RANGES = {
        "15m": ("the last 15 minutes", timedelta(minutes=15)),
        "1h": ("the last hour", timedelta(hours=1)),
        "24h": ("the last 24 hours", timedelta(days=1)),
        "7d": ("the last 7 days", timedelta(days=7)),
    }

    def lookups(self, request: Any, model_admin: Any) -> list[tuple[str, str]]:
        return [(key, label) for key, (label, _) in self.RANGES.items()] + [
            ("older", "more than 7 days ago")
        ]

    def queryset(self, request: Any, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value == "older":
            return queryset.filter(enqueued_at__lt=timezone.now() - timedelta(days=7))
        if value in self.RANGES:
            return queryset.filter(enqueued_at__gte=timezone.now() - self.RANGES[value][1])
        return queryset


class TroubleFilter(admin.SimpleListFilter):
    """What needs a look: failures, dead letters, RUNNING past its lease, progress reports."""

    title = "needs attention"
    parameter_name = "trouble"

    def lookups(self, request: Any, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("failed", "failed or revoked"),
            ("dead", "dead-lettered"),
            ("stale", "running past its lease (worker died?)"),
            ("retrying", "waiting to retry"),
            ("progress", "running, with progress"),
        ]

    def queryset(self, request: Any, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value == "failed":
            return queryset.filter(status__in=[TaskStatus.FAILED, TaskStatus.REVOKED])
        if value == "dead":
            return queryset.filter(status=TaskStatus.FAILED, errors__icontains=DEAD_LETTER_ERROR)
        if value == "stale":
            lease = timedelta(seconds=float(conf.get("VISIBILITY_TIMEOUT")))
            return queryset.filter(status=TaskStatus.RUNNING).filter(
                Q(last_attempted_at__lt=timezone.now() - lease) | Q(last_attempted_at__isnull=True)
            )
        if value == "retrying":
            return queryset.filter(status=TaskStatus.RETRYING)
        if value == "progress":
            return queryset.filter(status=TaskStatus.RUNNING, progress_state__isnull=False)
        return queryset


# -- tasks --------------------------------------------------------------------------------


def _report(request: HttpRequest, admin_: admin.ModelAdmin, verb: str, result: Any) -> None:
    """Tell the user what an action did, and what it left alone and why."""
    if result.done:
        shown = ", ".join(result.done[:10]) + (" ..." if len(result.done) > 10 else "")
        admin_.message_user(
            request, f"{verb} {len(result.done)} task(s): {shown}.", messages.SUCCESS
        )
    for task_id, why in result.refused.items():
        admin_.message_user(request, f"Not {verb.lower()} {task_id}: {why}.", messages.WARNING)
    for note in result.notes:
        admin_.message_user(request, note, messages.INFO)
    if not result.done and not result.refused:
        admin_.message_user(request, "Nothing selected.", messages.INFO)


class TaskActions:
    """The actions on task records, shared by the tasks and the dead letters."""

    message_user: Callable[..., None]
    get_queryset: Callable[[HttpRequest], QuerySet[Any]]

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """Acting on tasks needs the "change task" permission (a superuser has it)."""
        return bool(request.user.has_perm("django_ray.change_taskrecord"))

    def _records(self, queryset: QuerySet[Any]) -> list[TaskRecord]:
        # Whole rows, times included: the actions' fences compare them.
        ids = list(queryset.values_list("pk", flat=True))
        return list(TaskRecord.objects.filter(pk__in=ids).order_by("enqueued_at"))

    def _back(self, request: HttpRequest) -> HttpResponse | None:
        """Return to the detail page when the action was run from there."""
        target = request.POST.get("_next", "")
        if target.startswith("/") and not target.startswith("//"):
            return HttpResponseRedirect(target)
        return None

    @admin.action(description="Retry: run again as a new attempt (FAILED, REVOKED, dead letters)",
                  permissions=["operate"])  # fmt: skip
    def retry_tasks(self, request: HttpRequest, queryset: QuerySet[Any]) -> HttpResponse | None:
        _report(request, self, "Retried", operations.retry(self._records(queryset)))  # type: ignore[arg-type]
        return self._back(request)

    @admin.action(description="Requeue: publish again (a lost message, a stale RUNNING)",
                  permissions=["operate"])  # fmt: skip
    def requeue_tasks(self, request: HttpRequest, queryset: QuerySet[Any]) -> HttpResponse | None:
        _report(request, self, "Requeued", operations.requeue(self._records(queryset)))  # type: ignore[arg-type]
        return self._back(request)

    @admin.action(description="Cancel: revoke (waiting) or stop (running, Redis/RabbitMQ)",
                  permissions=["operate"])  # fmt: skip
    def cancel_tasks(self, request: HttpRequest, queryset: QuerySet[Any]) -> HttpResponse | None:
        _report(request, self, "Cancelled", operations.cancel(self._records(queryset)))  # type: ignore[arg-type]
        return self._back(request)

    @admin.action(description="Delete finished tasks (unfinished ones are refused)",
                  permissions=["delete"])  # fmt: skip
    def delete_finished(self, request: HttpRequest, queryset: QuerySet[Any]) -> HttpResponse | None:
        ids = list(queryset.values_list("pk", flat=True))
        _report(request, self, "Deleted", operations.delete_finished(ids))  # type: ignore[arg-type]
        return None


@admin.register(TaskRecord)
class TaskRecordAdmin(TaskActions, admin.ModelAdmin):
    list_display: tuple[str, ...] = (
        "short_id", "task_name", "status_badge", "queue", "attempt_count", "started",
        "duration", "error_summary", "progress_summary",
    )  # fmt: skip
    list_display_links = ("short_id",)
    list_filter = (
        "status", TroubleFilter, "queue", "task_name", EnqueuedWithinFilter,
        ("enqueued_at", admin.DateFieldListFilter), "origin",
    )  # fmt: skip
    search_fields = ("=id", "task_name")
    ordering = ("-enqueued_at",)
    list_per_page = 50
    actions: tuple[str, ...] = ("retry_tasks", "requeue_tasks", "cancel_tasks", "delete_finished")
    change_form_template = "admin/django_ray/taskrecord/change_form.html"
    change_list_template = "admin/django_ray/taskrecord/change_list.html"
    fieldsets = (
        ("Outcome", {"fields": ("status_badge", "error_headline", "attempts_detail")}),
        ("Progress", {"fields": ("progress_detail",)}),
        ("Call", {"fields": ("id", "task_name", "queue", "priority", "origin", "backend",
                             "args_pretty", "kwargs_pretty", "return_value_pretty")}),
        ("Attempts and times", {"fields": (
            "worker_ids_pretty", "ray_link", "retries", "enqueued", "started", "last_attempted",
            "finished", "duration", "run_after_time", "expires_time",
        )}),
        ("Workflow", {"fields": ("root_id", "parent_id", "group_id", "group_index"),
                      "classes": ("collapse",)}),
    )  # fmt: skip
    readonly_fields = tuple(
        str(name)
        for _, options in fieldsets
        for name in options["fields"]  # type: ignore[union-attr]
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[TaskRecord]:
        queryset = super().get_queryset(request).defer(*TIME_FIELDS)
        return queryset.annotate(
            **{f"{name}_text": Cast(name, CharField()) for name in TIME_FIELDS}
        )

    def get_actions(
        self, request: HttpRequest, action_location: Any = admin.ActionLocation.CHANGE_LIST
    ) -> dict[str, Any]:
        found = super().get_actions(request, action_location=action_location)
        found.pop("delete_selected", None)  # delete_finished refuses unfinished records
        return found

    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        if obj is not None and obj.status not in FINISHED:
            return False  # its next delivery would create it afresh and run it again
        return super().has_delete_permission(request, obj)

    def delete_model(self, request: Any, obj: Any) -> None:
        operations.delete_finished([obj.pk])

    def delete_queryset(self, request: Any, queryset: QuerySet[Any]) -> None:
        operations.delete_finished(list(queryset.values_list("pk", flat=True)))

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:  # fmt: skip
        status = TaskRecord.objects.filter(pk=object_id).values_list("status", flat=True).first()
        context = {
            **(extra_context or {}),
            "can_operate": self.has_operate_permission(request),
            "task_actions": task_actions(status),
        }
        return super().change_view(request, object_id, form_url, context)

    # -- columns -------------------------------------------------------------------------

    @admin.display(description="id", ordering="id")
    def short_id(self, obj: TaskRecord) -> str:
        """The id's first 8 characters (the link and the tooltip hold it whole)."""
        short = obj.id if len(obj.id) <= 10 else obj.id[:8] + "\u2026"
        return format_html('<code title="{}">{}</code>', obj.id, short)

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: TaskRecord) -> str:
        colour = STATUS_COLOURS.get(obj.status, "#6b7280")  # type: ignore[call-overload]
        label = obj.get_status_display()
        extra = " (dead-lettered)" if _is_dead_lettered(obj) else ""
        return format_html(
            '<span class="dr-status dr-{}" style="color:#fff;background:{};padding:1px 6px;'
            'border-radius:3px;white-space:nowrap">{}{}</span>',
            str(obj.status).lower(), colour, label, extra,
        )  # fmt: skip

    @admin.display(description="attempts")
    def attempt_count(self, obj: TaskRecord) -> int:
        return len(_worker_ids(obj))

    @admin.display(description="enqueued at", ordering="enqueued_at")
    def enqueued(self, obj: TaskRecord) -> str:
        return exact_time(_time_of(obj, "enqueued_at"))

    @admin.display(description="started at", ordering="started_at")
    def started(self, obj: TaskRecord) -> str:
        started = _time_of(obj, "started_at")
        if started is None:  # not started: how long it has been waiting says more
            return format_html(
                '<span class="dr-waiting">queued {}</span>',
                exact_time(_time_of(obj, "enqueued_at")),
            )
        return exact_time(started)

    @admin.display(description="last attempt at")
    def last_attempted(self, obj: TaskRecord) -> str:
        return exact_time(_time_of(obj, "last_attempted_at"))

    @admin.display(description="finished at")
    def finished(self, obj: TaskRecord) -> str:
        return exact_time(_time_of(obj, "finished_at"))

    @admin.display(description="run after (ETA)")
    def run_after_time(self, obj: TaskRecord) -> str:
        return exact_time(_time_of(obj, "run_after"))

    @admin.display(description="expires")
    def expires_time(self, obj: TaskRecord) -> str:
        return exact_time(_time_of(obj, "expires"))

    @admin.display(description="duration")
    def duration(self, obj: TaskRecord) -> str:
        started, finished = _time_of(obj, "started_at"), _time_of(obj, "finished_at")
        if not isinstance(started, datetime):
            return "-"
        if isinstance(finished, datetime):
            return f"{(finished - started).total_seconds():.3f}s"
        if obj.status == TaskStatus.RUNNING:
            return f"{(timezone.now() - started).total_seconds():.1f}s (running)"
        return "-"

    @admin.display(description="error")
    def error_summary(self, obj: TaskRecord) -> str:
        errors = _errors(obj)
        if not errors or obj.status == TaskStatus.SUCCESSFUL:
            return "-"
        line = _error_line(errors[-1])
        return format_html(
            '<span class="dr-error" title="{}">{}</span>', _error_line(errors[-1], None), line
        )

    @admin.display(description="progress")
    def progress_summary(self, obj: TaskRecord) -> str:
        if not obj.progress_state:
            return "-"
        text = _compact(obj.progress)
        when = _time_of(obj, "progress_at")
        title = when.isoformat() if isinstance(when, datetime) else str(when or "")
        return format_html(
            '<span class="dr-progress" title="reported {}"><b>{}</b> {}</span>',
            title, obj.progress_state, text,
        )  # fmt: skip

    # -- the detail page -------------------------------------------------------------------

    @admin.display(description="error")
    def error_headline(self, obj: TaskRecord) -> str:
        errors = _errors(obj)
        if not errors:
            return "-"
        last = errors[-1]
        if obj.status == TaskStatus.SUCCESSFUL:
            return format_html(
                '<span class="dr-error-earlier">Succeeded after {} failed attempt(s); the last '
                "one: {}</span>",
                len(errors), _error_line(last, None),
            )  # fmt: skip
        return format_html(
            '<strong class="dr-error-headline" style="color:#b91c1c">{}</strong>'
            "<br><code>{}</code>",
            _error_line(last, None), last.get("exception_class_path") or "?",
        )  # fmt: skip

    @admin.display(description="attempts")
    def attempts_detail(self, obj: TaskRecord) -> str:
        """Each attempt: its worker and, if it failed, its error and traceback (newest first)."""
        workers, errors = _worker_ids(obj), _errors(obj)
        count = max(len(workers), len(errors))
        if not count:
            return "No attempt yet."
        blocks = []
        for index in reversed(range(count)):
            worker = workers[index] if index < len(workers) else "?"
            error = errors[index] if index < len(errors) else None
            if error is None:
                outcome = (
                    "running"
                    if index == count - 1 and obj.status == TaskStatus.RUNNING
                    else (
                        "succeeded"
                        if obj.status == TaskStatus.SUCCESSFUL and index == count - 1
                        else "-"
                    )
                )
                blocks.append((index + 1, worker, outcome, ""))
            else:
                blocks.append((index + 1, worker, _error_line(error, None),
                               str(error.get("traceback") or "(no traceback)")))  # fmt: skip
        return format_html_join(
            "",
            '<div class="dr-attempt"><h4>Attempt {} on <code>{}</code>: {}</h4>{}</div>',
            (
                (number, worker, outcome, format_html(
                    '<pre class="dr-traceback" style="white-space:pre-wrap">{}</pre>', text
                ) if text else "")
                for number, worker, outcome, text in blocks
            ),
        )  # fmt: skip

    @admin.display(description="progress")
    def progress_detail(self, obj: TaskRecord) -> str:
        if not obj.progress_state:
            return "No progress reported."
        return format_html(
            "<strong>{}</strong> at {}<pre>{}</pre>",
            obj.progress_state, exact_time(_time_of(obj, "progress_at")), _json(obj.progress),
        )  # fmt: skip

    @admin.display(description="args")
    def args_pretty(self, obj: TaskRecord) -> str:
        return format_html("<pre>{}</pre>", _json(obj.args))

    @admin.display(description="kwargs")
    def kwargs_pretty(self, obj: TaskRecord) -> str:
        return format_html("<pre>{}</pre>", _json(obj.kwargs))

    @admin.display(description="return value")
    def return_value_pretty(self, obj: TaskRecord) -> str:
        if obj.status != TaskStatus.SUCCESSFUL:
            return "-"
        return format_html("<pre>{}</pre>", _json(obj.return_value))

    @admin.display(description="worker ids (one per attempt)")
    def worker_ids_pretty(self, obj: TaskRecord) -> str:
        return format_html_join(", ", "<code>{}</code>", ((w,) for w in _worker_ids(obj))) or "-"

    @admin.display(description="Ray")
    def ray_link(self, obj: TaskRecord) -> str:
        link = ray_link_of(obj)
        if link is None:
            return "-"
        label, url = link
        return format_html('<a href="{}" target="_blank" rel="noopener">{}</a>', url, label)


def task_actions(status: str | None) -> list[tuple[str, str, bool]]:
    """The actions a task's page offers for ``status``: (action, label, destructive)."""
    if status in (TaskStatus.FAILED, TaskStatus.REVOKED):
        return [("retry_tasks", "Retry", False)]
    if status in (TaskStatus.READY, TaskStatus.RETRYING):
        return [("requeue_tasks", "Requeue", False), ("cancel_tasks", "Cancel", True)]
    if status == TaskStatus.RUNNING:
        return [("requeue_tasks", "Requeue (if its worker died)", False),
                ("cancel_tasks", "Cancel (stop)", True)]  # fmt: skip
    return []


def dashboard_url() -> str | None:
    """The Ray dashboard: ``RAY_DASHBOARD_URL``, else ``RAY_ADDRESS`` when it is one (job mode)."""
    url = conf.get("RAY_DASHBOARD_URL") or conf.get("RAY_ADDRESS") or ""
    url = str(url)
    return url.rstrip("/") if url.startswith(("http://", "https://")) else None


def ray_link_of(obj: TaskRecord) -> tuple[str, str] | None:
    """The Ray job of the last attempt (job mode), or the Ray dashboard (local, cluster)."""
    from django_ray.models import WorkerHeartbeat

    workers = _worker_ids(obj)
    if not workers:
        return None
    last = workers[-1]
    base = dashboard_url()
    if last.endswith("/job"):  # job mode: the entrypoint's worker id
        from django_ray.message import TaskMessage
        from django_ray.runners.job import submission_id

        job = submission_id(TaskMessage(id=obj.id, task=obj.task_name, retries=obj.retries))
        if base is None:
            return None
        return f"Ray job {job}", f"{base}/#/jobs/{job}"
    mode = WorkerHeartbeat.objects.filter(pk=last).values_list("mode", flat=True).first()
    if mode in ("local", "cluster"):
        base = base or ("http://127.0.0.1:8265" if mode == "local" else None)
        if base is not None:
            return f"Ray dashboard ({mode} mode, worker {last})", f"{base}/#/overview"
    return None


@admin.register(DeadLetter)
class DeadLetterAdmin(TaskRecordAdmin):
    """FAILED records whose message was delivered MAX_DELIVERIES times without an outcome."""

    list_display = (
        "short_id", "task_name", "queue", "attempt_count", "enqueued", "finished",
        "error_summary", "parked",
    )  # fmt: skip
    list_filter = ("queue", "task_name", EnqueuedWithinFilter)  # type: ignore[assignment]
    actions = ("retry_tasks", "delete_finished")  # type: ignore[assignment]

    def get_queryset(self, request: HttpRequest) -> QuerySet[TaskRecord]:
        return (
            super()
            .get_queryset(request)
            .filter(status=TaskStatus.FAILED, errors__icontains=DEAD_LETTER_ERROR)
        )

    @admin.display(description="parked message (django://)")
    def parked(self, obj: TaskRecord) -> str:
        from django_ray.runtime.settle import DEAD_LETTER_SUFFIX

        queue = obj.queue + DEAD_LETTER_SUFFIX
        found = QueueMessage.objects.filter(
            queue=queue, payload__contains=f'"id": "{obj.id}"'
        ).exists()
        return f"in {queue}" if found else "-"


# -- the django:// queue and the ETA schedule ------------------------------------------------


class _ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False  # a message deleted leaves its task waiting forever: cancel it instead

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("django_ray.change_taskrecord"))

    def _task_ids(self, queryset: QuerySet[Any]) -> list[str]:
        raise NotImplementedError

    def _act(
        self, request: HttpRequest, queryset: QuerySet[Any], verb: str,
        action: Callable[[Sequence[TaskRecord]], Any],
    ) -> None:  # fmt: skip
        ids = self._task_ids(queryset)
        records = list(TaskRecord.objects.filter(pk__in=ids))
        result = action(records)
        missing = {i: "no task record" for i in ids if i not in {r.pk for r in records}}
        result = operations.ActionResult(
            done=result.done, skipped={**result.refused, **missing}, notes=result.notes
        )
        _report(request, self, verb, result)  # type: ignore[arg-type]

    @admin.action(description="Cancel their tasks", permissions=["operate"])
    def cancel_tasks(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        self._act(request, queryset, "Cancelled", operations.cancel)

    @admin.action(description="Retry their tasks (FAILED, dead-lettered)", permissions=["operate"])
    def retry_tasks(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        self._act(request, queryset, "Retried", operations.retry)

    @admin.display(description="task")
    def task_link(self, obj: Any) -> str:
        task_id = self._task_ids_of(obj)
        if not task_id:
            return "?"
        from django.urls import reverse

        url = reverse("admin:django_ray_taskrecord_change", args=[task_id])
        return format_html('<a href="{}">{}</a>', url, task_id)

    def _task_ids_of(self, obj: Any) -> str:
        raise NotImplementedError


@admin.register(QueueMessage)
class QueueMessageAdmin(_ReadOnly):
    """The messages of the django:// broker: waiting, leased to a worker, or not yet visible.

    A delivered message stays here, hidden for its lease (``visible_at``), until its worker
    acknowledges it; a message with an ETA is hidden until then.
    """

    list_display = (
        "id", "queue", "task_link", "task_name", "priority", "visibility", "visible_from",
        "delivered_count", "created",
    )  # fmt: skip
    list_filter = ("queue",)
    search_fields = ("queue", "payload")
    ordering = ("queue", "-priority", "visible_at", "id")
    actions = ("cancel_tasks", "retry_tasks")
    readonly_fields = (
        "id", "queue", "task_link", "task_name", "priority", "visibility", "visible_from",
        "delivered_count", "delivery_tag", "created", "payload_pretty",
    )  # fmt: skip
    fields = readonly_fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[QueueMessage]:
        return (
            super().get_queryset(request).defer("visible_at", "created_at")
            .annotate(visible_at_text=Cast("visible_at", CharField()),
                      created_at_text=Cast("created_at", CharField()))
        )  # fmt: skip

    def _task_ids_of(self, obj: Any) -> str:
        return str(_headers(obj.payload).get("id") or "")

    def _task_ids(self, queryset: QuerySet[Any]) -> list[str]:
        return [i for i in (self._task_ids_of(m) for m in queryset) if i]

    @admin.display(description="task name")
    def task_name(self, obj: QueueMessage) -> str:
        return str(_headers(obj.payload).get("task") or "?")

    @admin.display(description="visibility")
    def visibility(self, obj: QueueMessage) -> str:
        visible = _time_of(obj, "visible_at")
        if isinstance(visible, datetime) and visible > timezone.now():
            # Hidden: delivered and leased to a worker, or waiting for its ETA.
            return "leased to a worker" if obj.delivered_count else "not yet visible (ETA)"
        if obj.delivered_count:
            return "waiting (to be delivered again)"
        return "waiting"

    @admin.display(description="visible from", ordering="visible_at")
    def visible_from(self, obj: QueueMessage) -> str:
        return exact_time(_time_of(obj, "visible_at"))

    @admin.display(description="created at", ordering="created_at")
    def created(self, obj: QueueMessage) -> str:
        return exact_time(_time_of(obj, "created_at"))

    @admin.display(description="payload")
    def payload_pretty(self, obj: QueueMessage) -> str:
        data = _payload(obj.payload)
        return format_html("<pre>{}</pre>", _json(data) if data else obj.payload)


@admin.register(ScheduledMessage)
class ScheduledMessageAdmin(_ReadOnly):
    """Messages parked until their ETA (a countdown, a retry's delay)."""

    list_display = ("task_link", "task_name", "queue", "retries", "eta_time", "created")
    list_filter = ("queue",)
    search_fields = ("=task_id", "queue")
    ordering = ("eta",)
    actions = ("run_now", "cancel_tasks")
    readonly_fields = (
        "task_link",
        "task_name",
        "queue",
        "retries",
        "eta_time",
        "created",
        "payload_pretty",
    )
    fields = readonly_fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[ScheduledMessage]:
        return (
            super().get_queryset(request).defer("eta", "created_at")
            .annotate(eta_text=Cast("eta", CharField()),
                      created_at_text=Cast("created_at", CharField()))
        )  # fmt: skip

    def _task_ids_of(self, obj: Any) -> str:
        return str(obj.task_id)

    def _task_ids(self, queryset: QuerySet[Any]) -> list[str]:
        return list(queryset.values_list("task_id", flat=True))

    @admin.display(description="task name")
    def task_name(self, obj: ScheduledMessage) -> str:
        return str(_headers(obj.payload).get("task") or "?")

    @admin.display(description="ETA", ordering="eta")
    def eta_time(self, obj: ScheduledMessage) -> str:
        return exact_time(_time_of(obj, "eta"))

    @admin.display(description="parked at", ordering="created_at")
    def created(self, obj: ScheduledMessage) -> str:
        return exact_time(_time_of(obj, "created_at"))

    @admin.display(description="payload")
    def payload_pretty(self, obj: ScheduledMessage) -> str:
        return format_html("<pre>{}</pre>", _json(obj.payload))

    @admin.action(description="Run now: make their ETA now", permissions=["operate"])
    def run_now(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        count = ScheduledMessage.objects.filter(
            pk__in=list(queryset.values_list("pk", flat=True))
        ).update(eta=timezone.now())
        self.message_user(
            request, f"{count} message(s) due now: a worker consuming their queue publishes them."
        )


# -- periodic tasks (django_ray.beat) -------------------------------------------------------

from django import forms  # noqa: E402
from django.db.models import F  # noqa: E402

from django_ray.models import PeriodicEntry  # noqa: E402


class PeriodicEntryForm(forms.ModelForm):
    class Meta:
        model = PeriodicEntry
        fields = ("name", "task", "schedule", "args", "kwargs", "options", "enabled")

    def clean_task(self) -> str:
        from django_ray import registry
        from django_ray.exceptions import NotRegistered

        name: str = self.cleaned_data["task"]
        registry.autodiscover()
        try:
            registry.resolve(name)
        except NotRegistered:
            raise forms.ValidationError(
                f"No task {name!r} is registered; use a task name a worker runs."
            ) from None
        return name


@admin.register(PeriodicEntry)
class PeriodicEntryAdmin(admin.ModelAdmin):
    form = PeriodicEntryForm
    list_display = (
        "name", "task", "enabled", "schedule_text", "last_run_at", "next_run", "total_run_count",
        "source",
    )  # fmt: skip
    list_filter = ("enabled", "source")
    search_fields = ("name", "task")
    actions = ("enable", "disable", "run_now")
    ordering = ("name",)

    def get_readonly_fields(self, request: Any, obj: Any = None) -> Any:
        always = ("source", "last_run_at", "next_run", "total_run_count", "created_at")
        if obj is not None and obj.source == PeriodicEntry.Source.SETTINGS:
            # Declared in settings: change it there (enable/disable stay as actions).
            return ("name", "task", "schedule", "args", "kwargs", "options", "enabled", *always)
        return always

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        if obj is not None and obj.source == PeriodicEntry.Source.SETTINGS:
            return False  # the next scheduler start would create it again
        return super().has_delete_permission(request, obj)

    @admin.display(description="schedule")
    def schedule_text(self, obj: PeriodicEntry) -> str:
        from django_ray.beat import parse_schedule

        try:
            return str(parse_schedule(obj.schedule))
        except (TypeError, ValueError) as e:
            return f"invalid: {e}"

    @admin.display(description="next run")
    def next_run(self, obj: PeriodicEntry) -> Any:
        from django_ray.beat import next_run_of

        if not obj.enabled:
            return "-"
        return next_run_of(obj) or "-"

    @admin.action(description="Enable the selected periodic tasks")
    def enable(self, request: Any, queryset: QuerySet[PeriodicEntry]) -> None:
        count = queryset.update(enabled=True)
        self.message_user(request, f"{count} periodic task(s) enabled.")

    @admin.action(description="Disable the selected periodic tasks")
    def disable(self, request: Any, queryset: QuerySet[PeriodicEntry]) -> None:
        count = queryset.update(enabled=False)
        self.message_user(request, f"{count} periodic task(s) disabled.")

    @admin.action(description="Run the selected periodic tasks now")
    def run_now(self, request: Any, queryset: QuerySet[PeriodicEntry]) -> None:
        """Enqueue one run of each now; their schedules (the next tick) do not change."""
        from django_ray import beat, registry

        registry.autodiscover()
        for entry in queryset:
            try:
                task_id = beat.enqueue(entry.task, entry.args, entry.kwargs, entry.options)
            except Exception as e:
                self.message_user(request, f"{entry.name}: not sent ({e}).", messages.ERROR)
                continue
            PeriodicEntry.objects.filter(pk=entry.pk).update(
                total_run_count=F("total_run_count") + 1
            )
            self.message_user(request, f"{entry.name}: sent as task {task_id}.")
