"""Expiry, revoke, time limits and bad input on the Celery path; the worker keeps going."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from celery.exceptions import NotRegistered, TaskRevokedError, TimeLimitExceeded

from django_ray.models import TaskRecord, TaskStatus
from tests.celery_interop import cw_tasks
from tests.celery_interop.celery_app import QUEUE, app
from tests.celery_interop.workers import (
    RunningWorker,
    hold_started,
    release,
    result_meta,
    unique,
)

pytestmark = pytest.mark.redis
TIMEOUT = 10
REVOKED_EXPIRED = {
    "exc_type": "TaskRevokedError",
    "exc_message": ["expired"],
    "exc_module": "celery.exceptions",
}


def test_expired_task_is_not_run_and_stored_revoked(
    worker: RunningWorker, redis_client: redis.Redis
) -> None:
    key = unique("expired")
    result = cw_tasks.record_run.apply_async(
        (key,), expires=datetime.now(UTC) - timedelta(seconds=5)
    )
    with pytest.raises(TaskRevokedError, match="expired"):
        result.get(timeout=TIMEOUT)
    meta = result_meta(redis_client, result.id)
    assert meta is not None
    assert (meta["status"], meta["result"], meta["traceback"]) == ("REVOKED", REVOKED_EXPIRED, None)
    assert redis_client.hgetall(f"cw:runs:{key}") == {}


@pytest.mark.django_db(transaction=True)
def test_revoke_from_a_client_keeps_the_task_from_starting(
    worker: RunningWorker, redis_client: redis.Redis
) -> None:
    key, busy_key = unique("revoked"), unique("busy")
    busy = cw_tasks.hold.delay(busy_key)  # holds the worker until the revokes are in
    hold_started(redis_client, busy_key)
    queued = cw_tasks.record_run.delay(key)
    parked = cw_tasks.record_run.apply_async((key,), countdown=1)
    queued.revoke()
    parked.revoke()
    worker.wait_for(f"Revoked {queued.id}", TIMEOUT)
    worker.wait_for(f"Revoked {parked.id}", TIMEOUT)
    release(redis_client, busy_key)
    with pytest.raises(TaskRevokedError, match="revoked"):
        queued.get(timeout=TIMEOUT)
    with pytest.raises(TaskRevokedError, match="revoked"):
        parked.get(timeout=TIMEOUT)
    assert busy.get(timeout=TIMEOUT) == "released"
    assert cw_tasks.add.apply_async((1, 1), countdown=1.2).get(timeout=TIMEOUT) == 2
    # Both revoked messages have come up by now and were skipped.
    assert redis_client.hgetall(f"cw:runs:{key}") == {}
    for task_id in (queued.id, parked.id):
        record = TaskRecord.objects.get(pk=task_id)
        assert record.status == TaskStatus.REVOKED and record.worker_ids == []
    assert "Revoked " + queued.id in worker.output()


def test_soft_time_limit_is_raised_inside_the_task(worker: RunningWorker) -> None:
    result = cw_tasks.soft_limited.apply_async((5,), soft_time_limit=0.3)
    assert result.get(timeout=TIMEOUT) == "cleaned up"


def test_hard_time_limit_fails_the_attempt(
    worker: RunningWorker, redis_client: redis.Redis
) -> None:
    from_task = cw_tasks.hard_limited.delay(5)  # time_limit=1 on the task
    from_call = cw_tasks.hard_limited.apply_async((5,), time_limit=0.5)
    with pytest.raises(TimeLimitExceeded):
        from_task.get(timeout=TIMEOUT)
    with pytest.raises(TimeLimitExceeded):
        from_call.get(timeout=TIMEOUT)
    meta = result_meta(redis_client, from_call.id)
    assert meta is not None and meta["result"] == {
        "exc_type": "TimeLimitExceeded",
        "exc_message": [0.5],
        "exc_module": "billiard.exceptions",
    }
    assert cw_tasks.add.delay(2, 2).get(timeout=TIMEOUT) == 4  # the worker carries on


@pytest.mark.parametrize("name", ["cw.nope", "os.system", "builtins.eval"])
def test_unknown_or_dangerous_names_store_not_registered(
    worker: RunningWorker, redis_client: redis.Redis, name: str, tmp_path: Path
) -> None:
    canary = tmp_path / "pwned"
    arg = f"touch {canary}" if name == "os.system" else f"open({str(canary)!r}, 'w')"
    result = app.send_task(name, args=[arg])
    with pytest.raises(NotRegistered):
        result.get(timeout=TIMEOUT)
    meta = result_meta(redis_client, result.id)
    assert meta is not None
    assert meta["result"] == {
        "exc_type": "NotRegistered",
        "exc_message": [name],
        "exc_module": "celery.exceptions",
    }
    assert (meta["status"], meta["traceback"]) == ("FAILURE", None)
    assert not canary.exists()
    assert cw_tasks.add.delay(1, 2).get(timeout=TIMEOUT) == 3


@pytest.mark.parametrize(
    ("body", "content_type", "encoding"),
    [
        ('"not a list"', "application/json", "utf-8"),
        (b"\x80\x04K\x01.", "application/x-python-serialize", "binary"),  # pickle: never loaded
    ],
)
def test_malformed_message_stores_invalid_task_error(
    worker: RunningWorker,
    redis_client: redis.Redis,
    body: str | bytes,
    content_type: str,
    encoding: str,
) -> None:
    task_id = unique("malformed")
    with app.connection_for_write() as connection:
        connection.Producer().publish(
            body, routing_key=QUEUE, content_type=content_type, content_encoding=encoding,
            headers={"task": "tests.celery_interop.cw_tasks.add", "id": task_id},
        )  # fmt: skip
    result = app.AsyncResult(task_id)
    with pytest.raises(Exception) as info:
        result.get(timeout=TIMEOUT)
    assert type(info.value).__name__ == "InvalidTaskError"
    meta = result_meta(redis_client, task_id)
    assert meta is not None and meta["result"]["exc_module"] == "celery.exceptions"
    assert cw_tasks.add.delay(1, 2).get(timeout=TIMEOUT) == 3


def test_revoke_with_terminate_interrupts_the_running_attempt(
    worker: RunningWorker, redis_client: redis.Redis
) -> None:
    key = unique("terminated")
    running = cw_tasks.hold.delay(key)  # never released: records a run only if not stopped
    hold_started(redis_client, key)
    started = time.monotonic()
    running.revoke(terminate=True)
    with pytest.raises(TaskRevokedError, match="terminated"):
        running.get(timeout=TIMEOUT)
    assert time.monotonic() - started < 3
    assert redis_client.hgetall(f"cw:runs:{key}") == {}
    assert cw_tasks.add.delay(3, 4).get(timeout=TIMEOUT) == 7
