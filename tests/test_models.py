"""TaskRecord: the state machine on the model, selection on the QuerySet."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_ray.models import QueueMessage, TaskRecord, TaskStatus

pytestmark = pytest.mark.django_db

ERROR = {"exception_class_path": "tests.tasks.CustomError", "traceback": "tb", "exc_message": []}


def new_record(**fields: Any) -> TaskRecord:
    return TaskRecord.objects.create(id=f"r-{TaskRecord.objects.count()}", task_name="t", **fields)


def updated_columns(action: Any) -> set[str]:
    """Run ``action`` and return the columns its single UPDATE wrote."""
    with CaptureQueriesContext(connection) as queries:
        action()
    (update,) = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    set_clause = update.split(" SET ", 1)[1].rsplit(" WHERE ", 1)[0]
    return set(re.findall(r'"(\w+)" = ', set_clause))


def test_an_attempt_goes_running_then_successful() -> None:
    record = new_record()
    # A new attempt also starts with no progress (the last attempt's report is cleared).
    assert updated_columns(lambda: record.mark_running("w1")) == {
        "status", "worker_ids", "started_at", "last_attempted_at",
        "progress", "progress_state", "progress_at",
    }  # fmt: skip
    assert (record.status, record.attempts) == (TaskStatus.RUNNING, 1)
    assert record.started_at == record.last_attempted_at
    assert updated_columns(lambda: record.mark_successful({"v": 1})) == {
        "status", "return_value", "finished_at", "children",
    }  # fmt: skip
    record.refresh_from_db()
    assert (record.status, record.return_value, record.django_status) == (
        "SUCCESSFUL",
        {"v": 1},
        "SUCCESSFUL",
    )
    assert record.is_finished and record.finished_at >= record.started_at


def test_retry_keeps_the_first_start_and_one_error_per_attempt() -> None:
    record = new_record()
    record.mark_running("w1")
    first_start = record.started_at
    eta = timezone.now() + timedelta(seconds=30)
    assert updated_columns(lambda: record.mark_retrying(ERROR, retries=1, eta=eta)) == {
        "status", "errors", "retries", "run_after",
    }  # fmt: skip
    assert (record.django_status, record.celery_state) == ("READY", "RETRY")
    record.mark_running("w2")
    assert record.started_at == first_start < record.last_attempted_at
    assert updated_columns(lambda: record.mark_failed(ERROR)) == {"status", "errors", "finished_at"}
    record.refresh_from_db()
    assert record.worker_ids == ["w1", "w2"]
    assert record.errors == [ERROR, ERROR]
    assert record.last_error == ERROR
    assert (record.django_status, record.celery_state) == ("FAILED", "FAILURE")


def test_revoked_is_failed_to_django_and_ready_puts_a_lost_attempt_back() -> None:
    record = new_record()
    record.mark_revoked("expired")
    assert (record.django_status, record.celery_state) == ("FAILED", "REVOKED")
    assert record.errors[-1]["exception_class_path"] == "celery.exceptions.TaskRevokedError"
    other = new_record()
    other.mark_running("w1")
    assert updated_columns(other.mark_ready) == {"status"}
    assert other.django_status == "READY" and not other.is_finished


def test_queryset_selection() -> None:
    old = new_record(queue="a", status=TaskStatus.SUCCESSFUL,
                     finished_at=timezone.now() - timedelta(days=30))  # fmt: skip
    new = new_record(queue="b", status=TaskStatus.FAILED, finished_at=timezone.now())
    running = new_record(queue="a", status=TaskStatus.RUNNING)
    retrying = new_record(queue="b", status=TaskStatus.RETRYING)
    assert set(TaskRecord.objects.finished()) == {old, new}
    assert set(TaskRecord.objects.unfinished()) == {running, retrying}
    assert set(TaskRecord.objects.for_queues(["a"])) == {old, running}
    assert set(TaskRecord.objects.for_queues(["*"])) == {old, new, running, retrying}
    assert set(TaskRecord.objects.older_than(timezone.now() - timedelta(days=1))) == {old}


def test_queue_messages_visible_now_in_priority_order() -> None:
    now = timezone.now()
    later = QueueMessage.objects.create(
        queue="q", payload="{}", visible_at=now + timedelta(hours=1)
    )
    low = QueueMessage.objects.create(queue="q", payload="{}", priority=-1, visible_at=now)
    high = QueueMessage.objects.create(queue="q", payload="{}", priority=5, visible_at=now)
    QueueMessage.objects.create(queue="other", payload="{}", visible_at=now)
    assert list(QueueMessage.objects.visible("q", now)) == [high, low]
    assert list(QueueMessage.objects.visible("q", now + timedelta(hours=2))) == [high, later, low]
