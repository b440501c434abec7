"""RayTaskBackend: Django 6.1's BaseTaskBackend contract, end to end through the worker."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest
from asgiref.sync import async_to_sync
from django.core.management import call_command
from django.tasks import TaskResultStatus, task_backends
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist, TaskResultMismatch
from django.tasks.signals import task_enqueued
from django.test import override_settings
from django.utils import timezone

from django_ray.models import TaskRecord, TaskStatus
from tests import tasks
from tests.inprocess import queue_size

pytestmark = pytest.mark.django_db


def run_worker(queue: str, *extra: str) -> None:
    call_command("django_ray_worker", f"--queue={queue}", "--sync", "--batch", *extra)


# -- what the backend declares ---------------------------------------------------------
# Each of Django's ``supports_*`` flags, and what a backend declaring it must do for real.


def defer_works(queue: str, log: Path) -> None:
    """A task with ``run_after`` is accepted, and the worker never starts it early."""
    due = timezone.now() + timedelta(seconds=0.5)
    later = tasks.record_order.using(queue_name=queue, run_after=due).enqueue(str(log), "later")
    run_worker(queue)
    later.refresh()
    assert later.status == TaskResultStatus.SUCCESSFUL
    assert later.started_at is not None and later.started_at >= due


def priority_works(queue: str, log: Path) -> None:
    """Of two waiting tasks, the one of higher priority runs first."""
    tasks.record_order.using(queue_name=queue, priority=-10).enqueue(str(log), "low")
    tasks.record_order.using(queue_name=queue, priority=10).enqueue(str(log), "high")
    run_worker(queue)
    assert log.read_text().split() == ["high", "low"]


def async_task_works(queue: str, log: Path) -> None:
    """A coroutine function is accepted, and the worker awaits it."""
    result = tasks.async_add.using(queue_name=queue).enqueue(20, 22)
    run_worker(queue)
    result.refresh()
    assert (result.status, result.return_value) == (TaskResultStatus.SUCCESSFUL, 42)


def get_result_works(queue: str, log: Path) -> None:
    """A result fetched by id, by another object, shows what the worker did."""
    result = tasks.add.using(queue_name=queue).enqueue(2, 3)
    run_worker(queue)
    fetched = task_backends["default"].get_result(result.id)
    assert fetched is not result
    assert (fetched.id, fetched.status, fetched.return_value) == (
        result.id,
        TaskResultStatus.SUCCESSFUL,
        5,
    )


FEATURES = {
    "supports_defer": defer_works,
    "supports_priority": priority_works,
    "supports_async_task": async_task_works,
    "supports_get_result": get_result_works,
}


@pytest.mark.parametrize(
    "flag", sorted(name for name in vars(BaseTaskBackend) if name.startswith("supports_"))
)
def test_every_feature_django_defines_is_declared_and_works(
    flag: str, queue: str, tmp_path: Path
) -> None:
    # The flags come from Django: one it adds later fails here until the backend has it.
    assert getattr(task_backends["default"], flag), f"RayTaskBackend does not declare {flag}."
    assert flag in FEATURES, f"No test here shows that {flag} works."
    FEATURES[flag](queue, tmp_path / "order.txt")


# -- enqueue ---------------------------------------------------------------------------


def test_enqueue_stores_a_record_publishes_and_returns_ready(queue: str) -> None:
    before = timezone.now()
    result = tasks.add.using(queue_name=queue, priority=7).enqueue(1, y=2)

    assert result.status == TaskResultStatus.READY
    assert isinstance(result.id, str) and len(result.id) < 64
    assert result.enqueued_at is not None and result.enqueued_at.tzinfo is not None
    assert before <= result.enqueued_at <= timezone.now()
    assert (result.started_at, result.last_attempted_at, result.finished_at) == (None, None, None)
    assert (result.errors, result.worker_ids) == ([], [])
    assert (result.args, result.kwargs) == ([1], {"y": 2})
    assert result.backend == "default"
    assert result.task.queue_name == queue and result.task.priority == 7
    with pytest.raises(ValueError, match="not finished"):
        _ = result.return_value

    record = TaskRecord.objects.get(pk=result.id)
    assert record.task_name == "tests.tasks.add"
    assert (record.queue, record.priority, record.backend) == (queue, 7, "default")
    assert (record.args, record.kwargs) == ([1], {"y": 2})
    assert record.status == TaskStatus.READY
    assert queue_size(queue) == 1


def test_enqueue_stores_run_after(queue: str) -> None:
    when = timezone.now() + timedelta(hours=1)
    result = tasks.add.using(queue_name=queue, run_after=when).enqueue(1, 2)
    assert result.task.run_after == when
    assert TaskRecord.objects.get(pk=result.id).run_after == when


def test_enqueue_revalidates_the_task(queue: str) -> None:
    elsewhere = tasks.add.using(queue_name=queue)  # valid while QUEUES is [] (any name)
    with (
        override_settings(
            TASKS={
                "default": {"BACKEND": "django_ray.backend.RayTaskBackend", "QUEUES": ["default"]}
            }
        ),
        pytest.raises(InvalidTask, match="is not valid for backend"),
    ):
        elsewhere.enqueue(1, 2)
    tampered = tasks.add.using(queue_name=queue)
    object.__setattr__(tampered, "priority", 1000)  # bypasses using()'s validation
    with pytest.raises(InvalidTask, match="priority"):
        tampered.enqueue(1, 2)
    assert not TaskRecord.objects.exists()
    assert queue_size(queue) == 0


@pytest.mark.parametrize(
    "bad",
    [datetime(2030, 1, 1), object(), {1, 2}, float("nan"), b"\xff"],
    ids=["datetime", "object", "set", "nan", "bad-bytes"],
)
def test_enqueue_rejects_non_json_arguments_before_writing(queue: str, bad: object) -> None:
    sent = []
    task_enqueued.connect(receiver := lambda **kw: sent.append(kw), weak=False)
    try:
        with pytest.raises(TypeError):
            tasks.add.using(queue_name=queue).enqueue(bad, 1)
        with pytest.raises(TypeError):
            tasks.add.using(queue_name=queue).enqueue(1, y=bad)
    finally:
        task_enqueued.disconnect(receiver)
    assert not TaskRecord.objects.exists()
    assert queue_size(queue) == 0
    assert sent == []


def test_arguments_are_stored_as_json(queue: str) -> None:
    result = tasks.add.using(queue_name=queue).enqueue((1, 2), y={"t": (3,)})
    record = TaskRecord.objects.get(pk=result.id)
    assert (record.args, record.kwargs) == ([[1, 2]], {"y": {"t": [3]}})


def test_aenqueue_and_aget_result(queue: str) -> None:
    result = async_to_sync(tasks.add.using(queue_name=queue).aenqueue)(4, 5)
    assert result.status == TaskResultStatus.READY
    assert TaskRecord.objects.filter(pk=result.id).exists()
    fetched = async_to_sync(tasks.add.aget_result)(result.id)
    assert (fetched.id, fetched.status, fetched.args) == (result.id, TaskResultStatus.READY, [4, 5])
    with pytest.raises(TaskResultDoesNotExist):
        async_to_sync(task_backends["default"].aget_result)("missing")


def test_validation_of_the_contract() -> None:
    with pytest.raises(InvalidTask, match="aware"):
        tasks.add.using(run_after=datetime(2030, 1, 1))
    with pytest.raises(InvalidTask, match="priority"):
        tasks.add.using(priority=101)
    with pytest.raises(InvalidTask, match="priority"):
        tasks.add.using(priority=1.5)  # type: ignore[arg-type]
    assert tasks.async_add.using(priority=-100).priority == -100


def test_queues_setting_is_honoured() -> None:
    tasks_setting = {
        "default": {
            "BACKEND": "django_ray.backend.RayTaskBackend",
            "QUEUES": ["default", "high"],
        }
    }
    with override_settings(TASKS=tasks_setting):
        assert task_backends["default"].queues == {"default", "high"}
        with pytest.raises(InvalidTask, match="'nope' is not valid"):
            tasks.add.using(queue_name="nope")
        result = tasks.add.using(queue_name="high").enqueue(1, 1)
        assert TaskRecord.objects.get(pk=result.id).queue == "high"
    # QUEUES = [] (the test settings) accepts any queue name.
    assert tasks.add.using(queue_name=f"any-{uuid4().hex[:6]}")


# -- get_result ------------------------------------------------------------------------


def test_get_result_reads_the_record_fresh(queue: str) -> None:
    result = tasks.add.using(queue_name=queue).enqueue(1, 2)
    TaskRecord.objects.get(pk=result.id).mark_running("someone")
    fresh = task_backends["default"].get_result(result.id)
    assert fresh.status == TaskResultStatus.RUNNING
    assert fresh.worker_ids == ["someone"]
    assert fresh.started_at is not None
    result.refresh()
    assert result.status == TaskResultStatus.RUNNING
    assert result.attempts == 1


@pytest.mark.parametrize(
    "bad_id", ["missing", "", "x" * 300, "0b6f3c3e-2c55-4f0e-9a43-3c1b8f0e2d11", "' OR 1=1 --", 12]
)
def test_get_result_of_unknown_or_malformed_ids(bad_id: object) -> None:
    with pytest.raises(TaskResultDoesNotExist):
        task_backends["default"].get_result(bad_id)  # type: ignore[arg-type]
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result(bad_id)  # type: ignore[arg-type]


def test_get_result_ignores_records_of_another_backend() -> None:
    TaskRecord.objects.create(id="elsewhere", task_name="tests.tasks.add", backend="other")
    with pytest.raises(TaskResultDoesNotExist):
        task_backends["default"].get_result("elsewhere")


def test_get_result_rebuilds_the_same_task(queue: str) -> None:
    when = timezone.now() + timedelta(minutes=5)
    result = tasks.with_context.using(queue_name=queue, priority=-3, run_after=when).enqueue(1)
    fetched = tasks.with_context.get_result(result.id)
    assert fetched.task.func is tasks.with_context.func
    assert fetched.task.takes_context
    assert (fetched.task.queue_name, fetched.task.priority) == (queue, -3)
    assert fetched.task.run_after == when
    assert fetched.task.backend == "default"
    with pytest.raises(TaskResultMismatch):
        tasks.add.get_result(result.id)


@pytest.mark.parametrize(
    ("internal", "public"),
    [
        (TaskStatus.READY, TaskResultStatus.READY),
        (TaskStatus.RUNNING, TaskResultStatus.RUNNING),
        (TaskStatus.RETRYING, TaskResultStatus.READY),
        (TaskStatus.SUCCESSFUL, TaskResultStatus.SUCCESSFUL),
        (TaskStatus.FAILED, TaskResultStatus.FAILED),
        (TaskStatus.REVOKED, TaskResultStatus.FAILED),
    ],
)
def test_only_the_four_public_statuses_are_reported(
    queue: str, internal: TaskStatus, public: TaskResultStatus
) -> None:
    result = tasks.add.using(queue_name=queue).enqueue(1, 2)
    TaskRecord.objects.filter(pk=result.id).update(status=internal)
    assert task_backends["default"].get_result(result.id).status == public


# -- execution through the worker --------------------------------------------------------


def test_successful_task_result(queue: str) -> None:
    result = tasks.add.using(queue_name=queue).enqueue(2, y=3)
    run_worker(queue, "--worker-id=w-1")
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5
    assert result.worker_ids == ["w-1"]
    assert result.attempts == 1
    assert result.errors == []
    assert result.started_at == result.last_attempted_at
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert queue_size(queue) == 0


def test_failed_task_records_the_real_exception(queue: str) -> None:
    result = tasks.fail.using(queue_name=queue).enqueue("boom")
    run_worker(queue)
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert len(result.errors) == 1
    error = result.errors[0]
    assert error.exception_class_path == "tests.tasks.CustomError"
    assert error.exception_class is tasks.CustomError
    assert "raise CustomError(message)" in error.traceback
    assert "tests.tasks.CustomError: boom" in error.traceback
    assert result.finished_at is not None and result.finished_at >= result.started_at
    with pytest.raises(ValueError, match="failed"):
        _ = result.return_value


def test_non_json_return_value_fails_the_task(queue: str) -> None:
    result = tasks.non_json_result.using(queue_name=queue).enqueue()
    run_worker(queue)
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[0].exception_class_path == "builtins.TypeError"
    assert TaskRecord.objects.get(pk=result.id).return_value is None


def test_return_value_reads_back_as_json(queue: str) -> None:
    result = tasks.add.using(queue_name=queue).enqueue([1], [2])  # list + list
    run_worker(queue)
    assert tasks.add.get_result(result.id).return_value == [1, 2]


def test_context_task_gets_attempt_one_and_a_running_result(queue: str) -> None:
    result = tasks.with_context.using(queue_name=queue).enqueue(42)
    run_worker(queue)
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == {
        "attempt": 1,
        "id": result.id,
        "status": "RUNNING",
        "value": 42,
    }


def test_async_task_runs(queue: str) -> None:
    result = tasks.async_add.using(queue_name=queue).enqueue(20, 22)
    run_worker(queue)
    result.refresh()
    assert (result.status, result.return_value) == (TaskResultStatus.SUCCESSFUL, 42)


def test_a_failing_task_fails_only_itself(queue: str) -> None:
    bad = tasks.fail.using(queue_name=queue, priority=10).enqueue("first")
    good = tasks.add.using(queue_name=queue).enqueue(1, 1)
    run_worker(queue)
    bad.refresh()
    good.refresh()
    assert bad.status == TaskResultStatus.FAILED
    assert (good.status, good.return_value) == (TaskResultStatus.SUCCESSFUL, 2)


def test_retries_keep_one_error_and_worker_id_per_attempt(queue: str) -> None:
    result = tasks.flaky.using(queue_name=queue).enqueue(3)
    run_worker(queue, "--worker-id=w-r")
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 3
    assert result.worker_ids == ["w-r", "w-r", "w-r"]
    assert [e.exception_class_path for e in result.errors] == ["tests.tasks.CustomError"] * 2
    assert result.started_at < result.last_attempted_at <= result.finished_at


def test_retries_end_failed_after_the_last_attempt(queue: str) -> None:
    result = tasks.flaky.using(queue_name=queue).enqueue(10)
    run_worker(queue)
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert result.attempts == 3
    assert len(result.errors) == 3


@pytest.mark.parametrize("name", ["antigravity.geohash", "os.system", "tests.tasks.Path"])
def test_get_result_never_imports_a_stored_name(name: str) -> None:
    # A record written for a hostile message must not make get_result import or call it.
    TaskRecord.objects.create(id=f"hostile-{name}", task_name=name, backend="default")
    with pytest.raises(TaskResultDoesNotExist):
        task_backends["default"].get_result(f"hostile-{name}")
    assert "antigravity" not in sys.modules


def test_the_backend_alias_travels_with_the_task(queue: str) -> None:
    two = {
        "default": {"BACKEND": "django_ray.backend.RayTaskBackend", "QUEUES": []},
        "second": {"BACKEND": "django_ray.backend.RayTaskBackend", "QUEUES": []},
    }
    with override_settings(TASKS=two):
        result = tasks.add.using(queue_name=queue, backend="second").enqueue(3, 4)
        assert result.backend == "second"
        run_worker(queue)
        fetched = task_backends["second"].get_result(result.id)
        assert (fetched.status, fetched.return_value) == (TaskResultStatus.SUCCESSFUL, 7)
        assert (fetched.backend, fetched.task.backend) == ("second", "second")
        with pytest.raises(TaskResultDoesNotExist):
            task_backends["default"].get_result(result.id)


def test_hard_time_limit_ends_the_task_in_sync_mode(queue: str) -> None:
    over = tasks.overrun.using(queue_name=queue).enqueue(30)
    after = tasks.add.using(queue_name=queue, priority=-10).enqueue(2, 2)
    run_worker(queue)
    over.refresh()
    after.refresh()
    assert over.status == TaskResultStatus.FAILED
    assert over.errors[-1].exception_class_path == "django_ray.exceptions.TaskTimeLimitExceeded"
    assert (over.finished_at - over.started_at).total_seconds() < 15
    assert after.return_value == 4
