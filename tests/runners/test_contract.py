"""The runner contract: the same tasks give the same recorded outcomes in every mode.

Each mode runs as a real ``django_ray_worker`` subprocess draining a batch through Redis:
``--sync``, ``--local`` (its own Ray), ``--cluster`` and the Ray Job mode (both against a
``ray start`` head with token authentication).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.tasks import TaskResultStatus

from tests import tasks
from tests.conftest import run_worker

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EXPECTED = {
    "add": ("SUCCESSFUL", 5, 1),
    "fail": ("FAILED", "tests.tasks.CustomError", 1),
    "non_json": ("FAILED", "builtins.TypeError", 1),
    "context": ("SUCCESSFUL", {"attempt": 1, "status": "RUNNING", "value": 7}, 1),
    "retry": ("SUCCESSFUL", 2, 2),
    "orm": ("SUCCESSFUL", True, 1),
    "async": ("SUCCESSFUL", 9, 1),
}


def mode_arguments(mode: str, request: pytest.FixtureRequest) -> tuple[list[str], dict[str, str]]:
    if mode == "sync":
        return ["--sync"], {}
    if mode == "local":
        from tests.raycluster import require_ray

        require_ray()
        return ["--local", "--num-cpus=2"], {}
    head: Any = request.getfixturevalue("ray_head")
    if mode == "cluster":
        return [f"--cluster={head.gcs_address}"], head.env()
    return [], {**head.env(), "DJANGO_RAY_RAY_ADDRESS": head.dashboard_url}


def enqueue_contract(queue: str) -> dict[str, Any]:
    def on(task: Any) -> Any:
        return task.using(queue_name=queue)

    return {
        "add": on(tasks.add).enqueue(2, 3),
        "fail": on(tasks.fail).enqueue("boom"),
        "non_json": on(tasks.non_json_result).enqueue(),
        "context": on(tasks.with_context).enqueue(7),
        "retry": on(tasks.flaky).enqueue(2),
        "orm": on(tasks.count_records).enqueue(),
        "async": on(tasks.async_add).enqueue(4, 5),
    }


def summarise(name: str, result: Any) -> tuple[str, Any, int]:
    result.refresh()
    if result.status == TaskResultStatus.SUCCESSFUL:
        value = result.return_value
        if name == "context":
            assert value.pop("id") == result.id
        if name == "orm":
            value = isinstance(value, int) and value >= len(EXPECTED)
        return ("SUCCESSFUL", value, result.attempts)
    if result.status == TaskResultStatus.FAILED:
        return ("FAILED", result.errors[-1].exception_class_path, result.attempts)
    return (str(result.status), None, result.attempts)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
@pytest.mark.parametrize("mode", ["sync", "local", "cluster", "job"])
def test_same_outcomes_in_every_mode(
    mode: str, broker_url: str, request: pytest.FixtureRequest
) -> None:
    args, env = mode_arguments(mode, request)
    queue = f"contract-{mode}-{uuid.uuid4().hex[:8]}"
    results = enqueue_contract(queue)

    proc = run_worker(f"--queue={queue}", "--batch", *args, timeout=240, **env)

    assert proc.returncode == 0, proc.stderr[-3000:]
    outcomes = {name: summarise(name, result) for name, result in results.items()}
    assert outcomes == EXPECTED
    failed = results["fail"]
    assert "CustomError: boom" in failed.errors[-1].traceback
    assert "in fail" in failed.errors[-1].traceback
    retried = results["retry"]
    assert [e.exception_class_path for e in retried.errors] == ["tests.tasks.CustomError"]
    assert retried.started_at < retried.last_attempted_at
    for result in results.values():
        assert result.finished_at >= result.last_attempted_at >= result.started_at
