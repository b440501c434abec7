"""Tasks declared with REAL Celery (``@shared_task`` and ``@app.task``), run by our worker.

Side effects go to Redis (``side_effect``), so a test can count runs across processes.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded

from tests.celery_interop.celery_app import REDIS_URL, app


class CwCustomError(Exception):
    """A project exception with two arguments: the client must rebuild it as it was."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)


class TransientError(Exception):
    """A failure worth retrying."""


def side_effects() -> redis.Redis:
    return redis.Redis.from_url(os.environ.get("CW_SIDE_EFFECTS", REDIS_URL))


def count_run(key: str, task_id: str) -> None:
    side_effects().hincrby(f"cw:runs:{key}", task_id, 1)


@shared_task
def add(x: int, y: int) -> int:
    return x + y


@shared_task(name="cw.mul")
def mul(x: int, y: int) -> int:
    return x * y


@app.task
def tsum(values: list[int]) -> int:
    return sum(values)


@app.task
def fail(message: str) -> None:
    raise ValueError(message)


@app.task
def custom_fail() -> None:
    raise CwCustomError(418, "custom failure")


@app.task(bind=True)
def inspect_request(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    request = self.request
    return {
        "id": request.id,
        "retries": request.retries,
        "args": list(request.args),
        "kwargs": dict(request.kwargs),
        "root_id": request.root_id,
        "parent_id": request.parent_id,
        "correlation_id": request.correlation_id,
        "routing_key": (request.delivery_info or {}).get("routing_key"),
        "hostname": request.hostname,
        "called_directly": request.called_directly,
        "is_eager": request.is_eager,
        "headers": request.headers,
        "name": self.name,
    }


@app.task(bind=True, max_retries=3)
def flaky(self: Task, succeed_on: int, countdown: float = 0.2) -> int:
    if self.request.retries < succeed_on:
        exc = TransientError(f"attempt {self.request.retries} failed")
        raise self.retry(exc=exc, countdown=countdown)
    return self.request.retries


@app.task(bind=True, max_retries=1)
def always_retry(self: Task, with_exc: bool) -> None:
    if with_exc:
        raise self.retry(exc=TransientError("still failing"), countdown=0.1)
    raise self.retry(countdown=0.1)


@app.task(bind=True, max_retries=5)
def retry_with_eta(self: Task) -> int:
    if self.request.retries == 0:
        raise self.retry(eta=datetime.now(UTC) + timedelta(seconds=0.5), max_retries=2)
    return self.request.retries


@app.task(
    bind=True,
    autoretry_for=(TransientError,),
    retry_backoff=True,
    retry_backoff_max=1,
    retry_jitter=True,
    max_retries=3,
)
def auto_flaky(self: Task, succeed_on: int) -> int:
    if self.request.retries < succeed_on:
        raise TransientError(f"auto attempt {self.request.retries}")
    return self.request.retries


@app.task(bind=True)
def record_run(self: Task, key: str, seconds: float = 0.0) -> str:
    time.sleep(seconds)
    count_run(key, self.request.id)
    side_effects().rpush(f"cw:hosts:{key}", self.request.hostname or "")
    return self.request.hostname or ""


@app.task(bind=True)
def hold(self: Task, key: str, timeout: float = 30) -> str:
    """Hold the worker until a test releases ``key`` (``workers.hold_started``/``release``).

    Says it runs (``hold:started:{key}``), then blocks in BLPOP, where a revoke with
    terminate interrupts it; the run is counted only once released.
    """
    store = side_effects()
    store.rpush(f"hold:started:{key}", self.request.id)
    if store.blpop([f"hold:release:{key}"], timeout=timeout) is None:
        raise TimeoutError(f"hold({key!r}) was never released")
    count_run(key, self.request.id)
    return "released"


@app.task
def sleep_then(value: Any, seconds: float) -> Any:
    time.sleep(seconds)
    return value


@app.task
def soft_limited(seconds: float) -> str:
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "finished"


@app.task(time_limit=1)
def hard_limited(seconds: float) -> str:
    try:
        time.sleep(seconds)
    except Exception:  # a hard limit is not an Exception the task can swallow
        return "swallowed"
    return "finished"


@app.task
def errback_old_style(task_id: str, key: str) -> None:
    side_effects().rpush(f"cw:errbacks:{key}", task_id)


@app.task
def errback_new_style(request: Any, exc: BaseException, traceback: Any, key: str = "") -> None:
    side_effects().rpush(f"cw:errbacks:{key}", f"{request.id}:{type(exc).__name__}")


@app.task
def note(value: Any, key: str) -> Any:
    side_effects().rpush(f"cw:notes:{key}", repr(value))
    return value
