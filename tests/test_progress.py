"""Task progress: ``set_progress(context, ...)`` and ``self.update_state(...)`` (docs/progress.md).

The end-to-end tests run a real worker (``--sync``, then ``--local``: the task runs in a
Ray worker process) on tasks that report a step and wait for the test to release them
(``tests/progress_tasks.py``), and look at each step from outside while the task runs:
the record, compat's ``AsyncResult``, a real Celery client on the Redis result backend,
``django_ray_status``, the metrics view and the admin list. The unit tests below pin the
fence: a report lands only while its attempt runs.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import redis
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from compat.celery.result import AsyncResult
from django_ray import progress
from django_ray.celery import results
from django_ray.models import TaskRecord, TaskStatus
from tests import progress_tasks
from tests.conftest import worker_command, worker_env
from tests.processes import Process
from tests.services import require_redis
from tests.test_metrics import samples

pytestmark = [pytest.mark.timeout(240)]

TASK_MODULES = "tests.tasks,tests.progress_tasks"
DJANGO_TASK = "tests.progress_tasks.django_steps"
COMPAT_TASK = "tests.progress_tasks.compat_steps"


@pytest.fixture
def pg_queue() -> str:
    return f"pg-{uuid4().hex[:10]}"


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The Redis database of these tests (TEST_REDIS_URL), emptied of their keys afterwards."""
    url = require_redis()
    yield url
    client = redis.Redis.from_url(url)
    for key in client.scan_iter("celery-task-meta-pg-*"):
        client.delete(key)


@pytest.fixture
def celery_client(redis_url: str) -> Any:
    """An unchanged Celery client app reading the Redis result backend."""
    from celery import Celery

    app = Celery("pg-client", set_as_current=False)
    app.conf.update(result_backend=redis_url, broker_url=redis_url)
    yield app
    app.close()


@pytest.fixture
def store_on(redis_url: str, settings: Any) -> str:
    """This process's result store: Celery's Redis format at ``redis_url`` (no Celery app)."""
    settings.CELERY_RESULT_BACKEND = redis_url
    settings.DJANGO_RAY = {**settings.DJANGO_RAY, "CELERY_APP": None}
    assert type(results.store()).__name__ == "RedisStore"
    return redis_url


def celery_state(app: Any, task_id: str) -> tuple[str, Any]:
    from celery.result import AsyncResult as CeleryResult

    result = CeleryResult(task_id, app=app)
    return result.state, result.info


def record(task_id: str) -> TaskRecord:
    return TaskRecord.objects.get(pk=task_id)


# -- end to end: a worker runs the tasks, the test watches them report ------------------------


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("mode", ["sync", pytest.param("local", marks=pytest.mark.ray)])
def test_progress_is_seen_while_tasks_run(
    mode: str,
    pg_queue: str,
    redis_url: str,
    celery_client: Any,
    admin_client: Client,
    tmp_path: Path,
) -> None:
    args = ["--sync"]
    if mode == "local":
        from tests.raycluster import require_ray

        require_ray()
        args = ["--local", "--num-cpus=2"]
    holds = {"django": str(tmp_path / "django"), "compat": str(tmp_path / "compat")}
    ids = {
        "django": progress_tasks.django_steps.using(queue_name=pg_queue)
        .enqueue(holds["django"])
        .id,
        "compat": progress_tasks.compat_steps.apply_async((holds["compat"],), queue=pg_queue).id,
    }
    env = worker_env(
        DJANGO_RAY_TASK_MODULES=TASK_MODULES, DJANGO_RAY_CELERY_RESULT_BACKEND=redis_url,
        DJANGO_RAY_CELERY_APP="",
    )  # fmt: skip
    worker = Process(worker_command(f"--queue={pg_queue}", *args, "--worker-id=pg-w"), env)
    try:
        for kind in ("django", "compat"):  # --sync runs one at a time: the Django one first
            task_id = ids[kind]
            for step, (state, meta) in enumerate(progress_tasks.STEPS, start=1):

                def reported(task_id: str = task_id, state: str = state) -> bool:
                    row = record(task_id)
                    return row.status == TaskStatus.RUNNING and row.progress_state == state

                worker.wait_for(reported, f"{kind} step {step} ({state})", timeout=120)
                seen = record(task_id)
                assert (seen.progress, seen.progress_state) == (meta, state)
                assert seen.progress_at is not None and seen.progress_at >= seen.last_attempted_at
                # compat's AsyncResult reads the record: the reported state and its meta.
                assert (AsyncResult(task_id).state, AsyncResult(task_id).info) == (state, meta)
                if kind == "compat":  # an unchanged Celery client, on its result backend
                    # (written right after the record: the record's fence decides first)
                    worker.wait_for(
                        lambda task_id=task_id, seen=(state, meta): (
                            celery_state(celery_client, task_id) == seen
                        ),
                        f"a Celery client to see {state}",
                        timeout=10,
                    )
                if step == 1:
                    check_status_metrics_and_admin(pg_queue, task_id, state, meta, admin_client)
                Path(f"{holds[kind]}.{step}").touch()
            worker.wait_for(
                lambda task_id=task_id: record(task_id).status == TaskStatus.SUCCESSFUL,
                f"the {kind} task to finish",
                timeout=60,
            )
    finally:
        for hold in holds.values():  # let a task still held end, so the worker can stop
            for step in range(1, len(progress_tasks.STEPS) + 1):
                Path(f"{hold}.{step}").touch()
        try:
            worker.stop()
        finally:
            worker.kill()

    django_done, compat_done = record(ids["django"]), record(ids["compat"])
    assert django_done.return_value == {"stored": [True, True]}  # set_progress said "stored"
    assert compat_done.return_value == {"id": ids["compat"]}
    # The outcome replaces the progress for every client; the record keeps the last report.
    assert (AsyncResult(ids["compat"]).state, AsyncResult(ids["compat"]).info) == (
        "SUCCESS", {"id": ids["compat"]},
    )  # fmt: skip
    assert celery_state(celery_client, ids["compat"]) == ("SUCCESS", {"id": ids["compat"]})
    assert (compat_done.progress_state, compat_done.progress) == progress_tasks.STEPS[-1]
    # A report after the end is dropped, in the record and in the result backend.
    assert not progress.report(ids["compat"], "PROGRESS", {"late": True})
    assert record(ids["compat"]).progress == progress_tasks.STEPS[-1][1]
    assert celery_state(celery_client, ids["compat"])[0] == "SUCCESS"
    metrics = admin_client.get("/django-ray/metrics").content.decode()
    assert samples(metrics, "django_ray_tasks_in_progress", task=DJANGO_TASK) == 0


