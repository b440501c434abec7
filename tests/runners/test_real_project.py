"""A project shaped like a real one runs the same in all four modes (``tests/realproject``).

Nothing is listed by hand: the Django apps come from ``INSTALLED_APPS`` (extended from the
environment), the Celery tasks from the Celery app's ``include``; the worker gets no
``TASK_MODULES``. Every Ray worker process starts empty and the Ray head is started apart
from the project's environment (``tests.raycluster``), so each Ray process must set itself
up (Django, then the registry) before it unpickles a fan-out function defined in a task
module. The three task kinds run side by side: Django ``@task``, an unchanged Celery app's
``@shared_task`` sent by a real Celery client, and ``compat.celery`` tasks; with the
failures an adapter must settle itself (``sys.exit`` in a task, a result nested too deep).
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.tasks import TaskResultStatus

from django_ray.models import TaskRecord
from tests.conftest import run_worker
from tests.runners.test_contract import mode_arguments

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.redis]

PROJECT = Path(__file__).resolve().parent.parent / "realproject"
MODES = ["sync", "local", "cluster", "job"]


@pytest.fixture(scope="module")
def project() -> Any:
    """Import the project's modules in this (client) process, as its web processes do."""
    from celery import _state

    # The project's app becomes Celery's current app on import: give the previous one back
    # afterwards, or later tests' shared tasks would send through this project's app.
    current, default = getattr(_state._tls, "current_app", None), _state.default_app
    sys.path.insert(0, str(PROJECT))
    try:
        import celeryproj.tasks  # noqa: F401  (the client imports the tasks it calls)
        from celeryproj.celery import app
        from compatshop import tasks as compat_tasks
        from shop import tasks as shop_tasks

        yield {"celery": app, "shop": shop_tasks, "compat": compat_tasks}
    finally:
        sys.path.remove(str(PROJECT))
        _state._tls.current_app, _state.default_app = current, default


def project_env(redis_url: str) -> dict[str, str]:
    """The worker's environment: the project's variables, and no TASK_MODULES."""
    python_path = os.pathsep.join([str(PROJECT), os.environ.get("PYTHONPATH", "")])
    return {
        "DJANGO_RAY_TASK_MODULES": "",
        "DJANGO_RAY_EXTRA_APPS": "shop,compatshop",
        "DJANGO_RAY_CELERY_APP": "celeryproj.celery.app",
        "CELERY_BROKER_URL": redis_url,
        "CELERY_RESULT_BACKEND": redis_url,
        # The Celery app reads these two: its Ray processes need them too (RAY_ENV_VARS), or
        # on a cluster they would store results at the app's default URL.
        "DJANGO_RAY_RAY_ENV_VARS": "CELERY_BROKER_URL,CELERY_RESULT_BACKEND",
        "PYTHONPATH": python_path,
    }


def state(task_id: str) -> tuple[str, Any]:
    """Return the record's status and its value (return value, or the last error's class)."""
    record = TaskRecord.objects.get(pk=task_id)
    if record.status == "SUCCESSFUL":
        return record.status, record.return_value
    error = record.last_error or {}
    return record.status, error.get("exception_class_path")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
