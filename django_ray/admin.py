"""Admin for the system of record: browse tasks, their attempts, errors and results."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.utils.html import format_html

from django_ray.models import TaskRecord


@admin.register(TaskRecord)
class TaskRecordAdmin(admin.ModelAdmin):
    list_display = (
        "id", "task_name", "status", "queue", "priority", "attempt_count",
        "enqueued_at", "started_at", "finished_at", "duration",
    )  # fmt: skip
    list_filter = ("status", "queue", "origin", "backend")
    search_fields = ("id", "task_name")
    date_hierarchy = "enqueued_at"
    ordering = ("-enqueued_at",)
    readonly_fields = (
        "id", "task_name", "backend", "queue", "priority", "status", "origin", "args", "kwargs",
        "run_after", "expires", "enqueued_at", "started_at", "last_attempted_at", "finished_at",
        "worker_ids", "retries", "root_id", "parent_id", "group_id", "group_index",
        "return_value_pretty", "errors_pretty",
    )  # fmt: skip
    exclude = ("return_value", "errors", "children")

    @admin.display(description="attempts")
    def attempt_count(self, obj: TaskRecord) -> int:
        return obj.attempts

    @admin.display(description="duration")
    def duration(self, obj: TaskRecord) -> str:
        if obj.started_at and obj.finished_at:
            return f"{(obj.finished_at - obj.started_at).total_seconds():.3f}s"
        return "-"

    @admin.display(description="return value")
    def return_value_pretty(self, obj: TaskRecord) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.return_value, indent=2))

    @admin.display(description="errors")
    def errors_pretty(self, obj: TaskRecord) -> str:
        parts = [f"{e.get('exception_class_path')}\n{e.get('traceback', '')}" for e in obj.errors]
        return format_html("<pre>{}</pre>", "\n\n".join(parts) or "-")

    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False


# -- periodic tasks (django_ray.beat) -------------------------------------------------------

from django import forms  # noqa: E402
from django.contrib import messages  # noqa: E402
from django.db.models import F, QuerySet  # noqa: E402

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
