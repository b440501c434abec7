"""Celery-style tasks WITHOUT Celery: objects with Celery's Task interface, registered by name.

``DuckTask`` is the smallest object the executor accepts (the interface ``compat.celery``
implements): ``run``, ``push_request``/``pop_request``, ``request``, ``retry()`` raising a
``Retry`` that publishes nothing, and Celery's option attributes and hooks. A worker that
cannot import Celery runs these; a real Celery client calls them by name.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import redis

from django_ray.registry import register

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/7")


class Retry(Exception):
    def __init__(self, exc: BaseException | None = None, when: float | None = None) -> None:
        super().__init__(exc, when)
        self.exc, self.when = exc, when


class MaxRetriesExceededError(Exception):
    """``retry()`` past ``max_retries`` without an ``exc``."""


class DuckError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)


class TransientError(Exception):
    """A failure worth retrying."""


class DuckTask:
    """Celery's Task interface, reduced to what ``django_ray_worker`` uses."""

    max_retries: int | None = 3
    default_retry_delay: float = 180
    autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: dict[str, Any] = {}
    retry_backoff: bool | float = False
    retry_backoff_max = 600
    retry_jitter = True
    ignore_result = False
    track_started = False
    time_limit: float | None = None
    soft_time_limit: float | None = None

    def __init__(self, fun: Callable[..., Any], *, bind: bool = False, **options: Any) -> None:
        self.fun, self.bind = fun, bind
        self.name = f"{__name__}.{fun.__name__}"
        self._stack: list[SimpleNamespace] = []
        for key, value in options.items():
            setattr(self, key, value)
        register(self.name, self)

    @property
    def request(self) -> SimpleNamespace:
        return self._stack[-1]

    def push_request(self, **fields: Any) -> None:
        self._stack.append(SimpleNamespace(**fields))

    def pop_request(self) -> None:
        self._stack.pop()

    def run(self, *args: Any, **kwargs: Any) -> Any:
        return self.fun(self, *args, **kwargs) if self.bind else self.fun(*args, **kwargs)

    __call__ = run

    def retry(
        self,
        exc: BaseException | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **_: Any,
    ) -> Retry:
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and self.request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(f"Can't retry {self.name}[{self.request.id}]")
        raise Retry(exc, self.default_retry_delay if countdown is None else countdown)

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        side_effects().rpush(f"duck:hooks:{task_id}", f"on_success:{retval}")

    def on_failure(self, exc: BaseException, task_id: str, *rest: Any) -> None:
        side_effects().rpush(f"duck:hooks:{task_id}", f"on_failure:{type(exc).__name__}")

    def after_return(self, status: str, retval: Any, task_id: str, *rest: Any) -> None:
        side_effects().rpush(f"duck:hooks:{task_id}", f"after_return:{status}")


def task(**options: Any) -> Callable[[Callable[..., Any]], DuckTask]:
    return lambda fun: DuckTask(fun, **options)


def side_effects() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL)


@task()
def add(x: int, y: int) -> int:
    return x + y


@task()
def tsum(values: list[int]) -> int:
    return sum(values)


@task()
def fail(message: str) -> None:
    raise ValueError(message)


@task()
def custom_fail() -> None:
    raise DuckError(418, "duck failure")


@task(bind=True, track_started=True)
def inspect_request(self: DuckTask, *args: Any, **kwargs: Any) -> dict[str, Any]:
    request = self.request
    meta = side_effects().get(f"celery-task-meta-{request.id}")
    return {
        "id": request.id,
        "retries": request.retries,
        "args": list(request.args),
        "kwargs": dict(request.kwargs),
        "root_id": request.root_id,
        "routing_key": request.delivery_info["routing_key"],
        "called_directly": request.called_directly if hasattr(request, "called_directly") else None,
        "is_eager": request.is_eager,
        "headers_x": request.headers.get("x-custom") if request.headers else None,
        "has_message": request.message.id == request.id,
        "seen_state": json.loads(meta)["status"] if meta else None,
    }


@task(bind=True, max_retries=3)
def flaky(self: DuckTask, succeed_on: int) -> int:
    if self.request.retries < succeed_on:
        raise self.retry(
            exc=TransientError(f"attempt {self.request.retries} failed"), countdown=0.2
        )
    return self.request.retries


@task(bind=True, max_retries=1)
def always_retry(self: DuckTask, with_exc: bool) -> None:
    raise self.retry(exc=TransientError("still failing") if with_exc else None, countdown=0.1)


@task(autoretry_for=(TransientError,), retry_backoff=True, retry_backoff_max=1, max_retries=2)
def auto_fail(key: str) -> None:
    side_effects().incr(f"duck:auto:{key}")
    raise TransientError("auto")


@task()
def soft_limited(seconds: float) -> str:
    try:
        time.sleep(seconds)
    except Exception as e:
        if type(e).__name__ == "SoftTimeLimitExceeded":
            return "cleaned up"
        raise
    return "finished"


@task(bind=True)
def hold(self: DuckTask, key: str, timeout: float = 30) -> str:
    """Hold the worker until a test releases ``key``, as ``cw_tasks.hold`` does."""
    store = side_effects()
    store.rpush(f"hold:started:{key}", self.request.id)
    if store.blpop([f"hold:release:{key}"], timeout=timeout) is None:
        raise TimeoutError(f"hold({key!r}) was never released")
    store.incr(f"duck:held:{key}")
    return "released"


@task(time_limit=0.5)
def hard_limited(seconds: float) -> str:
    try:
        time.sleep(seconds)
    except Exception:
        return "swallowed"
    return "finished"


@task()
def note(value: Any, key: str) -> Any:
    side_effects().rpush(f"duck:notes:{key}", json.dumps(value))
    return value


@task()
def errback(task_id: str, key: str) -> None:
    side_effects().rpush(f"duck:errbacks:{key}", task_id)
