"""AsyncResult and GroupResult read TaskRecord: states, values, errors, waiting, control."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from compat.celery import AsyncResult, GroupResult, states
from compat.celery.exceptions import (
    MaxRetriesExceededError,
    NotRegistered,
    NotSupported,
    TaskRevokedError,
    TimeLimitExceeded,
    TimeoutError,
)
from compat.celery.failures import exception_from_error
from django_ray.models import TaskRecord
from django_ray.runtime.values import error_info
from tests.compat import compat_tasks
from tests.tasks import CustomError

pytestmark = pytest.mark.django_db


def record(task_id: str = "r1", **fields: Any) -> TaskRecord:
    return TaskRecord.objects.create(id=task_id, task_name="x.y", origin="celery", **fields)


def failure(exc: BaseException) -> dict[str, Any]:
    try:
        raise exc
    except BaseException as e:
        return error_info(e)


def test_unknown_id_is_pending() -> None:
    result = AsyncResult("nope")
    assert (result.state, result.status, result.result, result.traceback) == (
        states.PENDING,
        states.PENDING,
        None,
        None,
    )
    assert not result.ready() and not result.successful() and not result.failed()


@pytest.mark.parametrize(
    ("transition", "state"),
    [
        (lambda r: None, states.PENDING),
        (lambda r: r.mark_running("w"), states.STARTED),
        (lambda r: r.mark_retrying(None, retries=1, eta=None), states.RETRY),
        (lambda r: r.mark_successful(1), states.SUCCESS),
        (lambda r: r.mark_failed(None), states.FAILURE),
        (lambda r: r.mark_revoked("revoked"), states.REVOKED),
    ],
)
def test_states_follow_the_record(transition: Any, state: str) -> None:
    transition(record())
    result = AsyncResult("r1")
    assert result.state == state
    assert result.ready() is (state in states.READY_STATES)


def test_success_value() -> None:
    record().mark_successful({"a": [1, 2]})
    result = AsyncResult("r1")
    assert result.successful() and result.result == {"a": [1, 2]}
    assert result.get(timeout=1) == {"a": [1, 2]}
    assert result.name == "x.y" and result.date_done is not None


def test_failure_reraises_the_tasks_own_exception_class() -> None:
    record().mark_failed(failure(CustomError("kaput")))
    result = AsyncResult("r1")
    assert result.failed()
    with pytest.raises(CustomError, match="kaput"):
        result.get(timeout=1)
    assert isinstance(result.get(propagate=False), CustomError)
    assert isinstance(result.result, CustomError)
    assert "CustomError: kaput" in (result.traceback or "")


def test_class_from_a_module_not_imported_becomes_a_stand_in() -> None:
    exc = exception_from_error(
        {"exception_class_path": "not_imported_mod.Boom", "exc_message": ["x"], "traceback": ""}
    )
    assert type(exc).__name__ == "Boom" and type(exc).__module__ == "not_imported_mod"
    assert exc.args == ("x",)
    harmful = exception_from_error({"exception_class_path": "os.system", "exc_message": ["id"]})
    assert type(harmful).__name__ == "system" and isinstance(harmful, Exception)


@pytest.mark.parametrize(
    ("path", "cls"),
    [
        ("django_ray.exceptions.NotRegistered", NotRegistered),
        ("celery.exceptions.TaskRevokedError", TaskRevokedError),
        ("celery.exceptions.MaxRetriesExceededError", MaxRetriesExceededError),
        ("billiard.exceptions.TimeLimitExceeded", TimeLimitExceeded),
    ],
)
def test_django_ray_and_celery_errors_read_as_compat_exceptions(path: str, cls: type) -> None:
    assert isinstance(
        exception_from_error({"exception_class_path": path, "exc_message": ["a"]}), cls
    )


def test_revoked_raises_task_revoked_error() -> None:
    record().mark_revoked("expired")
    with pytest.raises(TaskRevokedError, match="expired"):
        AsyncResult("r1").get(timeout=1)


def test_get_times_out_with_celerys_timeout_error() -> None:
    record()
    with pytest.raises(TimeoutError):
        AsyncResult("r1").get(timeout=0.2, interval=0.05)


def test_get_waits_for_the_record_to_finish(transactional_db: None) -> None:
    record()

    def finish() -> None:
        TaskRecord.objects.get(pk="r1").mark_successful(42)

    timer = threading.Timer(0.3, finish)
    timer.start()
    try:
        assert AsyncResult("r1").get(timeout=10, interval=0.05) == 42
    finally:
        timer.join()


def test_ignored_result_returns_none_at_once() -> None:
    result = AsyncResult("never")
    result.ignored = True
    assert result.get(timeout=0) is None


def test_get_inside_a_running_task_is_refused() -> None:
    compat_tasks.add.push_request(id="running")
    try:
        with pytest.raises(RuntimeError, match=r"Never call result\.get"):
            AsyncResult("x").get(timeout=0)
    finally:
        compat_tasks.add.pop_request()


def test_parent_failure_propagates_through_get() -> None:
    record("first").mark_failed(failure(CustomError("first failed")))
    record("second")
    result = AsyncResult("second", parent=AsyncResult("first"))
    with pytest.raises(CustomError, match="first failed"):
        result.get(timeout=1)


def test_children_are_the_tasks_it_sent() -> None:
    record("parent")
    record("child-1", parent_id="parent")
    record("child-2", parent_id="parent")
    assert {c.id for c in AsyncResult("parent").children} == {"child-1", "child-2"}


def test_forget_deletes_the_result() -> None:
    record().mark_successful(1)
    AsyncResult("r1").forget()
    assert AsyncResult("r1").state == states.PENDING


def test_revoke_keeps_a_pending_task_from_running() -> None:
    record()
    AsyncResult("r1").revoke()
    assert AsyncResult("r1").state == states.REVOKED
    AsyncResult("unseen").revoke()  # an id no record knows yet: revoked before it arrives
    assert TaskRecord.objects.get(pk="unseen").status == "REVOKED"


def test_revoke_does_not_touch_a_finished_task() -> None:
    record().mark_successful(1)
    AsyncResult("r1").revoke()
    assert AsyncResult("r1").state == states.SUCCESS


def test_revoke_terminate_is_refused() -> None:
    with pytest.raises(NotSupported, match="terminate"):
        AsyncResult("r1").revoke(terminate=True)


def test_group_result() -> None:
    for index in range(3):
        record(f"m{index}", group_id="g", group_index=index)
    group = GroupResult("g", [AsyncResult(f"m{i}") for i in range(3)])
    assert not group.ready() and group.completed_count() == 0
    for index in range(3):
        TaskRecord.objects.get(pk=f"m{index}").mark_successful(index * 10)
    assert group.ready() and group.successful() and not group.failed()
    assert group.get(timeout=1) == [0, 10, 20]
    assert group.completed_count() == 3
    restored = GroupResult.restore("g")
    assert restored is not None and restored.results == group.results
    assert GroupResult.restore("unknown") is None


def test_group_result_propagates_a_member_failure() -> None:
    record("a", group_id="g", group_index=0).mark_successful(1)
    record("b", group_id="g", group_index=1).mark_failed(failure(CustomError("b failed")))
    group = GroupResult("g", [AsyncResult("a"), AsyncResult("b")])
    assert group.failed()
    with pytest.raises(CustomError):
        group.get(timeout=1)
    values = group.get(timeout=1, propagate=False)
    assert values[0] == 1 and isinstance(values[1], CustomError)


def test_streaming_callbacks_are_not_supported() -> None:
    record().mark_successful(1)
    with pytest.raises(NotSupported, match="on_message"):
        AsyncResult("r1").get(on_message=print)


def test_allow_join_result_permits_get_inside_a_task() -> None:
    from compat.celery.result import allow_join_result

    record().mark_successful(7)
    compat_tasks.add.push_request(id="running")
    try:
        with allow_join_result():
            assert AsyncResult("r1").get(timeout=1) == 7
    finally:
        compat_tasks.add.pop_request()
