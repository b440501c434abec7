"""The admin as an operations console: task list and page, actions, queues (docs/admin.md)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from uuid import uuid4

import pytest
from demo import tasks as demo_tasks
from django.core.management import call_command
from django.db import connection
from django.tasks import TaskResult
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_ray.models import QueueMessage, ScheduledMessage, TaskRecord, TaskStatus
from tests import tasks

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:django_ray_taskrecord_changelist"
DEAD_LETTER = "django_ray.exceptions.DeliveryLimitExceeded"
EXACT_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")


@pytest.fixture
def queue(broker_url: str) -> str:
    """A queue of its own on django:// (the admin's queue views read django://)."""
    return f"adm-{uuid4().hex[:10]}"


def run_worker(queue: str) -> None:
    call_command("django_ray_worker", f"--queue={queue}", "--sync", "--batch")


@pytest.fixture
def outcomes(queue: str) -> Iterator[dict[str, TaskResult]]:
    """Real records: one successful, one failed (run by a worker), one still waiting."""
    done = {
        "ok": demo_tasks.word_count.using(queue_name=queue).enqueue("a b a"),
        "failed": tasks.fail.using(queue_name=queue).enqueue("admin-visible-error"),
    }
    run_worker(queue)
    done["waiting"] = tasks.add.using(queue_name=f"{queue}-later").enqueue(1, 2)
    yield done


def changelist(client: Client, url: str = CHANGELIST, **params: str) -> str:
    response = client.get(reverse(url), params)
    assert response.status_code == 200
    return response.content.decode()


def detail(client: Client, task_id: str) -> str:
    response = client.get(reverse("admin:django_ray_taskrecord_change", args=[task_id]))
    assert response.status_code == 200
    return response.content.decode()


def act(client: Client, action: str, *ids: str, url: str = CHANGELIST) -> str:
    """Run an admin action on ``ids`` as the changelist's form does; return the next page."""
    response = client.post(
        reverse(url), {"action": action, "_selected_action": list(ids), "index": 0}, follow=True
    )
    assert response.status_code == 200
    return response.content.decode()


def record(task_id: str) -> TaskRecord:
    return TaskRecord.objects.get(pk=task_id)


def queued(queue: str, task_id: str) -> int:
    return QueueMessage.objects.filter(queue=queue, payload__contains=f'"id": "{task_id}"').count()


# -- the list ---------------------------------------------------------------------------------


def test_the_list_answers_what_is_wrong(
    admin_client: Client, outcomes: dict[str, TaskResult], queue: str
) -> None:
    page = changelist(admin_client)
    for result in outcomes.values():
        assert result.id in page
    for column in ("Task name", "Status", "Queue", "Attempts", "Started at", "Duration",
                   "Error", "Progress"):  # fmt: skip
        assert f">{column}<" in page, column
    for text in ("demo.tasks.word_count", "tests.tasks.fail", "Successful", "Failed",
                 "Ready", queue):  # fmt: skip
        assert text in page, text
    assert "CustomError: admin-visible-error" in page  # the error summary, in the list
    started = record(outcomes["failed"].id).started_at
    assert timezone.localtime(started).strftime("%Y-%m-%d %H:%M:%S") in page  # to the second
    assert re.search(r"\d+\.\d{3}s", page)  # durations
    enqueued = record(outcomes["waiting"].id).enqueued_at
    assert f"queued {timezone.localtime(enqueued):%Y-%m-%d %H:%M:%S}" in re.sub("<[^>]+>", "", page)


