"""A Django app's tasks, with fan-out helpers defined beside them (as users write them)."""

from __future__ import annotations

import sys
from typing import Any

from django.tasks import TaskContext, task

from django_ray.models import TaskRecord  # a task module imports models: it needs Django
from django_ray.runtime.distributed import (
    get_num_workers,
    parallel_map,
    parallel_starmap,
    scatter_gather,
)


def square(x: int) -> int:
    return x * x


def multiply(a: int, b: int) -> int:
    return a * b


def ray_is_up() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


@task
def fan_out(n: int) -> dict[str, Any]:
    offset = 10
    return {
        "squares": parallel_map(square, range(n)),
        "products": parallel_starmap(multiply, [(i, i + 1) for i in range(n)]),
        "closures": parallel_map(lambda x: x + offset, range(3)),
        "gathered": scatter_gather([(square, (3,)), lambda: "lambda"]),
        "on_ray": ray_is_up(),
        "workers": get_num_workers(),
    }


@task
def count_records() -> int:
    return TaskRecord.objects.count()


@task
def exits() -> None:
    sys.exit(3)


@task
def too_deep() -> list[Any]:
    value: list[Any] = []
    for _ in range(1500):
        value = [value]
    return value


@task
def where(n: int) -> dict[str, Any]:
    """Say which node ran this task and its fan-out (``RAY_NODE_LABEL`` is set per node)."""
    import os

    def label(_: int) -> str:
        return os.environ.get("RAY_NODE_LABEL", "head")

    return {"task": label(0), "fan_out": parallel_map(label, range(n))}


@task(takes_context=True)
def reports_progress(context: TaskContext) -> dict[str, Any]:
    """Report progress, then say what the record holds meanwhile (read back while running)."""
    from django_ray.progress import set_progress

    stored = set_progress(context, {"step": 1, "of": 2})
    record = TaskRecord.objects.get(pk=context.task_result.id)
    return {"stored": stored, "seen": [record.status, record.progress_state, record.progress]}
