"""Eager mode (CELERY_TASK_ALWAYS_EAGER, apply()) runs through the sync runner's execute()."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from compat.celery import AsyncResult, chain, chord, current_app, group, states
from compat.celery.result import EagerResult
from django_ray.message import TaskMessage
from django_ray.models import TaskRecord
from tests.compat import compat_tasks
from tests.compat.compat_tasks import RecordingTask, TransientError

pytestmark = pytest.mark.django_db


def test_delay_runs_through_the_sync_runner(eager: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from django_ray.runtime import execute as execute_module

    seen: list[str] = []
    real = execute_module.execute

    def spy(message: TaskMessage, *, worker_id: str) -> Any:
        seen.append(worker_id)
        return real(message, worker_id=worker_id)

    monkeypatch.setattr("django_ray.runners.sync.execute", spy)
    result = compat_tasks.add.delay(2, 3)
    assert isinstance(result, EagerResult)
    assert (result.state, result.get(), result.result) == (states.SUCCESS, 5, 5)
    record = TaskRecord.objects.get(pk=result.id)
    assert record.origin == "celery" and record.worker_ids == seen
    assert seen[0].startswith("eager@")


def test_request_reads_is_eager(eager: None) -> None:
    info = compat_tasks.whoami.delay().get()
    assert (info["is_eager"], info["called_directly"], info["retries"]) == (True, False, 0)
    assert info["id"] == info["root_id"]


def test_apply_runs_eagerly_without_the_setting() -> None:
    result = compat_tasks.mul.apply((6, 7))
    assert result.get() == 42


def test_failure_is_stored_and_returned(eager: None) -> None:
    result = compat_tasks.fail.delay("broken")
    assert result.state == states.FAILURE
    assert isinstance(result.result, TransientError)
    with pytest.raises(TransientError, match="broken"):
        result.get()


def test_eager_propagates_raises_the_tasks_exception(eager_propagates: None) -> None:
    with pytest.raises(TransientError, match="broken") as caught:
        compat_tasks.fail.delay("broken")
    assert any("run eagerly" in note for note in caught.value.__notes__)


def test_apply_throw_overrides_the_setting() -> None:
    with pytest.raises(TransientError):
        compat_tasks.fail.apply(("x",), throw=True)
    assert compat_tasks.fail.apply(("x",)).failed()


def test_retries_run_at_once_with_the_same_id(eager: None) -> None:
    result = compat_tasks.retry_until.delay(2)
    assert result.get() == 2
    record = TaskRecord.objects.get(pk=result.id)
    assert record.retries == 2 and len(record.worker_ids) == 3
    assert TaskRecord.objects.count() == 1


def test_autoretry_gives_up_after_max_retries(eager: None, tmp_path: Path) -> None:
    path = tmp_path / "calls"
    result = compat_tasks.auto_retry.delay(str(path))
    assert result.state == states.FAILURE
    assert path.read_text() == "xxx"  # the first attempt and two retries


def test_chain_runs_each_step_with_the_previous_result(eager: None) -> None:
    result = chain(compat_tasks.add.s(1, 2), compat_tasks.mul.s(10), compat_tasks.add.s(5)).delay()
    assert result.get() == 35
    assert result.parent.get() == 30 and result.parent.parent.get() == 3


def test_link_callback_gets_the_result(eager: None) -> None:
    result = compat_tasks.add.apply_async((1, 2), link=compat_tasks.mul.s(100))
    [child] = AsyncResult(result.id).children
    assert child.get() == 300


def test_group_results_in_order(eager: None) -> None:
    result = group(compat_tasks.mul.s(i, i) for i in range(4)).delay()
    assert result.get() == [0, 1, 4, 9]


def test_chord_body_gets_the_header_results(eager: None, redis_result_backend: str) -> None:
    result = chord(
        [compat_tasks.add.s(1, 1), compat_tasks.add.s(2, 2)], compat_tasks.tsum.s()
    ).delay()
    assert result.get(timeout=5) == 6


def test_hooks_run_in_the_execute_path(eager: None) -> None:
    RecordingTask.calls.clear()
    compat_tasks.hooked.delay(4)
    compat_tasks.hooked.delay(-1)
    names = [name for name, _ in RecordingTask.calls]
    assert ("on_success", 8) in RecordingTask.calls and (
        "on_failure",
        "ValueError",
    ) in RecordingTask.calls
    assert names.count("after_return") == 2


def test_countdown_is_not_waited_for(eager: None) -> None:
    assert compat_tasks.add.apply_async((1, 1), countdown=3600).get(timeout=1) == 2


def test_send_task_publishes_even_when_eager(eager: None) -> None:
    result = current_app.send_task(compat_tasks.add.name, args=(1, 2))
    assert result.state == states.PENDING


def test_eager_inside_a_transaction(eager: None) -> None:
    # pytest-django runs this test inside atomic(), as Django's TestCase does.
    from django.db import connection

    assert connection.in_atomic_block
    assert compat_tasks.add.delay(20, 22).get() == 42


def test_before_start_is_called_before_the_task_body(eager: None) -> None:
    RecordingTask.calls.clear()
    result = compat_tasks.hooked.delay(4)
    assert RecordingTask.calls[:2] == [("before_start", result.id), ("on_success", 8)]


@pytest.mark.timeout(30)
def test_reject_with_requeue_is_bounded(eager: None) -> None:
    from django_ray.exceptions import RequeueLimitExceeded
    from django_ray.runtime.settle import MAX_REJECT_REQUEUES

    result = compat_tasks.reject_always.delay()
    assert result.state == states.FAILURE
    with pytest.raises(
        RequeueLimitExceeded, match=r"requeue=True \d+ times.*Reject\(requeue=False\)"
    ):
        result.get()
    assert len(TaskRecord.objects.get(pk=result.id).worker_ids) == MAX_REJECT_REQUEUES + 1


def test_reject_with_requeue_runs_the_message_again(eager: None) -> None:
    assert compat_tasks.reject_once.delay().get() == 1
