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