def test_the_list_filters_by_status_queue_task_and_time(
    admin_client: Client, outcomes: dict[str, TaskResult], queue: str
) -> None:
    old = tasks.add.using(queue_name=queue).enqueue(5, 5)
    TaskRecord.objects.filter(pk=old.id).update(enqueued_at=timezone.now() - timedelta(days=10))

    failed = changelist(admin_client, status__exact="FAILED")
    assert outcomes["failed"].id in failed
    assert outcomes["ok"].id not in failed and outcomes["waiting"].id not in failed

    later = changelist(admin_client, queue__exact=f"{queue}-later")
    assert outcomes["waiting"].id in later and outcomes["ok"].id not in later

    by_task = changelist(admin_client, task_name__exact="tests.tasks.add")
    assert outcomes["waiting"].id in by_task and outcomes["failed"].id not in by_task

    recent = changelist(admin_client, within="15m")
    assert outcomes["ok"].id in recent and old.id not in recent
    older = changelist(admin_client, within="older")
    assert old.id in older and outcomes["ok"].id not in older
    since = (timezone.now() - timedelta(days=1)).strftime("%Y-%m-%d")
    ranged = changelist(admin_client, enqueued_at__gte=since)
    assert outcomes["ok"].id in ranged and old.id not in ranged

    trouble = changelist(admin_client, trouble="failed")
    assert outcomes["failed"].id in trouble and outcomes["ok"].id not in trouble


def test_search_by_id_and_name(admin_client: Client, outcomes: dict[str, TaskResult]) -> None:
    by_id = changelist(admin_client, q=outcomes["ok"].id)
    assert outcomes["ok"].id in by_id and outcomes["failed"].id not in by_id
    by_name = changelist(admin_client, q="tests.tasks.fail")
    assert outcomes["failed"].id in by_name and outcomes["ok"].id not in by_name


def test_progress_shows_in_the_list_and_the_page(admin_client: Client, queue: str) -> None:
    running = TaskRecord.objects.create(
        id=f"adm-{uuid4().hex}", task_name="tests.tasks.add", queue=queue,
        status=TaskStatus.RUNNING, worker_ids=["w1"], started_at=timezone.now(),
        last_attempted_at=timezone.now(),
    )  # fmt: skip
    assert TaskRecord.report_progress(running.id, "RESIZING", {"done": 3, "total": 10})
    page = changelist(admin_client, trouble="progress")
    assert "RESIZING" in page and "done=3 total=10" in page and "(running)" in page
    assert "RESIZING" in detail(admin_client, running.id)


def test_a_stored_value_python_cannot_read_does_not_break_the_pages(
    admin_client: Client, outcomes: dict[str, TaskResult]
) -> None:
    if connection.vendor != "sqlite":
        pytest.skip("only SQLite stores a malformed datetime")
    task_id = outcomes["failed"].id
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE django_ray_taskrecord SET started_at = %s, errors = %s WHERE id = %s",
            ["2024-02-30 10:00:00", '{"not": "a list"}', task_id],
        )
    with pytest.raises(ValueError):  # what the admin used to meet when loading the row
        list(TaskRecord.objects.filter(pk=task_id))
    page = changelist(admin_client)
    assert "2024-02-30 10:00:00 (unreadable)" in page
    assert "2024-02-30 10:00:00 (unreadable)" in detail(admin_client, task_id)


# -- the task's page ----------------------------------------------------------------------------


def test_the_page_leads_with_the_error_and_each_attempt(
    admin_client: Client, outcomes: dict[str, TaskResult]
) -> None:
    task_id = outcomes["failed"].id
    page = detail(admin_client, task_id)
    error = page.index("CustomError: admin-visible-error")
    assert error < page.index("Traceback (most recent call last)") < page.index("Args")
    assert "tests.tasks.CustomError" in page
    assert record(task_id).worker_ids[0] in page
    assert 'name="run-retry_tasks"' in page  # the action that fits a failed task


def test_every_attempt_shows_its_own_traceback(admin_client: Client, queue: str) -> None:
    errors = [
        {"exception_class_path": f"builtins.{name}", "traceback": f"Traceback {name} here",
         "exc_message": [f"attempt {n}"]}
        for n, name in ((1, "KeyError"), (2, "OSError"))
    ]  # fmt: skip
    row = TaskRecord.objects.create(
        id=f"adm-{uuid4().hex}", task_name="tests.tasks.add", queue=queue,
        status=TaskStatus.FAILED, worker_ids=["w-first", "w-second"], errors=errors,
        started_at=timezone.now(), finished_at=timezone.now(),
    )  # fmt: skip
    page = detail(admin_client, row.id)
    # Newest first: the second attempt's error leads.
    assert page.index("OSError: attempt 2") < page.index("KeyError: attempt 1")
    assert "Traceback OSError here" in page and "Traceback KeyError here" in page
    assert "w-first" in page and "w-second" in page


