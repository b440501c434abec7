"""The admin in a real headless browser (Chromium driven by Playwright), with screenshots.

A user logs in, lists the tasks, filters the failed ones, opens the failed task's page (led
by its error), runs "Retry" from it and sees the task run again and succeed. The screenshots
go to docs/screenshots/ (docs/admin.md shows them).

Needs ``/usr/bin/chromium`` (Debian's ``chromium`` package) and the ``playwright`` Python
package; Playwright's own browser download is not used. Skips without them, except under
``CI=true``, where it fails.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from django_ray.models import TaskRecord, TaskStatus
from tests import admin_tasks

CHROMIUM = Path("/usr/bin/chromium")
# docs/screenshots/ is refreshed only on request (DJANGO_RAY_SCREENSHOTS=1), so a test run
# leaves the checkout as it was; otherwise the pictures go to a temporary directory.
DOCS_SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
SCREENSHOTS = (
    DOCS_SCREENSHOTS
    if os.environ.get("DJANGO_RAY_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "django-ray-screenshots"
)
PASSWORD = "browser-test-password"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def require_browser() -> Any:
    """Return Playwright's sync API, or skip (fail under CI) naming what is missing."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        from playwright import sync_api
    except ImportError:
        missing.append("the playwright package (pip install -e '.[test]')")
        sync_api = None
    if missing:
        reason = "The browser test needs " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must provide it.")
        pytest.skip(reason)
    return sync_api


@pytest.fixture
def page(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    sync_api = require_browser()
    # Playwright's sync API runs an event loop in this thread; the ORM calls made between
    # its steps are still plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 900})
            context.route("**/static/**", serve_admin_static)
            yield context.new_page()
        finally:
            browser.close()


def serve_admin_static(route: Any) -> None:
    """Serve the admin's CSS and JS from Django's package (the test project has no
    staticfiles app, so the live server does not), so the screenshots look as deployed."""
    import django.contrib.admin

    relative = route.request.url.split("/static/", 1)[1].split("?", 1)[0]
    root = Path(django.contrib.admin.__file__).resolve().parent / "static"
    path = (root / relative).resolve()
    if root in path.parents and path.is_file():
        route.fulfill(path=str(path))
    else:
        route.fulfill(status=404)


def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def run_worker(queue: str) -> None:
    call_command("django_ray_worker", f"--queue={queue}", "--sync", "--batch")


@pytest.mark.django_db(transaction=True)
def test_retry_a_failed_task_from_the_browser(
    page: Any, live_server: Any, broker_url: str, tmp_path: Path
) -> None:
    queue = f"adm-{uuid4().hex[:8]}"
    get_user_model().objects.create_superuser("operator", "op@example.com", PASSWORD)
    upstream = tmp_path / "invoices-2026-03.txt"
    failed = admin_tasks.import_invoices.using(queue_name=queue).enqueue(str(upstream))
    from demo import tasks as demo_tasks

    for text in ("to be or not to be", "a b a", "lorem ipsum dolor"):
        demo_tasks.word_count.using(queue_name=queue).enqueue(text)
    run_worker(queue)
    waiting = demo_tasks.word_count.using(queue_name=f"{queue}-later").enqueue("later")
    running = TaskRecord.objects.get(pk=waiting.id)
    running.mark_running("web-1-4242-demo")
    TaskRecord.report_progress(running.id, "PROGRESS", {"done": 40, "total": 100})
    assert TaskRecord.objects.get(pk=failed.id).status == TaskStatus.FAILED

    # Log in.
    page.goto(f"{live_server.url}/admin/login/?next=/admin/django_ray/taskrecord/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#result_list")
    page.click("#toggle-nav-sidebar")  # more room for the list (the admin remembers it)

    # The list: every task, with its status, error summary and progress.
    table = page.inner_text("#result_list")
    assert (
        failed.id[:8] in table and "NotReadyYet: invoices-2026-03.txt has not arrived yet" in table
    )
    assert "PROGRESS done=40 total=100" in table
    assert re.search(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", table)  # exact times
    shot(page, "admin-task-list")

    # Filter: the failed ones only.
    page.click("#changelist-filter a[href*='status__exact=FAILED']")
    page.wait_for_url(re.compile(r"status__exact=FAILED"))
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 1 and failed.id[:8] in rows.first.inner_text()
    shot(page, "admin-failed-filter")

    # The failed task's page leads with the error and its traceback.
    rows.first.locator("th a").click()
    page.wait_for_selector(".dr-error-headline")
    assert "has not arrived yet" in page.inner_text(".dr-error-headline")
    assert "Traceback (most recent call last)" in page.inner_text(".dr-traceback")
    shot(page, "admin-task-detail")

    # The upstream file arrives; retry from the task's page.
    upstream.write_text("INV-1 INV-2 INV-3")
    page.click("button[name=run-retry_tasks]")
    page.wait_for_selector(".messagelist")
    assert f"Retried 1 task(s): {failed.id}" in page.inner_text(".messagelist")
    assert TaskRecord.objects.get(pk=failed.id).status == TaskStatus.READY

    run_worker(queue)
    page.reload()
    page.wait_for_selector(".dr-status")
    assert "Successful" in page.inner_text(".dr-status")
    attempts = page.inner_text(".field-attempts_detail")
    assert "Attempt 2" in attempts and "Attempt 1" in attempts  # the first one's error kept
    assert "NotReadyYet" in attempts
    assert "&quot;invoices&quot;: 3" in page.content() or '"invoices": 3' in page.content()
    shot(page, "admin-task-retried")
    record = TaskRecord.objects.get(pk=failed.id)
    assert (record.status, record.return_value, len(record.worker_ids)) == (
        "SUCCESSFUL", {"invoices": 3}, 2,
    )  # fmt: skip

    # The django:// queue: the message of the task still waiting.
    page.goto(f"{live_server.url}/admin/django_ray/queuemessage/")
    page.wait_for_selector("#result_list")
    assert "demo.tasks.word_count" in page.inner_text("#result_list")
    shot(page, "admin-queue-messages")