def check_status_metrics_and_admin(
    queue: str, task_id: str, state: str, meta: Any, admin_client: Client
) -> None:
    """The running task's progress in ``django_ray_status``, the metrics and the admin."""
    out = io.StringIO()
    call_command("django_ray_status", f"--queue={queue}", "--json", stdout=out)
    running = json.loads(out.getvalue())["queues"][queue]["running"]
    mine = [r["progress"] for r in running if r["id"] == task_id]  # --local runs both at once
    assert [(p["state"], p["meta"]) for p in mine] == [(state, meta)]
    out = io.StringIO()
    call_command("django_ray_status", f"--queue={queue}", stdout=out)
    assert f"progress: {state} {json.dumps(meta, separators=(',', ':'))}" in out.getvalue()

    metrics = admin_client.get("/django-ray/metrics").content.decode()
    name = record(task_id).task_name
    assert samples(metrics, "django_ray_tasks_in_progress", task=name, state=state) == 1

    page = admin_client.get(reverse("admin:django_ray_taskrecord_changelist"), {"q": task_id})
    text = page.content.decode()
    assert state in text and "done" in text, text[-2000:]
    detail = admin_client.get(reverse("admin:django_ray_taskrecord_change", args=[task_id]))
    assert state in detail.content.decode()


# -- the fence and the checks (in this process) ---------------------------------------------------


@pytest.mark.django_db
def test_a_report_lands_only_while_its_attempt_runs() -> None:
    now = timezone.now()
    row = TaskRecord.objects.create(id=f"pg-{uuid4().hex}", task_name="t", status="READY")
    assert not progress.report(row.id, "PROGRESS", {"n": 1}, celery=False)  # not started

    assert row.mark_running("w1")
    attempt = row.last_attempted_at
    earlier = attempt - timedelta(seconds=5)
    assert not progress.report(row.id, "PROGRESS", {"n": 1}, attempt=earlier, celery=False)
    assert record(row.id).progress_state is None
    assert progress.report(row.id, "PROGRESS", {"n": 2}, attempt=attempt, celery=False)
    stored = record(row.id)
    assert (stored.status, stored.progress_state, stored.progress) == (
        "RUNNING",
        "PROGRESS",
        {"n": 2},
    )
    assert stored.progress_at is not None and stored.progress_at >= now
    assert stored.celery_progress_state == "PROGRESS"

    # Waiting for a retry: not running, nothing lands; the next attempt starts afresh.
    assert stored.mark_retrying(None, retries=1, eta=None)
    assert not progress.report(row.id, "PROGRESS", {"n": 3}, celery=False)
    assert stored.mark_running("w2")
    fresh = record(row.id)
    assert (fresh.progress_state, fresh.progress, fresh.progress_at) == (None, None, None)
    assert fresh.celery_progress_state == "STARTED"
    assert progress.report(row.id, "PROGRESS", {"n": 4}, celery=False)  # any attempt

    assert fresh.mark_successful(1)
    assert not progress.report(row.id, "PROGRESS", {"n": 5}, celery=False)
    done = record(row.id)
    assert (done.progress, done.celery_progress_state) == ({"n": 4}, "SUCCESS")


