"""A real Celery client and ``django_ray_worker --local``: revoke(terminate=True), time limits.

The tasks are compat.celery tasks, run in Ray worker processes; results reach the client
through Celery's Redis format (no Celery app in the worker).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery.canvas import xstarmap
from celery.exceptions import TaskRevokedError, TimeLimitExceeded
from celery.result import AsyncResult

from django_ray.models import TaskRecord, TaskStatus
from tests.celery_interop.celery_app import RUN, app
from tests.celery_interop.workers import (
    RunningWorker,
    django_ray_worker,
    interop_env,
    purge_redis_queue,
    stored_meta,
)
from tests.services import REDIS_URL
from tests.waiting import wait_until

# Transactional, so pytest-django keeps the tests together (one Ray start for the module).
pytestmark = [
    pytest.mark.redis,
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]
QUEUE = f"cw_ray_{RUN}"
COMPAT = "tests.compat.compat_tasks"
TIMEOUT = 30


@pytest.fixture(scope="module")
def ray_worker(
    redis_client: redis.Redis, django_db_setup: None, django_db_blocker: object
) -> Iterator[RunningWorker]:
    from tests.raycluster import require_ray

    require_ray()
    purge_redis_queue(redis_client, QUEUE)
    env = interop_env(REDIS_URL, QUEUE, celery_app=False)
    env["DJANGO_RAY_TASK_MODULES"] = f"tests.tasks,{COMPAT}"
    mode = ("--local", "--num-cpus=2")
    with django_ray_worker(f"cw-ray-{RUN}", [QUEUE], mode=mode, ready_timeout=120, **env) as w:
        yield w


def send(name: str, *args: Any, **options: Any) -> AsyncResult:
    return app.send_task(f"{COMPAT}.{name}", args=args, queue=QUEUE, **options)


def status(task_id: str) -> str | None:
    return TaskRecord.objects.filter(pk=task_id).values_list("status", flat=True).first()


def test_revoke_with_terminate_cancels_the_ray_task(ray_worker: RunningWorker) -> None:
    running = send("sleeper", 60)
    wait_until(lambda: status(running.id) == TaskStatus.RUNNING, "the task to run", timeout=TIMEOUT)
    started = time.monotonic()
    running.revoke(terminate=True)
    with pytest.raises(TaskRevokedError, match="terminated"):
        running.get(timeout=TIMEOUT)
    assert time.monotonic() - started < 15
    record = TaskRecord.objects.get(pk=running.id)
    assert record.status == TaskStatus.REVOKED
    assert (record.last_error or {}).get("exc_message") == ["terminated"]
    assert f"Terminating {running.id}" in ray_worker.output()
    assert send("add", 1, 2).get(timeout=TIMEOUT) == 3  # the worker carries on


def test_soft_and_hard_time_limits_in_ray(
    ray_worker: RunningWorker, redis_client: redis.Redis
) -> None:
    assert send("soft_limited", 10).get(timeout=TIMEOUT) == "cleaned up"  # the task's limit
    started = time.monotonic()
    assert send("soft_limited", 10, soft_time_limit=0.3).get(timeout=TIMEOUT) == "cleaned up"
    assert time.monotonic() - started < 5  # the header's limit
    # The header's hard limit: the Ray process fails the attempt, the runner's backstop
    # (cancelling the Ray task later) finds it finished and stores nothing more.
    hard = send("hard_limited", 30, time_limit=1)
    with pytest.raises(TimeLimitExceeded):
        hard.get(timeout=TIMEOUT)
    assert stored_meta(redis_client, hard.id)["result"] == {
        "exc_type": "TimeLimitExceeded",
        "exc_message": [1],
        "exc_module": "billiard.exceptions",
    }
    record = TaskRecord.objects.get(pk=hard.id)
    assert record.status == TaskStatus.FAILED
    assert len(record.errors) == 1 and len(record.worker_ids) == 1
    assert record.errors[0]["exception_class_path"] == "compat.celery.exceptions.TimeLimitExceeded"


def test_celery_builtins_run_in_ray_processes(ray_worker: RunningWorker) -> None:
    starmap = xstarmap(app.signature(f"{COMPAT}.add"), [(1, 2), (3, 4)], app=app).set(queue=QUEUE)
    assert starmap.apply_async().get(timeout=TIMEOUT) == [3, 7]
