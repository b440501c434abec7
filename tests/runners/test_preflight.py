"""The start-up preflight: the worker proves the Ray cluster sees the same project, or says why not.

The project's settings read a variable of its own (``PROJECT_APPS``, 12-factor style) to
add an app; the Ray head was started apart from the project (``tests.raycluster``), so the
cluster's processes only see what the worker's ``runtime_env`` sends. Without
``RAY_ENV_VARS`` naming that variable, every task of the app would fail on the cluster: the
worker refuses to start and names the difference and the fix. With it, it starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from django_ray.models import TaskRecord
from tests.conftest import run_worker, worker_command, worker_env
from tests.inprocess import queue_size
from tests.runners.test_contract import mode_arguments

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.redis]

PROJECT = Path(__file__).resolve().parent.parent / "realproject"


def project_env(*, send_project_variables: bool) -> dict[str, str]:
    env = {
        "DJANGO_RAY_TASK_MODULES": "",
        "PROJECT_APPS": "shop",  # read by the settings; not a DJANGO_RAY_* variable
        "PYTHONPATH": os.pathsep.join([str(PROJECT), os.environ.get("PYTHONPATH", "")]),
    }
    if send_project_variables:
        env["DJANGO_RAY_RAY_ENV_VARS"] = "PROJECT_APPS"
    return env


def enqueue_shop_task(queue: str) -> str:
    """Publish ``shop.tasks.count_records`` as the project's web process would."""
    import sys

    sys.path.insert(0, str(PROJECT))
    try:
        from shop import tasks
    finally:
        sys.path.remove(str(PROJECT))
    return str(tasks.count_records.using(queue_name=queue).enqueue().id)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
@pytest.mark.parametrize("mode", ["cluster", "job"])
def test_the_worker_refuses_a_cluster_that_lacks_the_projects_environment_until_it_is_sent(
    mode: str, broker_url: str, request: pytest.FixtureRequest
) -> None:
    args, env = mode_arguments(mode, request)
    queue = f"preflight-{mode}-{uuid.uuid4().hex[:8]}"
    task_id = enqueue_shop_task(queue)

    refused = run_worker(
        f"--queue={queue}", "--batch", *args, timeout=240, **env,
        **project_env(send_project_variables=False),
    )  # fmt: skip

    assert refused.returncode == 1, refused.stderr[-3000:]
    assert "cannot start" in refused.stderr
    assert "lacks 1 installed app(s) this worker has: shop" in refused.stderr
    assert "RAY_ENV_VARS" in refused.stderr  # the fix
    assert TaskRecord.objects.get(pk=task_id).status == "READY"  # nothing was taken
    assert queue_size(queue) == 1

    fixed = run_worker(
        f"--queue={queue}", "--batch", *args, timeout=240, **env,
        **project_env(send_project_variables=True),
    )  # fmt: skip

    assert fixed.returncode == 0, fixed.stderr[-3000:]
    record = TaskRecord.objects.get(pk=task_id)
    assert record.status == "SUCCESSFUL", record.errors


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
def test_the_preflight_command_reports_each_difference(broker_url: str, ray_head: Any) -> None:
    def preflight(*, send: bool) -> subprocess.CompletedProcess[str]:
        command = [
            *worker_command()[:-1], "django_ray_preflight", f"--cluster={ray_head.gcs_address}",
            "--json",
        ]  # fmt: skip
        env = worker_env(**ray_head.env(), **project_env(send_project_variables=send))
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)

    broken, fixed = preflight(send=False), preflight(send=True)

    assert broken.returncode == 1, broken.stderr[-3000:]
    report = json.loads(broken.stdout)
    assert report["ok"] is False
    assert "shop" in report["worker"]["installed_apps"]
    assert "shop" not in report["cluster"]["installed_apps"]
    assert any("shop.tasks.count_records" in error for error in report["errors"])
    assert "password" not in broken.stdout.lower()
    assert fixed.returncode == 0, fixed.stdout[-3000:] + fixed.stderr[-3000:]
    assert json.loads(fixed.stdout)["errors"] == []
