"""``revoke(terminate=True)`` reaches the runner: ``BaseRunner.terminate`` per mode."""

from __future__ import annotations

from typing import Any

import pytest

from django_ray.celery.control import ControlListener
from django_ray.message import TaskMessage
from django_ray.models import TaskRecord, TaskStatus
from django_ray.runners.job import JobRunner, submission_id
from django_ray.runners.sync import SyncRunner
from tests.celery_interop.workers import unique


class FakeJobs:
    """The part of Ray's ``JobSubmissionClient`` the job runner uses."""

    def __init__(self) -> None:
        self.status: dict[str, str] = {}
        self.stopped: list[str] = []

    def submit_job(self, *, submission_id: str, **_: Any) -> str:
        self.status[submission_id] = "RUNNING"
        return submission_id

    def get_job_status(self, job_id: str) -> str:
        return self.status[job_id]

    def stop_job(self, job_id: str) -> bool:
        self.stopped.append(job_id)
        self.status[job_id] = "STOPPED"
        return True


@pytest.mark.django_db
def test_job_mode_stops_the_job_and_stores_revoked(settings: Any) -> None:
    settings.DJANGO_RAY = {**settings.DJANGO_RAY, "CELERY_APP": None, "JOB_POLL_INTERVAL": 0}
    settings.CELERY_RESULT_BACKEND = None
    message = TaskMessage(id=unique("job"), task="tests.compat.compat_tasks.sleeper", queue="q")
    TaskRecord.objects.create(id=message.id, task_name=message.task, status=TaskStatus.RUNNING)
    runner = JobRunner(worker_id="w", address="http://127.0.0.1:1")
    runner.client = FakeJobs()
    runner.submit(message, delivery="d")
    assert runner.terminate("someone-else") is False
    assert runner.terminate(message.id) is True
    assert runner.client.stopped == [submission_id(message)]
    [done] = runner.poll()
    assert done.outcome is not None and done.outcome.error == "terminated"
    record = TaskRecord.objects.get(pk=message.id)
    assert record.status == TaskStatus.REVOKED
    assert (record.last_error or {}).get("exc_message") == ["terminated"]


def test_sync_mode_terminates_only_the_attempt_running_here() -> None:
    assert SyncRunner(worker_id="w").terminate("not-running") is False


@pytest.mark.django_db
def test_the_control_listener_asks_the_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def terminate(task_id: str) -> bool:
        asked.append(task_id)
        return True

    monkeypatch.setattr("django_ray.celery.results.revoke", lambda ids: [])
    listener = ControlListener(connection=None, hostname="h", terminate=terminate)  # type: ignore[arg-type]
    listener._revoke(None, ["a", "b"], terminate=True)
    listener._revoke(None, "c", terminate=False)
    assert asked == ["a", "b"]
