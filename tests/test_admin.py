"""The admin for TaskRecord: list, filters, search, and the detail page."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from demo import tasks as demo_tasks
from django.core.management import call_command
from django.tasks import TaskResult
from django.test import Client
from django.urls import reverse

from tests import tasks

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:django_ray_taskrecord_changelist"


@pytest.fixture
def outcomes(broker_url: str, queue: str) -> Iterator[dict[str, TaskResult]]:
    """Real records: one successful, one failed (run by a worker), one still waiting."""
    done = {
        "ok": demo_tasks.word_count.using(queue_name=queue).enqueue("a b a"),
        "failed": tasks.fail.using(queue_name=queue).enqueue("admin-visible-error"),
    }
    call_command("django_ray_worker", f"--queue={queue}", "--sync", "--batch")
    done["waiting"] = tasks.add.using(queue_name=f"{queue}-later").enqueue(1, 2)
    yield done


def changelist(client: Client, **params: str) -> str:
    response = client.get(reverse(CHANGELIST), params)
    assert response.status_code == 200
    return response.content.decode()


def test_changelist_shows_status_name_queue_attempts_and_timings(
    admin_client: Client, outcomes: dict[str, TaskResult], queue: str
) -> None:
    page = changelist(admin_client)
    for result in outcomes.values():
        assert result.id in page
    for column in ("Task name", "Status", "Queue", "Attempts", "Enqueued at", "Started at",
                   "Finished at", "Duration"):  # fmt: skip
        assert column in page, column
    for text in ("demo.tasks.word_count", "tests.tasks.fail", "Successful", "Failed",
                 "Ready", queue):  # fmt: skip
        assert text in page, text


def test_changelist_filters(
    admin_client: Client, outcomes: dict[str, TaskResult], queue: str
) -> None:
    failed = changelist(admin_client, status__exact="FAILED")
    assert outcomes["failed"].id in failed
    assert outcomes["ok"].id not in failed
    assert outcomes["waiting"].id not in failed

    later = changelist(admin_client, queue__exact=f"{queue}-later")
    assert outcomes["waiting"].id in later
    assert outcomes["ok"].id not in later


def test_changelist_search_by_id_and_name(
    admin_client: Client, outcomes: dict[str, TaskResult]
) -> None:
    by_id = changelist(admin_client, q=outcomes["ok"].id)
    assert outcomes["ok"].id in by_id
    assert outcomes["failed"].id not in by_id

    by_name = changelist(admin_client, q="tests.tasks.fail")
    assert outcomes["failed"].id in by_name
    assert outcomes["ok"].id not in by_name


def test_detail_page_shows_the_error(admin_client: Client, outcomes: dict[str, TaskResult]) -> None:
    url = reverse("admin:django_ray_taskrecord_change", args=[outcomes["failed"].id])
    page = admin_client.get(url).content.decode()
    assert "tests.tasks.CustomError" in page
    assert "admin-visible-error" in page
    assert "Traceback (most recent call last)" in page


def test_detail_page_shows_the_return_value(
    admin_client: Client, outcomes: dict[str, TaskResult]
) -> None:
    url = reverse("admin:django_ray_taskrecord_change", args=[outcomes["ok"].id])
    response = admin_client.get(url)
    assert response.status_code == 200
    page = response.content.decode()
    assert "&quot;a&quot;: 2" in page
    assert "&quot;b&quot;: 1" in page
    assert outcomes["ok"].id in page


def test_records_are_read_only(admin_client: Client, outcomes: dict[str, TaskResult]) -> None:
    assert admin_client.get(reverse("admin:django_ray_taskrecord_add")).status_code == 403
    url = reverse("admin:django_ray_taskrecord_change", args=[outcomes["ok"].id])
    assert admin_client.post(url, {"status": "FAILED"}).status_code == 403


def test_anonymous_users_are_sent_to_login(client: Client) -> None:
    response = client.get(reverse(CHANGELIST))
    assert response.status_code == 302
    assert "/login/" in response["Location"]
