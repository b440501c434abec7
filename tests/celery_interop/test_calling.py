"""Real Celery clients call tasks; django_ray_worker runs them; AsyncResult.get() works."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from django_ray.models import TaskRecord, TaskStatus
from tests.celery_interop import cw_tasks
from tests.celery_interop.celery_app import QUEUE, RUN, app
from tests.celery_interop.conftest import OTHER_QUEUE
from tests.celery_interop.workers import RunningWorker, result_meta, stored_meta, unique
from tests.waiting import wait_until

pytestmark = pytest.mark.redis
TIMEOUT = 10


def test_delay_shared_task_and_send_task(worker: RunningWorker) -> None:
    assert cw_tasks.add.delay(2, 3).get(timeout=TIMEOUT) == 5
    assert cw_tasks.mul.delay(4, 5).get(timeout=TIMEOUT) == 20  # name="cw.mul"
    assert app.send_task("cw.mul", args=(6, 7)).get(timeout=TIMEOUT) == 42
    sent = app.send_task("tests.celery_interop.cw_tasks.add", kwargs={"x": 1, "y": 2})
    assert sent.get(timeout=TIMEOUT) == 3


def test_result_is_setex_plus_publish_in_celery_format(
    worker: RunningWorker, redis_client: redis.Redis
) -> None:
    task_id = unique("cw-format")
    key = f"celery-task-meta-{task_id}"
    pubsub = redis_client.pubsub()
    pubsub.subscribe(key)
    received: list[dict[str, Any]] = []

    def listen() -> None:
        for item in pubsub.listen():
            if item["type"] == "message":
                received.append(json.loads(item["data"]))
                return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert cw_tasks.add.apply_async((2, 3), task_id=task_id).get(timeout=TIMEOUT) == 5
    listener.join(TIMEOUT)
    pubsub.close()

    meta = result_meta(redis_client, task_id)
    assert meta is not None
    assert set(meta) == {"status", "result", "traceback", "children", "date_done", "task_id"}
    assert (meta["status"], meta["result"], meta["traceback"]) == ("SUCCESS", 5, None)
    assert meta["task_id"] == task_id and meta["children"] == []
    assert datetime.fromisoformat(meta["date_done"]).tzinfo is not None
    assert 0 < redis_client.ttl(key) <= 600  # SETEX with result_expires
    assert received == [meta]  # the PUBLISH that a waiting get() reads


def test_failures_reraise_the_same_exception_type(
    worker: RunningWorker, redis_client: redis.Redis
) -> None:
    result = cw_tasks.fail.delay("kaput")
    with pytest.raises(ValueError, match="kaput"):
        result.get(timeout=TIMEOUT)
    assert "ValueError: kaput" in result.traceback
    custom = cw_tasks.custom_fail.delay()
    with pytest.raises(cw_tasks.CwCustomError) as info:
        custom.get(timeout=TIMEOUT)
    assert info.value.args == (418, "custom failure")
    meta = result_meta(redis_client, custom.id)
    assert meta is not None and meta["status"] == "FAILURE"
    assert meta["result"] == {
        "exc_type": "CwCustomError",
        "exc_message": [418, "custom failure"],
        "exc_module": "tests.celery_interop.cw_tasks",
    }
    # propagate=False returns the exception instead of raising it.
    assert isinstance(custom.get(timeout=TIMEOUT, propagate=False), cw_tasks.CwCustomError)


def test_bound_task_sees_celery_request(worker: RunningWorker) -> None:
    result = cw_tasks.inspect_request.apply_async(
        (1, "a"), {"k": 2}, headers={"x-custom": "v"}, task_id=unique("cw-request")
    )
    request = result.get(timeout=TIMEOUT)
    assert request == {
        "id": result.id,
        "retries": 0,
        "args": [1, "a"],
        "kwargs": {"k": 2},
        "root_id": result.id,
        "parent_id": None,
        "correlation_id": result.id,
        "routing_key": QUEUE,
        "hostname": f"django_ray.cw-redis-{RUN}@" + request["hostname"].split("@", 1)[1],
        "called_directly": False,
        "is_eager": False,
        "headers": {"x-custom": "v"},
        "name": "tests.celery_interop.cw_tasks.inspect_request",
    }


def test_apply_async_options(worker: RunningWorker, redis_client: redis.Redis) -> None:
    now = datetime.now(UTC)
    countdown = cw_tasks.add.apply_async((1, 1), countdown=1)
    eta = cw_tasks.add.apply_async((2, 2), eta=now + timedelta(seconds=1))
    expires = cw_tasks.add.apply_async((3, 3), expires=60)
    other = cw_tasks.add.apply_async((4, 4), queue=OTHER_QUEUE)
    priority = cw_tasks.add.apply_async((5, 5), priority=5)
    limited = cw_tasks.soft_limited.apply_async((5,), soft_time_limit=0.3, time_limit=3)
    assert other.get(timeout=TIMEOUT) == 8
    assert priority.get(timeout=TIMEOUT) == 10
    assert expires.get(timeout=TIMEOUT) == 6
    assert limited.get(timeout=TIMEOUT) == "cleaned up"  # header timelimit [3, 0.3]
    assert countdown.get(timeout=TIMEOUT) == 2
    assert eta.get(timeout=TIMEOUT) == 4
    done_at = datetime.fromisoformat(stored_meta(redis_client, eta.id)["date_done"])
    assert done_at >= now + timedelta(seconds=1)

    ignored = cw_tasks.add.apply_async((1, 2), ignore_result=True)
    marker = cw_tasks.add.delay(0, 0)  # runs after the ignored one (one queue, one worker)
    assert marker.get(timeout=TIMEOUT) == 0
    assert ignored.get(timeout=TIMEOUT) is None
    assert result_meta(redis_client, ignored.id) is None


@pytest.mark.django_db(transaction=True)
def test_task_record_is_written_too(worker: RunningWorker) -> None:
    ok = cw_tasks.add.apply_async((2, 2))
    bad = cw_tasks.fail.apply_async(("boom",))
    assert ok.get(timeout=TIMEOUT) == 4
    with pytest.raises(ValueError):
        bad.get(timeout=TIMEOUT)
    # Celery's tracer stores the client's result first; the record follows within moments.
    wait_until(
        lambda: not TaskRecord.objects.unfinished().filter(pk__in=[ok.id, bad.id]).exists(),
        "both TaskRecords to finish",
    )
    record = TaskRecord.objects.get(pk=ok.id)
    assert (record.status, record.return_value, record.origin) == (
        TaskStatus.SUCCESSFUL,
        4,
        "celery",
    )
    assert record.task_name == "tests.celery_interop.cw_tasks.add"
    assert record.worker_ids == [f"cw-redis-{RUN}"]
    failed = TaskRecord.objects.get(pk=bad.id)
    error = failed.last_error or {}
    assert failed.status == TaskStatus.FAILED
    assert error["exception_class_path"] == "builtins.ValueError"
    assert "ValueError: boom" in error["traceback"]


def test_duplicate_delivery_never_overwrites_success(
    worker: RunningWorker, redis_client: redis.Redis
) -> None:
    task_id = unique("cw-sticky")
    assert cw_tasks.add.apply_async((1, 1), task_id=task_id).get(timeout=TIMEOUT) == 2
    # The same id again, now a task that would fail: it is not run, SUCCESS stays.
    cw_tasks.fail.apply_async(("again",), task_id=task_id)
    assert cw_tasks.add.delay(0, 1).get(timeout=TIMEOUT) == 1  # the duplicate was handled
    meta = result_meta(redis_client, task_id)
    assert meta is not None and (meta["status"], meta["result"]) == ("SUCCESS", 2)
