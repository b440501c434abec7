"""Short tasks travel to Ray in packs; a pack whose process dies loses nothing.

The runner is driven directly (tests/runners/pack_driver.py in a subprocess, with its own
local Ray) so that a pack can be made by hand: the worker makes packs only under load.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from django_ray.models import TaskRecord
from tests.conftest import worker_env

pytestmark = [pytest.mark.ray, pytest.mark.slow]

DRIVER = Path(__file__).with_name("pack_driver.py")


def drive(*args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(DRIVER), *args], env=worker_env(), capture_output=True, text=True,
        timeout=240, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.django_db(transaction=True)
def test_short_tasks_share_ray_calls_once_their_time_is_known() -> None:
    report = drive("learn", f"packs-{uuid.uuid4().hex[:8]}", "60")
    assert len(report["done"]) == 60
    assert {d["status"] for d in report["done"].values()} == {"SUCCESSFUL"}
    assert TaskRecord.objects.filter(pk__in=report["done"], status="SUCCESSFUL").count() == 60
    # One Ray call per task until the runner has measured the task, then packs.
    assert sum(report["calls"]) == 60
    assert max(report["calls"]) > 1
    assert len(report["calls"]) < 60


@pytest.mark.django_db(transaction=True)
def test_a_pack_whose_process_dies_settles_each_member_by_its_record() -> None:
    report = drive("dead", f"packs-{uuid.uuid4().hex[:8]}")
    assert report["calls"][0] == 4  # the pack made by hand
    first, crashed, *later = (
        TaskRecord.objects.get(pk=task_id)
        for task_id in sorted(
            report["done"], key=lambda i: TaskRecord.objects.get(pk=i).enqueued_at
        )
    )
    # It had finished before the crash: acknowledged as it is, not run again.
    assert first.status == "SUCCESSFUL" and first.attempts == 1
    assert report["done"][first.id]["duplicate"] is True
    # It was running: its attempt is lost (a Django task has one attempt).
    assert crashed.status == "FAILED"
    assert crashed.errors[-1]["exception_class_path"] == "django_ray.exceptions.WorkerLost"
    # They had not started: they run again, counted once.
    assert [(r.status, r.attempts) for r in later] == [("SUCCESSFUL", 1), ("SUCCESSFUL", 1)]
    assert len(report["calls"]) > 1


@pytest.mark.django_db(transaction=True)
def test_a_ray_call_keeps_its_connection_only_while_more_work_comes() -> None:
    """The function a Ray call runs, called here: with more work coming the process keeps
    its database connection for the next call; at the end of the work it closes it."""
    from django.db import connection

    from django_ray.message import TaskMessage, new_task_id
    from django_ray.runners.local import _run_in_ray

    def run(keep: bool) -> None:
        message = TaskMessage(id=new_task_id(), task="tests.tasks.add", args=(1, 2))
        results, _ = _run_in_ray([message], "packs-test", keep)
        assert results[0].status == "SUCCESSFUL"

    assert connection.settings_dict["CONN_MAX_AGE"] == 0  # Django's default: close at the end
    run(keep=True)
    kept = connection.connection
    assert kept is not None
    run(keep=True)
    assert connection.connection is kept  # the same connection served the next call
    run(keep=False)
    assert connection.connection is None
