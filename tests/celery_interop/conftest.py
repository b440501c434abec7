"""Fixtures of the interop tests: Redis, and one django_ray_worker for the whole package."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.celery_interop.celery_app import QUEUE, RUN
from tests.celery_interop.workers import (
    RunningWorker,
    django_ray_worker,
    interop_env,
    purge_redis_queue,
)
from tests.services import REDIS_URL, require_redis

# A second queue the package worker consumes, for apply_async(queue=...).
OTHER_QUEUE = f"cw_other_{RUN}"


@pytest.fixture(scope="session")
def redis_client() -> redis.Redis:
    require_redis()
    return redis.Redis.from_url(REDIS_URL)


@pytest.fixture(scope="package")
def worker(
    redis_client: redis.Redis, django_db_setup: None, django_db_blocker: object
) -> Iterator[RunningWorker]:
    """``django_ray_worker --sync`` on Redis, with the Celery app, for the Redis tests."""
    for queue in (QUEUE, OTHER_QUEUE):
        purge_redis_queue(redis_client, queue)
    env = interop_env(REDIS_URL, QUEUE)
    # compat-style tasks too (duck_tasks), stored through the Celery app's backend.
    env["DJANGO_RAY_TASK_MODULES"] = "tests.tasks,tests.celery_interop.duck_tasks"
    with django_ray_worker(f"cw-redis-{RUN}", [QUEUE, OTHER_QUEUE], **env) as running:
        yield running
