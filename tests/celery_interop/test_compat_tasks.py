"""compat-style tasks (Celery's Task interface, no Celery class) in a project with a Celery app.

Their results go through the Celery app's backend, like those of real Celery tasks, while
our worker publishes their retries, callbacks and chain steps.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from celery import chain, chord
from celery.canvas import Signature

from tests.celery_interop.celery_app import QUEUE, app
from tests.celery_interop.workers import RunningWorker, result_meta, unique
from tests.waiting import wait_until

# Its worker writes TaskRecords: pytest-django creates the test database only for a run
# that collects a django_db test, so this module declares it (it may run alone).
pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]
DUCK = "tests.celery_interop.duck_tasks"
TIMEOUT = 10


def s(name: str, *args: Any, immutable: bool = False) -> Signature:
    return app.signature(f"{DUCK}.{name}", args=args, immutable=immutable, queue=QUEUE)


def test_results_retries_and_canvas(worker: RunningWorker, redis_client: redis.Redis) -> None:
    key = unique("compat")
    ok = app.send_task(f"{DUCK}.add", (2, 3))
    assert ok.get(timeout=TIMEOUT) == 5
    assert set(result_meta(redis_client, ok.id) or {}) == {
        "status", "result", "traceback", "children", "date_done", "task_id",
    }  # fmt: skip
    assert app.send_task(f"{DUCK}.flaky", (1,)).get(timeout=TIMEOUT) == 1
    result = chain(s("add", 1, 2), s("add", 10), s("note", key)).apply_async()
    assert result.get(timeout=TIMEOUT) == 13
    failed = chain(s("fail", "mid"), s("add", 1)).apply_async()
    with pytest.raises(ValueError, match="mid"):
        failed.get(timeout=TIMEOUT)  # the rest of the chain failed through app.backend
    errback = app.send_task(f"{DUCK}.fail", ("x",), link_error=s("errback", key))
    with pytest.raises(ValueError):
        errback.get(timeout=TIMEOUT)
    assert (
        chord([s("add", i, 1) for i in range(3)], s("tsum")).apply_async().get(timeout=TIMEOUT) == 6
    )
    errbacks = wait_until(
        lambda: redis_client.lrange(f"duck:errbacks:{key}", 0, -1), "the error callback"
    )
    assert errbacks == [errback.id.encode()]