def test_the_page_shows_the_return_value(
    admin_client: Client, outcomes: dict[str, TaskResult]
) -> None:
    page = detail(admin_client, outcomes["ok"].id)
    assert "&quot;a&quot;: 2" in page and "&quot;b&quot;: 1" in page


def test_a_ray_job_attempt_links_to_its_job(
    admin_client: Client, queue: str, settings: Any
) -> None:
    settings.DJANGO_RAY = {**settings.DJANGO_RAY, "RAY_ADDRESS": "http://ray-head:8265"}
    row = TaskRecord.objects.create(
        id=f"adm-{uuid4().hex}", task_name="tests.tasks.add", queue=queue, retries=1,
        status=TaskStatus.SUCCESSFUL, worker_ids=["host-1-ab/job"], return_value=3,
    )  # fmt: skip
    page = detail(admin_client, row.id)
    assert f'href="http://ray-head:8265/#/jobs/django-ray-{row.id}-1"' in page


def test_records_cannot_be_added_or_edited(
    admin_client: Client, outcomes: dict[str, TaskResult]
) -> None:
    assert admin_client.get(reverse("admin:django_ray_taskrecord_add")).status_code == 403
    url = reverse("admin:django_ray_taskrecord_change", args=[outcomes["ok"].id])
    assert admin_client.post(url, {"status": "FAILED"}).status_code == 403


