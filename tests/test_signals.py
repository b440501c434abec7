"""task_enqueued / task_started / task_finished: when, by whom, with which result."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.core.management import call_command
from django.tasks import TaskResult, TaskResultStatus
from django.tasks.signals import task_enqueued, task_finished, task_started

from django_ray.backend import RayTaskBackend
from tests import tasks

pytestmark = [pytest.mark.django_db, pytest.mark.timeout(60)]

SIGNALS = {"enqueued": task_enqueued, "started": task_started, "finished": task_finished}


@dataclass(frozen=True)
class Event:
    name: str
    sender: Any
    result: TaskResult
    status: TaskResultStatus
    exception: BaseException | None


@pytest.fixture
def events() -> Iterator[list[Event]]:
    seen: list[Event] = []
    receivers = {}
    for name, signal in SIGNALS.items():

        def receiver(sender: Any, task_result: TaskResult, _name: str = name, **kw: Any) -> None:
            seen.append(Event(_name, sender, task_result, task_result.status, sys.exc_info()[1]))

        signal.connect(receiver, weak=False)
        receivers[name] = receiver
    yield seen
    for name, signal in SIGNALS.items():
        signal.disconnect(receivers[name])


def run_worker(queue: str) -> None:
    call_command("django_ray_worker", f"--queue={queue}", "--sync", "--batch", "--worker-id=sig")


def test_enqueue_sends_task_enqueued(broker_url: str, queue: str, events: list[Event]) -> None:
    result = tasks.add.using(queue_name=queue).enqueue(1, 2)
    assert [e.name for e in events] == ["enqueued"]
    event = events[0]
    assert event.sender is RayTaskBackend
    assert event.status == TaskResultStatus.READY
    assert event.result.id == result.id
    assert event.result.enqueued_at is not None


def test_success_sends_started_then_finished(
    broker_url: str, queue: str, events: list[Event]
) -> None:
    result = tasks.add.using(queue_name=queue).enqueue(1, 2)
    run_worker(queue)
    assert [e.name for e in events] == ["enqueued", "started", "finished"]
    assert all(e.sender is RayTaskBackend for e in events)
    assert {e.result.id for e in events} == {result.id}

    started, finished = events[1], events[2]
    assert started.status == TaskResultStatus.RUNNING
    assert started.result.worker_ids == ["sig"]
    assert started.result.started_at is not None
    assert started.result.finished_at is None
    assert finished.status == TaskResultStatus.SUCCESSFUL
    assert finished.result.finished_at is not None
    assert finished.result.return_value == 3
    assert finished.exception is None


def test_failure_sends_finished_failed_inside_the_except_block(
    broker_url: str, queue: str, events: list[Event]
) -> None:
    tasks.fail.using(queue_name=queue).enqueue("boom")
    run_worker(queue)
    assert [e.name for e in events] == ["enqueued", "started", "finished"]
    finished = events[-1]
    assert finished.sender is RayTaskBackend
    assert finished.status == TaskResultStatus.FAILED
    assert finished.result.errors[0].exception_class_path == "tests.tasks.CustomError"
    # Sent while the exception is being handled, as Django's logging receiver expects.
    assert isinstance(finished.exception, tasks.CustomError)


def test_non_json_return_value_sends_finished_failed(
    broker_url: str, queue: str, events: list[Event]
) -> None:
    tasks.non_json_result.using(queue_name=queue).enqueue()
    run_worker(queue)
    finished = events[-1]
    assert (finished.name, finished.status) == ("finished", TaskResultStatus.FAILED)


def test_each_attempt_starts_and_the_task_finishes_once(
    broker_url: str, queue: str, events: list[Event]
) -> None:
    tasks.flaky.using(queue_name=queue).enqueue(2)
    run_worker(queue)
    assert [e.name for e in events] == ["enqueued", "started", "started", "finished"]
    assert [len(e.result.worker_ids) for e in events[1:3]] == [1, 2]
    assert events[-1].status == TaskResultStatus.SUCCESSFUL


def test_django_logs_the_outcome(
    broker_url: str, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    result = tasks.fail.using(queue_name=queue).enqueue("logged")
    with caplog.at_level(logging.INFO, logger="django.tasks"):
        run_worker(queue)
    failed = [r for r in caplog.records if r.name == "django.tasks" and r.levelno == logging.ERROR]
    assert len(failed) == 1
    assert result.id in failed[0].getMessage()
    assert failed[0].exc_info is not None and failed[0].exc_info[0] is tasks.CustomError


def test_a_failing_receiver_does_not_change_the_outcome(broker_url: str, queue: str) -> None:
    def broken(**kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    task_started.connect(broken, weak=False)
    task_finished.connect(broken, weak=False)
    try:
        result = tasks.add.using(queue_name=queue).enqueue(2, 2)
        run_worker(queue)
    finally:
        task_started.disconnect(broken)
        task_finished.disconnect(broken)
    result.refresh()
    assert (result.status, result.return_value) == (TaskResultStatus.SUCCESSFUL, 4)
