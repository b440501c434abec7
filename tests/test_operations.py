"""The operations commands: django_ray_prune and django_ray_status."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_ray import operations
from django_ray.models import QueueMessage, ScheduledMessage, TaskRecord, TaskStatus

pytestmark = pytest.mark.django_db

S, F, R = TaskStatus.SUCCESSFUL, TaskStatus.FAILED, TaskStatus.REVOKED
UNFINISHED = (TaskStatus.READY, TaskStatus.RUNNING, TaskStatus.RETRYING)


def ago(**delta: float) -> datetime:
    return timezone.now() - timedelta(**delta)


def record(id: str, status: str, *, days: float | None = None, **fields: Any) -> TaskRecord:
    """Create a record in ``status``; ``days``: how long ago it finished."""
    finished_at = None if days is None else ago(days=days)
    fields.setdefault("task_name", "tests.tasks.add")
    return TaskRecord.objects.create(id=id, status=status, finished_at=finished_at, **fields)


def park(task_id: str, *, queue: str = "default", eta: datetime | None = None) -> None:
    ScheduledMessage.objects.create(
        task_id=task_id, queue=queue, eta=eta or ago(days=-1), payload={}
    )


def run(command: str, *args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(command, *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def remaining() -> set[str]:
    return set(TaskRecord.objects.values_list("id", flat=True))


# -- django_ray_prune -------------------------------------------------------------


def test_prune_deletes_only_finished_records_older_than_the_age() -> None:
    for status in (S, F, R):
        record(f"old-{status}", status, days=15)
        record(f"young-{status}", status, days=13)
    for status in UNFINISHED:  # never deleted, even with an old finished_at
        record(f"busy-{status}", status, days=100)

    out, err = run("django_ray_prune")

    assert remaining() == {f"young-{s}" for s in (S, F, R)} | {f"busy-{s}" for s in UNFINISHED}
    assert out.splitlines() == [
        "Deleted 3 finished task record(s):",
        "  SUCCESSFUL: 1",
        "  FAILED: 1",
        "  REVOKED: 1",
        "Deleted 0 scheduled message(s) of finished tasks.",
    ]
    assert err == ""


def test_failed_records_have_their_own_age() -> None:
    for status in (S, F, R):
        record(f"20d-{status}", status, days=20)
    record("40d-FAILED", F, days=40)

    out, _ = run("django_ray_prune", "--min-age-days=7", "--failed-min-age-days=30")

    assert remaining() == {"20d-FAILED"}
    assert "  SUCCESSFUL: 1\n  FAILED: 1\n  REVOKED: 1" in out


def test_failed_age_can_be_shorter_than_the_others() -> None:
    record("ok", S, days=3)
    record("failed", F, days=3)
    run("django_ray_prune", "--min-age-days=7", "--failed-min-age-days=1")
    assert remaining() == {"ok"}


def test_prune_filters_by_queues_and_task_name() -> None:
    record("a", S, days=30, queue="a")
    record("b", S, days=30, queue="b")
    record("c", S, days=30, queue="c")
    record("a-other", S, days=30, queue="a", task_name="tests.tasks.fail")

    run("django_ray_prune", "--queue=a", "--queue=b", "--task=tests.tasks.add")

    assert remaining() == {"c", "a-other"}


def test_dry_run_counts_and_deletes_nothing() -> None:
    record("s1", S, days=20)
    record("s2", S, days=20)
    record("r", R, days=20)
    record("young", S, days=1)
    park("r")

    out, _ = run("django_ray_prune", "--dry-run")

    assert remaining() == {"s1", "s2", "r", "young"}
    assert ScheduledMessage.objects.count() == 1
    assert out.splitlines() == [
        "Would delete 3 finished task record(s):",
        "  SUCCESSFUL: 2",
        "  FAILED: 0",
        "  REVOKED: 1",
        "Would delete 1 scheduled message(s) of finished tasks.",
    ]
    real, _ = run("django_ray_prune")
    assert real.replace("Deleted", "Would delete") == out


def test_prune_deletes_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(operations, "BATCH_SIZE", 2)
    for n in range(5):
        record(f"s{n}", S, days=20)
    record("keep", S, days=1)

    with CaptureQueriesContext(connection) as queries:
        out, _ = run("django_ray_prune")

    sql = [q["sql"] for q in queries.captured_queries]
    deletes = [q for q in sql if q.startswith('DELETE FROM "django_ray_taskrecord"')]
    assert len(deletes) == 3  # 2 + 2 + 1 ids
    assert remaining() == {"keep"}
    assert "  SUCCESSFUL: 5" in out


def test_prune_deletes_parked_messages_of_finished_tasks_only() -> None:
    record("old", S, days=20)
    record("revoked-now", R, days=0)  # too young to delete, but its parked retry is dead
    record("retrying", TaskStatus.RETRYING)
    park("old")
    park("revoked-now")
    park("retrying")
    park("celery-client-task")  # no record yet: the worker creates it when it runs

    out, _ = run("django_ray_prune")

    assert remaining() == {"revoked-now", "retrying"}
    parked = set(ScheduledMessage.objects.values_list("task_id", flat=True))
    assert parked == {"retrying", "celery-client-task"}
    assert out.endswith("Deleted 2 scheduled message(s) of finished tasks.\n")


def test_prune_keeps_finished_parts_of_a_group_that_still_runs() -> None:
    record("chord-0", S, days=20, group_id="g1", group_index=0)
    record("chord-1", TaskStatus.RETRYING, group_id="g1", group_index=1)
    record("done-0", S, days=20, group_id="g2", group_index=0)
    record("done-1", F, days=20, group_id="g2", group_index=1)

    run("django_ray_prune")

    assert remaining() == {"chord-0", "chord-1"}


@pytest.mark.parametrize("args", [
    ["--min-age-days=-1"], ["--failed-min-age-days=-3"], ["--min-age-days=soon"],
    ["--queue="], ["--task= "],
])  # fmt: skip
def test_prune_rejects_bad_arguments(args: list[str]) -> None:
    record("s", S, days=100)
    with pytest.raises(CommandError, match="must"):
        run("django_ray_prune", *args)
    assert remaining() == {"s"}


def test_prune_rejects_a_negative_age_passed_as_a_keyword() -> None:
    with pytest.raises(ValueError, match="min_age must not be negative"):
        call_command("django_ray_prune", min_age_days=-1, stdout=io.StringIO())


def test_an_age_below_the_visibility_timeout_warns() -> None:
    record("s", S, days=0.001)
    out, err = run("django_ray_prune", "--min-age-days=0")
    from django_ray import conf

    assert f"VISIBILITY_TIMEOUT ({conf.get('VISIBILITY_TIMEOUT'):g} s)" in err
    assert "SUCCESSFUL: 1" in out
    assert remaining() == set()


# -- django_ray_status ------------------------------------------------------------


@pytest.fixture
def busy_queue(settings: Any) -> str:
    """A queue with records in every state, queue messages and parked messages."""
    settings.DJANGO_RAY = {**settings.DJANGO_RAY, "VISIBILITY_TIMEOUT": 60}
    q = "ops-busy"
    record("ready-old", TaskStatus.READY, queue=q, enqueued_at=ago(minutes=10))
    record("ready-new", TaskStatus.READY, queue=q, enqueued_at=ago(minutes=1))
    # Enqueued long ago but deferred to tomorrow: not waiting yet.
    record("ready-later", TaskStatus.READY, queue=q, enqueued_at=ago(days=3),
           run_after=ago(days=-1))  # fmt: skip
    record("fresh", TaskStatus.RUNNING, queue=q, worker_ids=["w0", "w1"],
           last_attempted_at=ago(seconds=10))  # fmt: skip
    record("stale", TaskStatus.RUNNING, queue=q, worker_ids=["w-dead"],
           last_attempted_at=ago(minutes=5))  # fmt: skip
    record("retrying", TaskStatus.RETRYING, queue=q)
    record("ok", S, queue=q, days=1)
    record("other", S, queue="ops-other", days=1)
    QueueMessage.objects.create(queue=q, payload="{}")
    QueueMessage.objects.create(queue=q, payload="{}", visible_at=ago(minutes=-30))
    QueueMessage.objects.create(queue=q, payload="{}", visible_at=ago(minutes=-30))
    park("retrying", queue=q, eta=ago(seconds=5))
    park("x", queue=q, eta=ago(days=-2))
    park("y", queue=q, eta=ago(days=-2))
    return q


def test_status_json_has_stable_keys_and_counts(busy_queue: str) -> None:
    out, _ = run("django_ray_status", "--json")
    report = json.loads(out)

    assert list(report) == [
        "generated_at", "visibility_timeout", "queues",
        "broker", "broker_kind", "broker_error", "heartbeat_interval", "workers",
    ]  # fmt: skip
    assert report["visibility_timeout"] == 60
    assert list(report["queues"]) == [busy_queue, "ops-other"]
    queue = report["queues"][busy_queue]
    assert list(queue) == [
        "tasks", "oldest_ready", "running", "stale", "messages", "scheduled",
        "waiting", "dead_letter",
    ]  # fmt: skip
    assert queue["tasks"] == {
        "READY": 3, "RUNNING": 2, "RETRYING": 1, "SUCCESSFUL": 1, "FAILED": 0, "REVOKED": 0,
    }  # fmt: skip
    assert queue["oldest_ready"]["id"] == "ready-old"
    assert 590 < queue["oldest_ready"]["age_seconds"] < 660
    assert [(t["id"], t["worker_id"], t["stale"]) for t in queue["running"]] == [
        ("stale", "w-dead", True),
        ("fresh", "w1", False),
    ]
    assert list(queue["running"][0]) == [
        "id", "task_name", "worker_id", "last_attempted_at", "stale", "progress",
    ]  # fmt: skip
    assert datetime.fromisoformat(queue["running"][0]["last_attempted_at"]) < ago(minutes=4)
    assert queue["stale"] == 1
    assert queue["messages"] == {"visible": 1, "hidden": 2}
    assert queue["scheduled"] == {"due": 1, "future": 2}

    other = report["queues"]["ops-other"]
    assert other["tasks"]["SUCCESSFUL"] == 1
    assert (other["oldest_ready"], other["running"], other["stale"]) == (None, [], 0)


def test_status_text_shows_each_queue_and_flags_stale_attempts(busy_queue: str) -> None:
    out, _ = run("django_ray_status")

    assert f"Queue {busy_queue!r}" in out
    assert "READY 3  RUNNING 2  RETRYING 1  SUCCESSFUL 1  FAILED 0  REVOKED 0" in out
    assert "oldest READY: ready-old, waiting 10m" in out
    assert "1 visible, 2 hidden (django://); scheduled: 1 due, 2 future" in out
    stale_line = next(line for line in out.splitlines() if "RUNNING stale" in line)
    assert "on w-dead" in stale_line and "(5m" in stale_line and stale_line.endswith("STALE")
    fresh_line = next(line for line in out.splitlines() if "RUNNING fresh" in line)
    assert "on w1" in fresh_line and not fresh_line.endswith("STALE")
    assert "1 stale RUNNING record(s)" in out
    assert "VISIBILITY_TIMEOUT (60 s)" in out


def test_status_of_chosen_queues_lists_them_even_when_empty(busy_queue: str) -> None:
    out, _ = run("django_ray_status", "--json", "--queue=ops-other", "--queue=ops-empty")
    queues = json.loads(out)["queues"]

    assert list(queues) == ["ops-empty", "ops-other"]
    assert queues["ops-empty"]["tasks"] == dict.fromkeys(TaskStatus.values, 0)
    assert queues["ops-empty"]["messages"] == {"visible": 0, "hidden": 0}
    assert queues["ops-other"]["tasks"]["SUCCESSFUL"] == 1


def test_a_running_record_without_attempt_time_is_stale() -> None:
    record("odd", TaskStatus.RUNNING, queue="ops-odd")
    queue = operations.status(queues=["ops-odd"]).queues[0]
    assert [(t.id, t.worker_id, t.last_attempted_at, t.stale) for t in queue.running] == [
        ("odd", None, None, True)
    ]
    out, _ = run("django_ray_status", "--queue=ops-odd")
    assert "RUNNING odd tests.tasks.add on ? since ?  STALE" in out


def test_status_of_an_empty_database() -> None:
    out, _ = run("django_ray_status")
    assert out == "No queue has task records or messages.\n"
    assert json.loads(run("django_ray_status", "--json")[0])["queues"] == {}


def test_status_rejects_an_empty_queue_name() -> None:
    with pytest.raises(CommandError, match="must not be empty"):
        run("django_ray_status", "--queue=")