def test_anonymous_users_are_sent_to_login(client: Client) -> None:
    response = client.get(reverse(CHANGELIST))
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_staff_without_the_change_permission_cannot_act(
    client: Client, outcomes: dict[str, TaskResult]
) -> None:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user("viewer", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_taskrecord"))
    client.force_login(user)
    page = changelist(client)
    assert "retry_tasks" not in page
    act(client, "retry_tasks", outcomes["failed"].id)
    assert record(outcomes["failed"].id).status == TaskStatus.FAILED


# -- actions ------------------------------------------------------------------------------------


def test_retry_runs_a_failed_task_again_keeping_its_history(
    admin_client: Client, outcomes: dict[str, TaskResult], queue: str
) -> None:
    task_id = outcomes["failed"].id
    first = record(task_id)
    page = act(admin_client, "retry_tasks", task_id, outcomes["ok"].id)
    assert f"Retried 1 task(s): {task_id}" in page
    assert f"Not retried {outcomes['ok'].id}: SUCCESSFUL" in page
    assert record(task_id).status == TaskStatus.READY and queued(queue, task_id) == 1

    run_worker(queue)
    again = record(task_id)
    assert again.status == TaskStatus.FAILED  # it fails again, as a second attempt
    assert len(again.worker_ids) == 2 and again.worker_ids[0] == first.worker_ids[0]
    assert len(again.errors) == 2 and again.errors[0] == first.errors[0]
    assert record(outcomes["ok"].id).worker_ids == [first.worker_ids[0]]  # not run again


def test_retry_brings_a_dead_letter_back(admin_client: Client, queue: str) -> None:
    result = tasks.add.using(queue_name=queue).enqueue(20, 22)
    QueueMessage.objects.filter(queue=queue).update(queue=f"{queue}.dead-letter")
    TaskRecord.objects.filter(pk=result.id).update(
        status=TaskStatus.FAILED, worker_ids=["w"] * 5, finished_at=timezone.now(),
        errors=[{"exception_class_path": DEAD_LETTER, "traceback": "",
                 "exc_message": ["delivered 5 times"]}],
    )  # fmt: skip
    dead = changelist(admin_client, url="admin:django_ray_deadletter_changelist")
    assert result.id in dead and f"in {queue}.dead-letter" in dead
    assert "dead-lettered" in changelist(admin_client, trouble="dead")

    act(admin_client, "retry_tasks", result.id, url="admin:django_ray_deadletter_changelist")
    assert queued(f"{queue}.dead-letter", result.id) == 0  # its parked copy is dropped
    assert queued(queue, result.id) == 1
    run_worker(queue)
    done = record(result.id)
    assert (done.status, done.return_value, len(done.worker_ids)) == ("SUCCESSFUL", 42, 6)
    assert done.errors[0]["exception_class_path"] == DEAD_LETTER  # history kept
    assert result.id not in changelist(admin_client, url="admin:django_ray_deadletter_changelist")


def test_requeue_publishes_a_lost_or_stuck_task_and_nothing_else(
    admin_client: Client, queue: str
) -> None:
    lost = tasks.add.using(queue_name=queue).enqueue(1, 1)
    present = tasks.add.using(queue_name=queue).enqueue(2, 2)
    QueueMessage.objects.filter(payload__contains=lost.id).delete()  # a purged message
    now = timezone.now()
    stuck = TaskRecord.objects.create(
        id=f"adm-{uuid4().hex}", task_name="tests.tasks.add", args=[3, 3], queue=queue,
        status=TaskStatus.RUNNING, worker_ids=["dead-worker"],
        last_attempted_at=now - timedelta(hours=1), started_at=now - timedelta(hours=1),
    )  # fmt: skip
    busy = TaskRecord.objects.create(
        id=f"adm-{uuid4().hex}", task_name="tests.tasks.add", args=[4, 4], queue=queue,
        status=TaskStatus.RUNNING, worker_ids=["live-worker"], last_attempted_at=now,
        started_at=now,
    )  # fmt: skip
    page = act(admin_client, "requeue_tasks", lost.id, present.id, stuck.id, busy.id)
    assert "Requeued 2 task(s)" in page
    assert f"Not requeued {present.id}: its message is still in queue" in page
    assert f"Not requeued {busy.id}: RUNNING since" in page
    assert queued(queue, lost.id) == queued(queue, present.id) == queued(queue, stuck.id) == 1
    assert queued(queue, busy.id) == 0
    assert record(stuck.id).status == TaskStatus.READY

    TaskRecord.objects.filter(pk=busy.id).delete()
    run_worker(queue)
    for task_id, value in ((lost.id, 2), (present.id, 4), (stuck.id, 6)):
        done = record(task_id)
        assert (done.status, done.return_value) == ("SUCCESSFUL", value)
    assert len(record(present.id).worker_ids) == 1  # once: no copy was added


def test_cancel_revokes_waiting_tasks_and_says_why_a_running_one_goes_on(
    admin_client: Client, queue: str
) -> None:
    waiting = tasks.add.using(queue_name=queue).enqueue(1, 2)
    running = TaskRecord.objects.create(
        id=f"adm-{uuid4().hex}", task_name="tests.tasks.add", queue=queue,
        status=TaskStatus.RUNNING, worker_ids=["w"], last_attempted_at=timezone.now(),
    )  # fmt: skip
    page = act(admin_client, "cancel_tasks", waiting.id, running.id)
    assert f"Cancelled 1 task(s): {waiting.id}" in page
    assert f"Not cancelled {running.id}: RUNNING; not stopped" in page  # django:// has no pidbox
    assert record(waiting.id).status == TaskStatus.REVOKED
    assert record(running.id).status == TaskStatus.RUNNING
    TaskRecord.objects.filter(pk=running.id).delete()
    run_worker(queue)
    assert record(waiting.id).status == TaskStatus.REVOKED and record(waiting.id).worker_ids == []


def test_an_unfinished_task_is_never_deleted_so_it_never_runs_twice(
    admin_client: Client, outcomes: dict[str, TaskResult], queue: str
) -> None:
    waiting = tasks.add.using(queue_name=queue).enqueue(2, 3)
    page = act(admin_client, "delete_finished", waiting.id, outcomes["ok"].id)
    assert f"Deleted 1 task(s): {outcomes['ok'].id}" in page
    assert f"Not deleted {waiting.id}: READY: not finished (cancel it first)" in page
    assert not TaskRecord.objects.filter(pk=outcomes["ok"].id).exists()
    # The page offers no delete, and the delete view refuses it.
    url = reverse("admin:django_ray_taskrecord_delete", args=[waiting.id])
    assert admin_client.post(url, {"post": "yes"}).status_code == 403
    assert "delete_selected" not in changelist(admin_client)
    run_worker(queue)
    done = record(waiting.id)
    assert (done.status, done.return_value, len(done.worker_ids)) == ("SUCCESSFUL", 5, 1)
    # Finished now: its own page may delete it.
    url = reverse("admin:django_ray_taskrecord_delete", args=[waiting.id])
    assert admin_client.post(url, {"post": "yes"}, follow=True).status_code == 200
    assert not TaskRecord.objects.filter(pk=waiting.id).exists()


def test_an_action_from_the_task_page_comes_back_to_it(
    admin_client: Client, outcomes: dict[str, TaskResult]
) -> None:
    task_id = outcomes["failed"].id
    url = reverse("admin:django_ray_taskrecord_change", args=[task_id])
    response = admin_client.post(
        reverse(CHANGELIST),
        {"action": "retry_tasks", "_selected_action": [task_id], "index": 0, "_next": url},
    )
    assert response.status_code == 302 and response["Location"] == url
    assert record(task_id).status == TaskStatus.READY


# -- the queue, the schedule --------------------------------------------------------------------


def test_queue_messages_show_visibility_priority_and_deliveries(
    admin_client: Client, queue: str
) -> None:
    now_task = tasks.add.using(queue_name=queue, priority=7).enqueue(1, 1)
    later = tasks.add.using(queue_name=queue, run_after=timezone.now() + timedelta(hours=1))
    later = later.enqueue(2, 2)
    leased = tasks.add.using(queue_name=queue).enqueue(3, 3)
    QueueMessage.objects.filter(payload__contains=leased.id).update(
        visible_at=timezone.now() + timedelta(seconds=30), delivered_count=2
    )
    page = changelist(admin_client, url="admin:django_ray_queuemessage_changelist", queue=queue)
    assert now_task.id in page and later.id in page and leased.id in page
    assert ">waiting<" in page and "not yet visible (ETA)" in page
    assert "leased to a worker" in page and '<td class="field-delivered_count">2</td>' in page
    assert '<td class="field-priority">7</td>' in page
    assert EXACT_TIME.search(page)
    message = QueueMessage.objects.get(payload__contains=later.id)
    page = admin_client.get(reverse("admin:django_ray_queuemessage_change", args=[message.pk]))
    assert page.status_code == 200 and "tests.tasks.add" in page.content.decode()
    delete = reverse("admin:django_ray_queuemessage_delete", args=[message.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403  # cancel instead

    act(admin_client, "cancel_tasks", str(message.pk),
        url="admin:django_ray_queuemessage_changelist")  # fmt: skip
    assert record(later.id).status == TaskStatus.REVOKED
    assert record(now_task.id).status == TaskStatus.READY


def test_the_eta_schedule_shows_parked_messages_and_runs_them_now(
    admin_client: Client, queue: str
) -> None:
    task_id = f"adm-{uuid4().hex}"
    parked = ScheduledMessage.objects.create(
        task_id=task_id, queue=queue, eta=timezone.now() + timedelta(days=1), retries=1,
        payload={"headers": {"id": task_id, "task": "tests.tasks.add"}, "body": "", "priority": 0},
    )  # fmt: skip
    page = changelist(admin_client, url="admin:django_ray_scheduledmessage_changelist")
    assert task_id in page and "tests.tasks.add" in page
    assert timezone.localtime(parked.eta).strftime("%Y-%m-%d %H:%M:%S") in page

    act(admin_client, "run_now", str(parked.pk),
        url="admin:django_ray_scheduledmessage_changelist")  # fmt: skip
    assert ScheduledMessage.objects.get(pk=parked.pk).eta <= timezone.now()
