"""A worker that cannot import Celery runs Celery-style tasks for real Celery clients.

Results are written in Celery's Redis format by redis-py (``RedisStore``), canvas
follow-ups are published by our worker, and the chord size the Celery client stored is
honoured. A ``celery`` package that records any import attempt shadows the real one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import chain, chord, group
from celery.canvas import Signature, xstarmap
from celery.exceptions import NotRegistered, TaskRevokedError
from celery.result import AsyncResult

from tests.celery_interop.celery_app import RUN, app
from tests.celery_interop.workers import (
    RunningWorker,
    django_ray_worker,
    hold_started,
    interop_env,
    purge_redis_queue,
    release,
    result_meta,
    stored_meta,
    unique,
)
from tests.conftest import ROOT
from tests.services import REDIS_URL
from tests.waiting import wait_until

# Its worker writes TaskRecords: pytest-django creates the test database only for a run
# that collects a django_db test, so this module declares it (it may run alone).
pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]
QUEUE = f"cw_duck_{RUN}"
DUCK = "tests.celery_interop.duck_tasks"
TIMEOUT = 10
BLOCKER = """
from pathlib import Path
from typing import Any
Path({marker!r}).write_text("celery was imported")
raise ImportError("celery is not installed in this worker")
"""


def s(name: str, *args: Any, immutable: bool = False, **options: Any) -> Signature:
    return app.signature(f"{DUCK}.{name}", args=args, immutable=immutable, queue=QUEUE, **options)


@pytest.fixture(scope="module")
def marker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("no-celery") / "imported"


@pytest.fixture(scope="module")
def duck_worker(
    redis_client: redis.Redis, django_db_setup: None, marker: Path
) -> Iterator[RunningWorker]:
    blocker = marker.parent / "site"
    (blocker / "celery").mkdir(parents=True)
    (blocker / "celery" / "__init__.py").write_text(BLOCKER.format(marker=str(marker)))
    purge_redis_queue(redis_client, QUEUE)
    env = interop_env(REDIS_URL, QUEUE, celery_app=False)
    env["DJANGO_RAY_TASK_MODULES"] = f"tests.tasks,{DUCK}"
    env["PYTHONPATH"] = os.pathsep.join([str(blocker), str(ROOT), str(ROOT / "testproject")])
    with django_ray_worker(f"cw-duck-{RUN}", [QUEUE], **env) as running:
        yield running
    assert not marker.exists(), "the worker imported celery"


def send(name: str, *args: Any, **options: Any) -> AsyncResult:
    return app.send_task(f"{DUCK}.{name}", args=args, queue=QUEUE, **options)


def test_results_in_celery_format(duck_worker: RunningWorker, redis_client: redis.Redis) -> None:
    ok = send("add", 2, 3)
    assert ok.get(timeout=TIMEOUT) == 5
    meta = result_meta(redis_client, ok.id)
    assert meta is not None and set(meta) == {
        "status", "result", "traceback", "children", "date_done", "task_id",
    }  # fmt: skip
    with pytest.raises(ValueError, match="kaput"):
        send("fail", "kaput").get(timeout=TIMEOUT)
    custom = send("custom_fail")
    with pytest.raises(Exception) as info:
        custom.get(timeout=TIMEOUT)
    assert type(info.value).__name__ == "DuckError" and info.value.args == (418, "duck failure")
    assert stored_meta(redis_client, custom.id)["result"] == {
        "exc_type": "DuckError",
        "exc_message": [418, "duck failure"],
        "exc_module": DUCK,
    }
    hooks = redis_client.lrange(f"duck:hooks:{ok.id}", 0, -1)
    assert hooks == [b"on_success:5", b"after_return:SUCCESS"]


def test_request_and_track_started(duck_worker: RunningWorker) -> None:
    result = send("inspect_request", 1, headers={"x-custom": "v"}, kwargs={"k": 2})
    assert result.get(timeout=TIMEOUT) == {
        "id": result.id,
        "retries": 0,
        "args": [1],
        "kwargs": {"k": 2},
        "root_id": result.id,
        "routing_key": QUEUE,
        "called_directly": False,
        "is_eager": False,
        "headers_x": "v",
        "has_message": True,
        "seen_state": "STARTED",
    }


def test_retries(duck_worker: RunningWorker, redis_client: redis.Redis) -> None:
    assert send("flaky", 2).get(timeout=TIMEOUT) == 2
    with pytest.raises(Exception, match="still failing"):
        send("always_retry", True).get(timeout=TIMEOUT)
    with pytest.raises(Exception) as info:
        send("always_retry", False).get(timeout=TIMEOUT)
    assert type(info.value).__name__ == "MaxRetriesExceededError"
    key = unique("auto")
    with pytest.raises(Exception, match="auto"):
        send("auto_fail", key).get(timeout=TIMEOUT)
    assert redis_client.get(f"duck:auto:{key}") == b"3"  # max_retries=2: three attempts


def test_canvas(duck_worker: RunningWorker, redis_client: redis.Redis) -> None:
    key = unique("duck-canvas")
    result = chain(s("add", 1, 2), s("add", 10), s("add", 1, 1, immutable=True)).apply_async()
    assert result.get(timeout=TIMEOUT) == 2
    assert result.parent.get(timeout=TIMEOUT) == 13
    failed = chain(s("fail", "mid"), s("add", 1)).apply_async()
    with pytest.raises(ValueError, match="mid"):
        failed.get(timeout=TIMEOUT)
    linked = send("fail", "x", link_error=s("errback", key))
    with pytest.raises(ValueError):
        linked.get(timeout=TIMEOUT)
    assert group(s("add", i, i) for i in range(3)).apply_async().get(timeout=TIMEOUT) == [0, 2, 4]
    header = [s("add", i, 0) for i in range(3)]
    assert chord(header, s("note", key)).apply_async().get(timeout=TIMEOUT) == [0, 1, 2]
    starmap = xstarmap(app.signature(f"{DUCK}.add"), [(1, 2), (3, 4)], app=app).set(queue=QUEUE)
    assert starmap.apply_async().get(timeout=TIMEOUT) == [3, 7]
    errbacks = wait_until(
        lambda: redis_client.lrange(f"duck:errbacks:{key}", 0, -1), "the error callback"
    )
    assert errbacks == [linked.id.encode()]


def test_time_limits_revoke_and_bad_names(
    duck_worker: RunningWorker, redis_client: redis.Redis
) -> None:
    assert send("soft_limited", 5, soft_time_limit=0.3).get(timeout=TIMEOUT) == "cleaned up"
    hard = send("hard_limited", 5)
    with pytest.raises(Exception) as info:
        hard.get(timeout=TIMEOUT)
    assert type(info.value).__name__ == "TimeLimitExceeded"
    busy_key, long_key = unique("duck-busy"), unique("duck-long")
    busy = send("hold", busy_key)  # holds the worker until the revoke is in
    hold_started(redis_client, busy_key)
    queued = send("add", 1, 1)
    queued.revoke()
    duck_worker.wait_for(f"Revoked {queued.id}", TIMEOUT)
    release(redis_client, busy_key)
    with pytest.raises(TaskRevokedError):
        queued.get(timeout=TIMEOUT)
    assert busy.get(timeout=TIMEOUT) == "released"
    long = send("hold", long_key)  # never released
    hold_started(redis_client, long_key)
    long.revoke(terminate=True)
    with pytest.raises(TaskRevokedError, match="terminated"):
        long.get(timeout=TIMEOUT)
    assert redis_client.get(f"duck:held:{long_key}") is None
    with pytest.raises(NotRegistered):
        app.send_task("os.system", args=["true"], queue=QUEUE).get(timeout=TIMEOUT)
    assert send("add", 2, 2).get(timeout=TIMEOUT) == 4
