"""Ray-side failures have defined outcomes: dead processes, time limits, no RAY_ADDRESS."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.tasks import TaskResultStatus

from tests import tasks
from tests.conftest import run_worker
from tests.runners.test_contract import mode_arguments

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
@pytest.mark.parametrize("mode", ["local", "job"])
def test_dead_process_is_retried_then_failed_and_time_limit_stops_the_task(
    mode: str, broker_url: str, request: pytest.FixtureRequest
) -> None:
    args, env = mode_arguments(mode, request)
    queue = f"faults-{mode}-{uuid.uuid4().hex[:8]}"

    def on(task: Any) -> Any:
        return task.using(queue_name=queue)

    recovered = on(tasks.crash_first_attempt).enqueue()
    lost = on(tasks.crash_always).enqueue()
    overrun = on(tasks.overrun).enqueue(60)
    fanned = on(tasks.fan_out).enqueue([1, 2, 3])

    proc = run_worker(f"--queue={queue}", "--batch", *args, timeout=240, **env)

    assert proc.returncode == 0, proc.stderr[-3000:]
    # Task arguments (the encoded message of a job) never reach the worker's log.
    assert "eyJoZWFkZXJz" not in proc.stderr
    for result in (recovered, lost, overrun, fanned):
        result.refresh()
    assert recovered.status == TaskResultStatus.SUCCESSFUL
    assert recovered.return_value == 2
    assert [e.exception_class_path for e in recovered.errors] == [
        "django_ray.exceptions.WorkerLost"
    ]
    assert lost.status == TaskResultStatus.FAILED
    assert lost.errors[-1].exception_class_path == "django_ray.exceptions.WorkerLost"
    assert overrun.status == TaskResultStatus.FAILED
    assert overrun.errors[-1].exception_class_path == "django_ray.exceptions.TaskTimeLimitExceeded"
    assert (overrun.finished_at - overrun.started_at).total_seconds() < 30
    assert fanned.status == TaskResultStatus.SUCCESSFUL
    assert fanned.return_value == [10, 20, 30]


def test_job_mode_without_ray_address_names_the_setting(settings: Any) -> None:
    from django.core.management import CommandError, call_command

    settings.DJANGO_RAY = {**settings.DJANGO_RAY, "RAY_ADDRESS": None}
    with pytest.raises(CommandError, match=r"RAY_ADDRESS.*--local or --sync"):
        call_command("django_ray_worker", "--queue=default", "--batch")
