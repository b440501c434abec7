"""A Celery app's tasks after the migration's one change: the import of ``shared_task``."""

from __future__ import annotations

import sys
from typing import Any

from compat.celery import shared_task
from django_ray.models import TaskRecord
from django_ray.runtime.distributed import parallel_map


def cube(x: int) -> int:
    return x * x * x


@shared_task
def add(x: int, y: int) -> int:
    return x + y


@shared_task(bind=True)
def fan_out(self: Any, n: int) -> dict[str, Any]:
    return {"cubes": parallel_map(cube, range(n)), "id": self.request.id}


@shared_task
def count_records() -> int:
    return TaskRecord.objects.count()


@shared_task
def exits() -> None:
    sys.exit(3)


@shared_task
def too_deep() -> list[Any]:
    value: list[Any] = []
    for _ in range(1500):
        value = [value]
    return value


@shared_task(bind=True)
def reports_progress(self: Any) -> dict[str, Any]:
    """Report progress as a Celery task does, then say what the record and an unchanged
    Celery client (the project's app, on its result backend) see meanwhile."""
    from celeryproj.celery import app

    self.update_state(state="PROGRESS", meta={"step": 1, "of": 2})
    record = TaskRecord.objects.get(pk=self.request.id)
    client = app.AsyncResult(self.request.id)
    return {
        "record": [record.status, record.progress_state, record.progress],
        "celery": [client.state, client.info],
    }
