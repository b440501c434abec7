"""The project's Celery tasks, unchanged: they import Django models (so they need Django)."""

from __future__ import annotations

import sys
from typing import Any

from celery import shared_task

from django_ray.models import TaskRecord
from django_ray.runtime.distributed import parallel_map


def double(x: int) -> int:
    return 2 * x


@shared_task
def ping() -> str:
    return "pong"


@shared_task(bind=True)
def fan_out(self: Any, n: int) -> dict[str, Any]:
    return {"doubles": parallel_map(double, range(n)), "id": self.request.id}


@shared_task
def count_records() -> int:
    return TaskRecord.objects.count()


@shared_task
def exits() -> None:
    sys.exit(3)
