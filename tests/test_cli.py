"""The ``django-ray`` command line (django_ray/cli.py, docs/cli.md).

Most commands run in-process through click's ``CliRunner`` on the test database and the
``django://`` broker; one test runs the installed console script as a subprocess, and
``inspect``/``revoke --terminate`` ask a real ``django_ray_worker`` on Redis (DB 13).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from uuid import uuid4

import pytest
from click.testing import CliRunner, Result
from django.conf import settings
from django.utils import timezone

from django_ray.celery.wire import node_name
from django_ray.cli import CHECK_BROKER, CHECK_FAILED, CHECK_STALE, main, parse_duration
from django_ray.message import TaskMessage, new_task_id
from django_ray.models import QueueMessage, TaskRecord, TaskStatus
from django_ray.transport import Broker
from tests import tasks
from tests.conftest import ROOT, run_worker, worker_env

pytestmark = pytest.mark.django_db(transaction=True)

CLI_REDIS = "redis://127.0.0.1:6379/13"


def cli(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def new_queue() -> str:
    return f"cli-{uuid4().hex[:10]}"


def make_record(status: str, queue: str, **fields: Any) -> TaskRecord:
    return TaskRecord.objects.create(
        id=new_task_id(), task_name="tests.tasks.add", queue=queue, status=status, **fields
    )


def test_parse_duration() -> None:
    assert parse_duration("90") == timedelta(seconds=90)
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("2d") == timedelta(days=2)
    assert cli("retry", "--failed", "--since", "soon").exit_code == 2


def test_worker_sync_batch_drains_a_queue() -> None:
    queue = new_queue()
    results = [tasks.add.using(queue_name=queue).enqueue(i, 1) for i in range(3)]
    done = cli("worker", "--sync", "--batch", "--queue", queue, "-v", "0")
    assert done.exit_code == 0, done.output
    records = TaskRecord.objects.filter(pk__in=[r.id for r in results])
    assert {r.status for r in records} == {TaskStatus.SUCCESSFUL}
    assert sorted(r.return_value for r in records) == [1, 2, 3]


def test_worker_refuses_two_modes() -> None:
    done = CliRunner().invoke(main, ["worker", "--sync", "--local"])
    assert done.exit_code == 2 and "exclude each other" in done.output


def test_status_check_exit_codes(settings: Any) -> None:
    queue = new_queue()
    ok = cli("status", "--queue", queue, "--check", "--json")
    assert ok.exit_code == 0, ok.output
    report = json.loads(ok.output)
    assert report["check"]["ok"] is True and queue in report["queues"]

    failed = make_record(TaskStatus.FAILED, queue, finished_at=timezone.now() - timedelta(days=2))
    assert cli("status", "--queue", queue, "--check").exit_code == CHECK_FAILED
    # Only recent failures count with --failed-since.
    assert cli("status", "--queue", queue, "--check", "--failed-since", "1h").exit_code == 0
    failed.delete()

    old = timezone.now() - timedelta(hours=5)
    make_record(TaskStatus.RUNNING, queue, last_attempted_at=old, worker_ids=["gone"])
    stale = cli("status", "--queue", queue, "--check")
    assert stale.exit_code == CHECK_STALE, stale.output
    assert "1 stale RUNNING record(s)" in stale.output

    settings.DJANGO_RAY = {**settings.DJANGO_RAY, "BROKER_URL": "redis://127.0.0.1:1/13"}
    down = cli("status", "--queue", queue, "--check", "--json")
    assert down.exit_code == CHECK_STALE | CHECK_BROKER
    assert json.loads(down.output)["check"]["broker_error"]


def test_status_without_check_prints_the_report() -> None:
    queue = new_queue()
    make_record(TaskStatus.FAILED, queue, finished_at=timezone.now())
    done = cli("status", "--queue", queue)
    assert done.exit_code == 0 and f"Queue {queue!r}" in done.output and "FAILED 1" in done.output


def test_console_script_status_json() -> None:
    script = ROOT / ".venv" / "bin" / "django-ray"
    env = worker_env()
    env.pop("DJANGO_SETTINGS_MODULE", None)  # --settings sets it
    done = subprocess.run(
        [str(script), "--settings", "testproject.settings", "status", "--json"],
        env=env, capture_output=True, text=True, timeout=60, check=False, cwd="/",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert {"generated_at", "visibility_timeout", "queues"} <= set(report)


def _publish(queue: str, count: int) -> None:
    broker = Broker()
    try:
        for _ in range(count):
            broker.publish(TaskMessage(id=new_task_id(), task="tests.tasks.noop", queue=queue))
    finally:
        broker.close()


def test_purge_asks_first_and_force_skips_it() -> None:
    queue = new_queue()
    _publish(queue, 3)
    declined = cli("purge", queue, input="n\n")
    assert declined.exit_code == 1 and "Aborted" in declined.output
    assert QueueMessage.objects.filter(queue=queue).count() == 3

    accepted = cli("purge", queue, input="y\n")
    assert accepted.exit_code == 0 and f"Purged 3 message(s) from {queue!r}." in accepted.output
    assert not QueueMessage.objects.filter(queue=queue).exists()

    _publish(queue, 2)
    forced = cli("purge", "--force", "--json", queue)
    assert forced.exit_code == 0
    assert json.loads(forced.output) == {"purged": {queue: 2}, "total": 2}


def test_retry_of_a_failed_record_runs_it_again_keeping_its_error() -> None:
    queue = new_queue()
    result = tasks.fail.using(queue_name=queue).enqueue("boom")
    assert cli("worker", "--sync", "--batch", "--queue", queue, "-v", "0").exit_code == 0
    record = TaskRecord.objects.get(pk=result.id)
    assert record.status == TaskStatus.FAILED and len(record.errors) == 1

    done = cli("retry", result.id)
    assert done.exit_code == 0 and f"Retrying {result.id}." in done.output
    assert TaskRecord.objects.get(pk=result.id).status == TaskStatus.READY
    assert cli("worker", "--sync", "--batch", "--queue", queue, "-v", "0").exit_code == 0

    record.refresh_from_db()
    assert record.status == TaskStatus.FAILED
    assert len(record.errors) == 2 and len(record.worker_ids) == 2  # history kept
    assert all("CustomError" in e["exception_class_path"] for e in record.errors)

    # --failed selects it again; an unknown id is reported and exits 1.
    again = cli("retry", "--failed", "--queue", queue, "--since", "1h", "--json")
    assert again.exit_code == 0 and json.loads(again.output)["retried"] == [result.id]
    missing = cli("retry", "no-such-id")
    assert missing.exit_code == 1 and "no such task record" in missing.output


def test_revoke_marks_revoked_and_retry_runs_it() -> None:
    queue = new_queue()
    result = tasks.add.using(queue_name=queue).enqueue(20, 22)
    done = cli("revoke", "--json", result.id)
    assert done.exit_code == 0
    assert json.loads(done.output)["revoked"] == [result.id]
    assert TaskRecord.objects.get(pk=result.id).status == TaskStatus.REVOKED

    # Another process (this one remembers the revoke in memory, as a worker would).
    assert run_worker("--sync", "--batch", f"--queue={queue}").returncode == 0
    assert TaskRecord.objects.get(pk=result.id).status == TaskStatus.REVOKED

    assert cli("retry", result.id).exit_code == 0
    ran = run_worker("--sync", "--batch", f"--queue={queue}")
    assert ran.returncode == 0, ran.stderr
    record = TaskRecord.objects.get(pk=result.id)
    assert record.status == TaskStatus.SUCCESSFUL and record.return_value == 42
    assert record.errors[0]["exception_class_path"] == "celery.exceptions.TaskRevokedError"

    # A finished record is not revoked.
    assert "SUCCESSFUL: not revoked" in cli("revoke", result.id).output


def test_prune_deletes_old_finished_records() -> None:
    queue = new_queue()
    old = make_record(TaskStatus.SUCCESSFUL, queue, finished_at=timezone.now() - timedelta(30))
    kept = make_record(TaskStatus.READY, queue)
    dry = cli("prune", "--queue", queue, "--dry-run", "--json")
    assert json.loads(dry.output)["records"]["SUCCESSFUL"] == 1
    done = cli("prune", "--queue", queue)
    assert done.exit_code == 0 and "Deleted 1 finished task record(s)" in done.output
    assert not TaskRecord.objects.filter(pk=old.pk).exists()
    assert TaskRecord.objects.filter(pk=kept.pk).exists()


def test_bench_runs_its_tasks() -> None:
    done = cli("bench", "-n", "5", "--queue", new_queue(), "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["statuses"] == {"SUCCESSFUL": 5}


def test_inspect_scheduled_reads_the_schedule() -> None:
    done = cli("inspect", "scheduled", "--queue", new_queue(), "--json")
    assert done.exit_code == 0 and json.loads(done.output) == {"scheduled": []}


@pytest.fixture
def redis_worker(settings: Any) -> Iterator[str]:
    """A ``django_ray_worker --sync`` on Redis DB 13; this process's CLI points there too."""
    from tests.celery_interop.workers import django_ray_worker
    from tests.services import require_redis

    require_redis()
    worker_id = f"cli-{uuid4().hex[:8]}"
    settings.DJANGO_RAY = {**settings.DJANGO_RAY, "BROKER_URL": CLI_REDIS, "CELERY_APP": None}
    with django_ray_worker(
        worker_id, [new_queue()], DJANGO_RAY_BROKER=CLI_REDIS, DJANGO_RAY_CELERY_APP=""
    ):
        yield node_name(worker_id)


