"""Task functions shared by the tests (imported by workers through TASK_MODULES)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from django.tasks import TaskContext, task


class CustomError(Exception):
    """A project-specific exception whose dotted path must survive."""


@task
def add(x: int, y: int) -> int:
    return x + y


@task
def noop() -> None:
    return None


@task(queue_name="other")
def on_other_queue(value: str) -> str:
    return value.upper()


@task
def fail(message: str) -> None:
    raise CustomError(message)


@task
def non_json_result() -> object:
    return object()


@task(takes_context=True)
def with_context(context: TaskContext, value: int) -> dict[str, object]:
    return {
        "attempt": context.attempt,
        "id": context.task_result.id,
        "status": str(context.task_result.status),
        "value": value,
    }


@task
async def async_add(x: int, y: int) -> int:
    await asyncio.sleep(0)
    return x + y


@task(max_attempts=3, retry_delay=0, takes_context=True)
def flaky(context: TaskContext, succeed_on: int) -> int:
    if context.attempt < succeed_on:
        raise CustomError(f"attempt {context.attempt} failed")
    return context.attempt


@task
def record_order(path: str, label: str) -> str:
    with Path(path).open("a") as fh:
        fh.write(label + "\n")
    return label


@task
def sleep_then_touch(seconds: float, path: str) -> str:
    time.sleep(seconds)
    Path(path).write_text(str(os.getpid()))
    return path


@task
def count_records() -> int:
    from django_ray.models import TaskRecord

    return TaskRecord.objects.count()


@task
def cpu_bound(milliseconds: int) -> int:
    deadline = time.perf_counter() + milliseconds / 1000
    n = 0
    while time.perf_counter() < deadline:
        n += 1
    return n


@task(max_attempts=2, takes_context=True)
def crash_first_attempt(context: TaskContext) -> int:
    """Kill the process running the first attempt (a dead Ray worker or job)."""
    if context.attempt == 1:
        os._exit(17)
    return context.attempt


@task
def crash_always() -> None:
    os._exit(17)


@task(time_limit=2)
def overrun(seconds: float) -> str:
    time.sleep(seconds)
    return "finished"


@task
def fan_out(values: list[int]) -> list[int]:
    from django_ray.runtime.distributed import get_num_workers, parallel_map

    factor = 10 if get_num_workers() >= 1 else 0
    return parallel_map(lambda v: v * factor, values)


@task(takes_context=True)
def slow_first_attempt(context: TaskContext, seconds: float, path: str) -> int:
    """Sleep on the first attempt only (a worker stopped mid-task hands it to the next)."""
    Path(path).with_suffix(".started").write_text(str(context.attempt))
    if context.attempt == 1:
        time.sleep(seconds)
    Path(path).write_text(str(context.attempt))
    return context.attempt


def _assigned_resources() -> dict[str, float]:
    """Return the Ray resources assigned to the running Ray task ({} outside Ray)."""
    import ray

    if not ray.is_initialized():
        return {}
    return dict(ray.get_runtime_context().get_assigned_resources())


@task(ray_options={"num_cpus": 2})
def resources_declared() -> dict[str, float]:
    """Declares its Ray resources with ``@task(ray_options=...)``."""
    return _assigned_resources()


@task
def resources_configured() -> dict[str, float]:
    """Gets its Ray resources from ``TASKS[...]["OPTIONS"]["TASK_OPTIONS"]`` only."""
    return _assigned_resources()


@task
def resources_default() -> dict[str, float]:
    return _assigned_resources()


@task(ray_options={"entrypoint_num_cpus": 1})
def job_entrypoint_cpu() -> str:
    """In Ray Job mode, its job reserves one CPU for the entrypoint."""
    return "reserved"


@task(max_attempts=2, takes_context=True)
def slow_to_fail_first(context: TaskContext, seconds: float) -> int:
    """Fail the first attempt late (after ``seconds``); succeed at once on the next."""
    if context.attempt == 1:
        time.sleep(seconds)
        raise CustomError("the first attempt fails, late")
    return context.attempt


@task
def length(data: str) -> int:
    return len(data)


@task
def journal(path: str, label: str, seconds: float) -> str:
    """Append ``start <label> <time>``, sleep, then append ``end <label> <time>`` to ``path``.

    One short append each, so lines from several processes never interleave: the file
    tells how often the body started and finished (the kill -9 tests count them).
    """
    with Path(path).open("a") as fh:
        fh.write(f"start {label} {time.time():.3f}\n")
    time.sleep(seconds)
    with Path(path).open("a") as fh:
        fh.write(f"end {label} {time.time():.3f}\n")
    return label
