"""Ray Job mode specifics: no shell interpolation, one job per attempt, attach on restart."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from django_ray.message import TaskMessage
from django_ray.models import TaskRecord
from tests import tasks
from tests.conftest import run_worker, worker_env
from tests.waiting import wait_until

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
def test_task_data_never_reaches_a_shell(broker_url: str, ray_head: Any, tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    out = tmp_path / "out.txt"
    label = f"$(touch {canary})`touch {canary}`'; touch {canary}; echo '"
    queue = f"job-shell-{uuid.uuid4().hex[:8]}"
    result = tasks.record_order.using(queue_name=queue).enqueue(str(out), label)

    env = {**ray_head.env(), "DJANGO_RAY_RAY_ADDRESS": ray_head.dashboard_url}
    proc = run_worker(f"--queue={queue}", "--batch", timeout=120, **env)

    assert proc.returncode == 0, proc.stderr[-2000:]
    result.refresh()
    assert result.return_value == label
    assert out.read_text() == label + "\n"
    assert not canary.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
def test_a_message_of_a_mebibyte_starts_as_a_job(broker_url: str, ray_head: Any) -> None:
    from django_ray.models import JobPayload

    data = "x" * (1024 * 1024)  # far past what a shell argument can carry (about 128 KiB)
    queue = f"job-big-{uuid.uuid4().hex[:8]}"
    result = tasks.length.using(queue_name=queue).enqueue(data)

    env = {**ray_head.env(), "DJANGO_RAY_RAY_ADDRESS": ray_head.dashboard_url}
    proc = run_worker(f"--queue={queue}", "--batch", timeout=120, **env)

    assert proc.returncode == 0, proc.stderr[-2000:]
    result.refresh()
    assert result.return_value == len(data)
    assert not JobPayload.objects.exists()  # read and removed


@pytest.mark.django_db(transaction=True)
def test_same_attempt_is_submitted_once(
    ray_head: Any, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    from django_ray.runners.job import JobRunner, submission_id

    for name, value in worker_env().items():
        if name.startswith("DJANGO_RAY_") or name == "PYTHONPATH":
            monkeypatch.setenv(name, value)
    settings.DJANGO_RAY = {**settings.DJANGO_RAY, "RAY_AUTH_TOKEN": ray_head.token}
    result = tasks.add.using(queue_name=f"job-once-{uuid.uuid4().hex[:8]}").enqueue(20, 22)
    record = TaskRecord.objects.get(pk=result.id)
    message = TaskMessage(
        id=record.id, task=record.task_name, args=(20, 22), queue=record.queue, backend="default"
    )
    # Runners in this test process, whose registry is the whole test session's: the
    # preflight (tests/runners/test_preflight.py) would rightly find the cluster lacks tasks.
    first = JobRunner(worker_id="w1", address=ray_head.dashboard_url, preflight=False)
    first.start()
    first.submit(message, delivery="first")
    # A restarted worker receiving the same attempt attaches to the running job.
    second = JobRunner(worker_id="w2", address=ray_head.dashboard_url, preflight=False)
    second.start()
    second.submit(message, delivery="second")

    done: list[Any] = []

    def both_completed() -> bool:
        done.extend(first.poll(0.2) + second.poll(0.2))  # each waits up to 0.2 s
        return len(done) >= 2

    wait_until(both_completed, "both submissions to complete", timeout=90, interval=0)
    assert sorted(c.delivery for c in done) == ["first", "second"]
    assert {c.outcome.status for c in done} == {"SUCCESSFUL"}
    jobs = [j for j in first.client.list_jobs() if j.submission_id == submission_id(message)]
    assert len(jobs) == 1
    record.refresh_from_db()
    assert record.return_value == 42
    assert record.attempts == 1
