"""self.retry() and autoretry_for in real Celery tasks run by django_ray_worker."""

from __future__ import annotations

import pytest
import redis
from celery.exceptions import MaxRetriesExceededError

from django_ray.models import TaskRecord, TaskStatus
from tests.celery_interop import cw_tasks
from tests.celery_interop.workers import RunningWorker, result_meta
from tests.waiting import wait_until

pytestmark = pytest.mark.redis
TIMEOUT = 10


@pytest.mark.django_db(transaction=True)
def test_retry_republishes_same_id_and_stores_retry(
    worker: RunningWorker, redis_client: redis.Redis
) -> None:
    result = cw_tasks.flaky.delay(2, countdown=1.0)
    meta = wait_until(
        lambda: (m := result_meta(redis_client, result.id)) and m["status"] == "RETRY" and m,
        "the RETRY state to be stored",
    )
    assert meta["result"] == {
        "exc_type": "TransientError",
        "exc_message": ["attempt 0 failed"],
        "exc_module": "tests.celery_interop.cw_tasks",
    }
    assert "Retry in 1.0s" in meta["traceback"] and meta["date_done"] is None
    assert result.state == "RETRY"
    assert result.get(timeout=TIMEOUT) == 2  # request.retries on the attempt that succeeded
    # Celery's tracer stores the result before the worker writes the record
    # (docs/architecture.md).
    record = wait_until(
        lambda: (r := TaskRecord.objects.get(pk=result.id)).is_finished and r,
        "the record to be finished",
    )
    assert (record.status, record.retries, record.attempts) == (TaskStatus.SUCCESSFUL, 2, 3)
    assert [e["exception_class_path"] for e in record.errors] == [
        "tests.celery_interop.cw_tasks.TransientError"
    ] * 2


def test_past_max_retries_raises_exc_or_max_retries_exceeded(worker: RunningWorker) -> None:
    with_exc = cw_tasks.always_retry.delay(True)
    without = cw_tasks.always_retry.delay(False)
    with pytest.raises(cw_tasks.TransientError, match="still failing"):
        with_exc.get(timeout=TIMEOUT)
    with pytest.raises(MaxRetriesExceededError):
        without.get(timeout=TIMEOUT)


def test_retry_with_eta_and_max_retries_argument(worker: RunningWorker) -> None:
    assert cw_tasks.retry_with_eta.delay().get(timeout=TIMEOUT) == 1


def test_autoretry_for_with_backoff_and_jitter(worker: RunningWorker) -> None:
    # retry_backoff_max=1: each countdown is 0 or 1 second (full jitter).
    assert cw_tasks.auto_flaky.delay(2).get(timeout=TIMEOUT) == 2
    with pytest.raises(cw_tasks.TransientError, match="auto attempt 3"):
        cw_tasks.auto_flaky.delay(9).get(timeout=TIMEOUT)