@pytest.mark.parametrize("mode", MODES)
def test_a_real_project_runs_in_every_mode(
    mode: str, broker_url: str, project: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    args, env = mode_arguments(mode, request)
    queue = f"real-{mode}-{uuid.uuid4().hex[:8]}"
    shop, compat, celery_app = project["shop"], project["compat"], project["celery"]
    celery_app.conf.update(broker_url=broker_url, result_backend=broker_url)

    def django_task(task: Any, *a: Any) -> str:
        return task.using(queue_name=queue).enqueue(*a).id

    def celery_task(name: str, *a: Any) -> str:
        return celery_app.tasks[name].apply_async(args=a, queue=queue).id

    ids = {
        "django fan-out": django_task(shop.fan_out, 4),
        "django orm": django_task(shop.count_records),
        "django exit": django_task(shop.exits),
        "django too deep": django_task(shop.too_deep),
        "compat add": compat.add.apply_async((2, 3), queue=queue).id,
        "compat fan-out": compat.fan_out.apply_async((3,), queue=queue).id,
        "compat orm": compat.count_records.apply_async(queue=queue).id,
        "compat exit": compat.exits.apply_async(queue=queue).id,
        "compat too deep": compat.too_deep.apply_async(queue=queue).id,
        "django progress": django_task(shop.reports_progress),
        "compat progress": compat.reports_progress.apply_async(queue=queue).id,
        "celery ping": celery_task("celeryproj.tasks.ping"),
        "celery fan-out": celery_task("celeryproj.tasks.fan_out", 3),
        "celery orm": celery_task("celeryproj.tasks.count_records"),
        "celery exit": celery_task("celeryproj.tasks.exits"),
    }

    proc = run_worker(
        f"--queue={queue}", "--batch", *args, timeout=300, **env, **project_env(broker_url)
    )

    assert proc.returncode == 0, proc.stderr[-3000:]
    outcomes = {name: state(task_id) for name, task_id in ids.items()}
    on_ray = mode != "sync"
    fan_out = outcomes.pop("django fan-out")
    assert fan_out[0] == "SUCCESSFUL", (fan_out, proc.stderr[-3000:])
    assert fan_out[1].pop("on_ray") is on_ray
    assert fan_out[1].pop("workers") == (2 if on_ray else 1)
    assert fan_out[1] == {
        "squares": [0, 1, 4, 9],
        "products": [0, 2, 6, 12],
        "closures": [10, 11, 12],
        "gathered": [9, "lambda"],
    }
    counts = [outcomes.pop(f"{kind} orm") for kind in ("django", "compat", "celery")]
    recorded_at_enqueue = sum(1 for name in ids if not name.startswith("celery"))
    assert all(s == "SUCCESSFUL" and n >= recorded_at_enqueue for s, n in counts), counts
    assert outcomes == {
        "django exit": ("FAILED", "builtins.SystemExit"),
        "django too deep": ("FAILED", "builtins.TypeError"),
        "compat add": ("SUCCESSFUL", 5),
        "compat fan-out": ("SUCCESSFUL", {"cubes": [0, 1, 8], "id": ids["compat fan-out"]}),
        "compat exit": ("FAILED", "builtins.SystemExit"),
        "compat too deep": ("FAILED", "builtins.TypeError"),
        "celery ping": ("SUCCESSFUL", "pong"),
        "celery fan-out": ("SUCCESSFUL", {"doubles": [0, 2, 4], "id": ids["celery fan-out"]}),
        "celery exit": ("FAILED", "builtins.SystemExit"),
        # Progress written from the process that runs the task (a Ray worker, a job), seen
        # while it runs: by the record, and by a Celery client on the result backend.
        "django progress": ("SUCCESSFUL", {
            "stored": True, "seen": ["RUNNING", "PROGRESS", {"step": 1, "of": 2}],
        }),
        "compat progress": ("SUCCESSFUL", {
            "record": ["RUNNING", "PROGRESS", {"step": 1, "of": 2}],
            "celery": ["PROGRESS", {"step": 1, "of": 2}],
        }),
    }  # fmt: skip
    # Each ran once: a task that exits is not run again by a later delivery.
    attempts = TaskRecord.objects.filter(pk__in=ids.values()).values_list("worker_ids", flat=True)
    assert all(len(workers) == 1 for workers in attempts)
    # The record keeps the last progress reported; the Celery client now sees the outcome.
    for name in ("django progress", "compat progress"):
        done = TaskRecord.objects.get(pk=ids[name])
        assert (done.progress_state, done.progress) == ("PROGRESS", {"step": 1, "of": 2})
    assert celery_app.AsyncResult(ids["compat progress"]).state == "SUCCESS"
    # The unchanged Celery client reads its results from its own result backend.
    assert celery_app.AsyncResult(ids["celery ping"]).get(timeout=10) == "pong"
    exited = celery_app.AsyncResult(ids["celery exit"])
    assert exited.state == "FAILURE"
    assert TaskRecord.objects.get(pk=ids["django exit"]).django_status == TaskResultStatus.FAILED
