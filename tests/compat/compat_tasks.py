"""compat.celery tasks shared by the tests (the worker imports them through TASK_MODULES)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from compat.celery import Celery, Task, shared_task
from compat.celery.exceptions import Ignore, Reject, SoftTimeLimitExceeded

app = Celery("compat_tests", set_as_current=False)
app.config_from_object("django.conf:settings", namespace="CELERY")


class TransientError(Exception):
    """Raised by flaky tasks until they succeed."""


class RecordingTask(Task[Any, Any]):
    """A base class whose hooks append what happened to ``calls``."""

    calls: list[tuple[str, Any]] = []

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        self.calls.append(("before_start", task_id))

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        self.calls.append(("on_success", retval))

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        self.calls.append(("on_failure", type(exc).__name__))

    def on_retry(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        self.calls.append(("on_retry", type(exc).__name__))

    def after_return(
        self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        self.calls.append(("after_return", status))


@shared_task
def add(x: int, y: int) -> int:
    return x + y


@shared_task
def mul(x: int, y: int) -> int:
    return x * y


@shared_task
def tsum(values: list[int]) -> int:
    return sum(values)


@shared_task(name="compat.custom_name")
def named() -> str:
    return "named"


@app.task(bind=True)
def whoami(self: Task[Any, Any]) -> dict[str, Any]:
    request = self.request
    return {
        "id": request.id,
        "name": self.name,
        "retries": request.retries,
        "root_id": request.root_id,
        "parent_id": request.parent_id,
        "is_eager": request.is_eager,
        "called_directly": request.called_directly,
    }


@shared_task
def fail(message: str) -> None:
    raise TransientError(message)


@shared_task(bind=True, max_retries=3, default_retry_delay=0)
def retry_until(self: Task[Any, Any], succeed_on: int) -> int:
    if self.request.retries < succeed_on:
        raise self.retry(exc=TransientError(f"attempt {self.request.retries} failed"))
    return self.request.retries


@shared_task(
    bind=True, autoretry_for=(TransientError,), retry_kwargs={"max_retries": 2, "countdown": 0}
)
def auto_retry(self: Task[Any, Any], path: str) -> int:
    with Path(path).open("a") as fh:
        fh.write("x")
    raise TransientError(f"attempt {self.request.retries}")


@shared_task(base=RecordingTask, bind=True)
def hooked(self: Task[Any, Any], value: int) -> int:
    if value < 0:
        raise ValueError("negative")
    return value * 2


@shared_task
def ignored() -> None:
    raise Ignore()


@shared_task(queue="other-queue", priority=9, time_limit=30, soft_time_limit=20)
def routed() -> str:
    return "routed"


@shared_task
def write(path: str, label: str) -> str:
    with Path(path).open("a") as fh:
        fh.write(label + "\n")
    return label


@shared_task
def collect(values: list[Any]) -> list[Any]:
    """A chord body that returns the header results it got, in the order it got them."""
    return values


@shared_task
def append_json(values: list[Any], path: str) -> list[Any]:
    """A chord body that appends what it got to ``path`` (one line per run)."""
    with Path(path).open("a") as fh:
        fh.write(json.dumps(values) + "\n")
    return values


@shared_task
def reject_always() -> None:
    raise Reject("not now", requeue=True)


@shared_task(bind=True)
def reject_once(self: Task[Any, Any]) -> int:
    """Reject the first delivery; return how many times the message was requeued."""
    requeues = int((self.request.headers or {}).get("django_ray_requeues") or 0)
    if requeues == 0:
        raise Reject("first delivery", requeue=True)
    return requeues


@shared_task
def sleeper(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


@shared_task(soft_time_limit=1)
def soft_limited(seconds: float) -> str:
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "finished"


@shared_task(time_limit=1)
def hard_limited(seconds: float) -> str:
    try:
        time.sleep(seconds)
    except Exception:  # the hard limit cannot be swallowed
        return "swallowed"
    return "finished"