@pytest.mark.django_db
def test_outcome_states_empty_states_and_non_json_meta_are_refused() -> None:
    row = TaskRecord.objects.create(id=f"pg-{uuid4().hex}", task_name="t", status="RUNNING")
    for state in ("SUCCESS", "FAILURE", "REVOKED", "", "x" * 65, None):
        with pytest.raises(ValueError):
            progress.report(row.id, state, {}, celery=False)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="JSON"):
        progress.report(row.id, "PROGRESS", {"obj": object()}, celery=False)
    with pytest.raises(TypeError, match="JSON"):
        progress.report(row.id, "PROGRESS", float("nan"), celery=False)
    assert record(row.id).progress_state is None


@pytest.mark.redis
@pytest.mark.django_db
def test_update_state_of_another_task_and_what_a_celery_client_sees(
    store_on: str, celery_client: Any
) -> None:
    other = TaskRecord.objects.create(
        id=f"pg-{uuid4().hex}", task_name="t", status="RUNNING", origin="celery",
        last_attempted_at=timezone.now(),
    )  # fmt: skip
    reporter = progress_tasks.report_for.apply((other.id, {"rows": 10}))
    assert reporter.state == "SUCCESS"
    assert (record(other.id).progress_state, record(other.id).progress) == (
        "PROGRESS",
        {"rows": 10},
    )
    assert (AsyncResult(other.id).state, AsyncResult(other.id).info) == ("PROGRESS", {"rows": 10})
    assert celery_state(celery_client, other.id) == ("PROGRESS", {"rows": 10})

    # Finished meanwhile: the record keeps its outcome and so does the result backend.
    results.store().done(_message(other.id), "out", children=(), store=True)
    TaskRecord.objects.filter(pk=other.id).update(status="SUCCESSFUL", return_value="out")
    progress_tasks.report_for.apply((other.id, {"rows": 11}))
    assert record(other.id).progress == {"rows": 10}
    assert celery_state(celery_client, other.id) == ("SUCCESS", "out")
    assert (AsyncResult(other.id).state, AsyncResult(other.id).info) == ("SUCCESS", "out")


def _message(task_id: str) -> Any:
    from django_ray.message import TaskMessage

    return TaskMessage(id=task_id, task="t")


@pytest.mark.redis
def test_the_redis_store_never_hides_an_outcome_behind_progress(store_on: str) -> None:
    store = results.store()
    task_id = f"pg-{uuid4().hex}"
    store.progress(task_id, "PROGRESS", {"n": 1})
    assert store.get(task_id)["status"] == "PROGRESS"  # type: ignore[attr-defined]
    store.failed(_message(task_id), RuntimeError("x"), None, store=True)
    store.progress(task_id, "PROGRESS", {"n": 2})
    assert store.get(task_id)["status"] == "FAILURE"  # type: ignore[attr-defined]


@pytest.mark.django_db
def test_update_state_outside_a_run_and_its_arguments() -> None:
    from compat.celery.exceptions import NotSupported

    task = progress_tasks.compat_steps
    task.update_state(state="PROGRESS", meta={"n": 1})  # called directly: no task, nothing
    assert not TaskRecord.objects.filter(progress_state__isnull=False).exists()
    with pytest.raises(ValueError, match="needs a state"):
        task.update_state(task_id="x", meta={})
    with pytest.raises(NotSupported):
        task.update_state(task_id="x", state="PROGRESS", meta={}, retries=1)
    with pytest.raises(ValueError, match="cannot report SUCCESS"):
        progress_tasks.reports_outcome_state.apply(throw=True)


@pytest.mark.django_db
def test_a_django_task_reports_through_its_context(broker_url: str, pg_queue: str) -> None:
    result = progress_tasks.django_reports_then_returns.using(queue_name=pg_queue).enqueue()
    call_command("django_ray_worker", f"--queue={pg_queue}", "--sync", "--batch")
    done = record(result.id)
    assert done.status == "SUCCESSFUL" and done.return_value is True
    assert (done.progress_state, done.progress) == ("PROGRESS", {"almost": True})