@pytest.mark.redis
def test_inspect_and_terminate_against_a_running_worker(redis_worker: str) -> None:
    node = redis_worker

    def ask(*args: str) -> Any:
        done = cli("inspect", *args, "-d", node, "--timeout", "5", "--json")
        assert done.exit_code == 0, done.output
        return json.loads(done.output)[node]

    assert ask("ping") == {"ok": "pong"}
    assert "tests.tasks.add" in ask("registered")
    assert ask("active") == []
    stats = ask("stats")
    assert stats["django_ray"]["mode"] == "sync" and "pid" in stats

    text = cli("inspect", "registered", "-d", node, "--timeout", "5")
    assert f"-> {node}: OK" in text.output and "* tests.tasks.add" in text.output

    task_id = make_record(TaskStatus.READY, new_queue()).pk
    done = cli("revoke", task_id, "--terminate", "-d", node, "--timeout", "5", "--json")
    assert done.exit_code == 0, done.output
    assert "ok" in json.loads(done.output)["replies"][node]
    assert TaskRecord.objects.get(pk=task_id).status == TaskStatus.REVOKED

    nobody = cli("inspect", "ping", "-d", "nobody@nowhere", "--timeout", "0.5")
    assert nobody.exit_code == 3


def test_settings_are_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    assert os.environ.get("DJANGO_SETTINGS_MODULE") is None
    done = CliRunner().invoke(main, ["status"])
    assert done.exit_code == 2 and "DJANGO_SETTINGS_MODULE" in done.output
    assert settings.configured


def test_worker_passes_other_flags_to_the_management_command() -> None:
    done = CliRunner().invoke(main, ["worker", "--sync", "--batch", "--no-such-flag"])
    assert done.exit_code != 0  # refused by django_ray_worker's own parser


@pytest.mark.django_db
def test_beat_once_sends_the_due_entries(settings: Any) -> None:
    from datetime import UTC, datetime

    from django_ray.models import PeriodicEntry

    queue = "cli-beat"
    settings.DJANGO_RAY = {
        **settings.DJANGO_RAY,
        "SCHEDULE": {"cli-every-minute": {"task": "tests.tasks.noop", "schedule": 60,
                                          "options": {"queue": queue}}},
    }  # fmt: skip
    runner = CliRunner()
    assert runner.invoke(main, ["beat", "--once"]).exit_code == 0  # creates the entry
    PeriodicEntry.objects.update(created_at=datetime(2024, 5, 1, tzinfo=UTC))

    result = runner.invoke(main, ["beat", "--once"])

    assert result.exit_code == 0, result.output
    assert TaskRecord.objects.filter(queue=queue, task_name="tests.tasks.noop").count() == 1
