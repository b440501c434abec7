"""Per-task Ray options reach Ray, and Ray's own retries stay off.

A ``--local`` worker subprocess runs tasks that return the resources Ray assigned them: one
declared with ``@task(ray_options=...)``, one configured only in
``TASKS["default"]["OPTIONS"]["TASK_OPTIONS"]`` (through ``DJANGO_RAY_TASK_OPTIONS``, read
by the test project's settings), one with neither; a task killing its process once is
retried by django-ray, not by Ray. A Ray Job mode worker submits the job of a task
declaring ``entrypoint_num_cpus``, read back from the job's record on the head.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from django.tasks import TaskResultStatus

from django_ray.message import TaskMessage
from tests import tasks
from tests.conftest import run_worker
from tests.runners.test_contract import mode_arguments

CONFIGURED = {
    "tests.tasks.resources_configured": {"num_cpus": 0.5},
    # Must not switch Ray's retries on: the crash below is retried by django-ray only.
    "tests.tasks.crash_first_attempt": {"max_retries": 3},
}


def job_id_of(result: Any) -> str:
    from django_ray.runners.job import submission_id

    message = TaskMessage(id=result.id, task=result.task.module_path, queue="q", backend="default")
    return submission_id(message)


def stored_job_info(head: Any, job_id: str) -> dict[str, Any]:
    """Return the job's record as the head stores it (``get_job_info`` omits entrypoint_*)."""
    from ray._private import ray_constants
    from ray._raylet import GcsClient  # type: ignore[attr-defined]
    from ray.dashboard.modules.job.common import JobInfoStorageClient

    from django_ray import ray_connect

    key = JobInfoStorageClient.JOB_DATA_KEY.format(job_id=job_id).encode()
    with ray_connect._exported(ray_connect.auth_env(head.token), keep=False):
        gcs = GcsClient(address=head.gcs_address)
        raw = gcs.internal_kv_get(key, ray_constants.KV_NAMESPACE_JOB, timeout=10)
    assert raw, f"no job {job_id} on the head"
    info: dict[str, Any] = json.loads(raw)
    return info


def assert_successful(*results: Any) -> None:
    for result in results:
        result.refresh()
        assert result.status == TaskResultStatus.SUCCESSFUL, (result.task, result.errors)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
def test_ray_tasks_get_declared_and_configured_cpus_and_ray_never_retries(
    broker_url: str, request: pytest.FixtureRequest
) -> None:
    args, env = mode_arguments("local", request)
    queue = f"options-local-{uuid.uuid4().hex[:8]}"

    def on(task: Any) -> Any:
        return task.using(queue_name=queue)

    declared = on(tasks.resources_declared).enqueue()
    configured = on(tasks.resources_configured).enqueue()
    default = on(tasks.resources_default).enqueue()
    crashed = on(tasks.crash_first_attempt).enqueue()

    proc = run_worker(
        f"--queue={queue}", "--batch", *args, timeout=180,
        DJANGO_RAY_TASK_OPTIONS=json.dumps(CONFIGURED), **env,
    )  # fmt: skip

    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_successful(declared, configured, default, crashed)
    assert declared.return_value.get("CPU") == 2
    assert configured.return_value.get("CPU") == 0.5
    assert default.return_value.get("CPU") == 1
    # Two attempts, both ours: had Ray retried the dead process itself, the second attempt
    # would have run without django-ray recording the loss.
    assert crashed.attempts == 2
    assert crashed.return_value == 2
    assert [e.exception_class_path for e in crashed.errors] == ["django_ray.exceptions.WorkerLost"]
    assert "Ignoring Ray option(s) max_retries of task tests.tasks.crash_first_attempt" in (
        proc.stderr
    )


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
def test_ray_job_gets_the_declared_entrypoint_cpus(
    broker_url: str, ray_head: Any, request: pytest.FixtureRequest
) -> None:
    args, env = mode_arguments("job", request)
    queue = f"options-job-{uuid.uuid4().hex[:8]}"
    reserved = tasks.job_entrypoint_cpu.using(queue_name=queue).enqueue()
    plain = tasks.add.using(queue_name=queue).enqueue(1, 2)

    proc = run_worker(f"--queue={queue}", "--batch", *args, timeout=120, **env)

    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_successful(reserved, plain)
    assert stored_job_info(ray_head, job_id_of(reserved))["entrypoint_num_cpus"] == 1
    assert not stored_job_info(ray_head, job_id_of(plain))["entrypoint_num_cpus"]


def test_ray_task_options_keep_ray_task_keys_only(settings: Any) -> None:
    pytest.importorskip("ray")
    from django_ray.runners.local import remote_execute
    from django_ray.runners.ray_support import ray_options_for, ray_task_options

    settings.TASKS = {
        "default": {
            **settings.TASKS["default"],
            "OPTIONS": {"TASK_OPTIONS": {"tests.tasks.resources_declared": {
                "num_cpus": 0.5, "max_retries": 3, "entrypoint_num_cpus": 1,
            }}},
        }
    }  # fmt: skip
    message = TaskMessage(id="t1", task="tests.tasks.resources_declared", queue="default")

    # TASK_OPTIONS win over the declaration; the Ray task gets what applies to Ray tasks.
    assert ray_options_for(message) == {"num_cpus": 0.5, "max_retries": 3, "entrypoint_num_cpus": 1}
    assert ray_task_options(message) == {"num_cpus": 0.5}
    assert remote_execute()._default_options["max_retries"] == 0
