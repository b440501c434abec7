"""Metrics and health: the worker's /metrics, /healthz and /readyz, the Django view, the probe."""

from __future__ import annotations

import io
import re
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from uuid import uuid4

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from django_ray import metrics
from django_ray.message import TaskMessage
from django_ray.models import QueueMessage, TaskRecord, TaskStatus
from django_ray.runners.sync import SyncRunner
from django_ray.runtime.settle import Outcome
from django_ray.transport import Broker
from django_ray.worker import Worker
from tests import tasks
from tests.conftest import worker_command, worker_env
from tests.processes import Process

pytestmark = [pytest.mark.timeout(90)]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def samples(text: str, name: str, **labels: str) -> float:
    """Return the sum of the samples ``name`` whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def health(url: str, *args: str) -> int:
    """Run ``django_ray_health`` and return its exit code."""
    try:
        call_command("django_ray_health", "--url", url, *args, stdout=io.StringIO())
    except SystemExit as e:
        return int(e.code or 0)
    return 0


class WorkerProcess(Process):
    """``django_ray_worker`` in a subprocess, its log collected on a thread."""

    def __init__(self, *args: str) -> None:
        super().__init__(worker_command(*args), worker_env())


@pytest.fixture
def queue() -> str:
    return f"metrics-{uuid4().hex[:10]}"


@pytest.fixture
def spawn() -> Iterator[type[WorkerProcess]]:
    started: list[WorkerProcess] = []

    class Tracked(WorkerProcess):
        def __init__(self, *args: str) -> None:
            super().__init__(*args)
            started.append(self)

    yield Tracked
    for process in started:
        process.kill()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_worker_serves_metrics_and_probes(queue: str, spawn: type[WorkerProcess]) -> None:
    ok = tasks.add.using(queue_name=queue).enqueue(1, 2)
    bad = tasks.fail.using(queue_name=queue).enqueue("boom")
    flaky = tasks.flaky.using(queue_name=queue).enqueue(2)  # one retry, then success

    worker = spawn(f"--queue={queue}", "--sync", "--metrics-port=0", "--worker-id=metrics-w")

    def served() -> str | None:
        found = re.search(r"health probes on (http://127\.0\.0\.1:\d+)", worker.log)
        return found.group(1) if found else None

    url = str(worker.wait_for(served, "the metrics server to start"))

    def finished() -> bool:
        for result in (ok, bad, flaky):
            result.refresh()
        return all(r.is_finished for r in (ok, bad, flaky))

    worker.wait_for(finished, "the three tasks to finish")

    def scraped() -> str | None:
        # The outcome is counted just after the record is written: wait for the last one.
        code, text = get(url + "/metrics")
        assert code == 200
        done = samples(text, "django_ray_tasks_finished_total", queue=queue)
        return text if done >= 4 else None  # add, fail, flaky's retry and its success

    text = str(worker.wait_for(scraped, "the outcomes to be counted"))
    finished_total = "django_ray_tasks_finished_total"
    assert samples(text, "django_ray_tasks_started_total", queue=queue) == 4
    assert samples(text, finished_total, queue=queue, task="tests.tasks.add",
                   status="SUCCESSFUL") == 1  # fmt: skip
    assert samples(text, finished_total, queue=queue, task="tests.tasks.fail",
                   status="FAILED") == 1  # fmt: skip
    assert samples(text, finished_total, queue=queue, task="tests.tasks.flaky",
                   status="RETRYING") == 1  # fmt: skip
    assert samples(text, "django_ray_task_retries_total", queue=queue,
                   task="tests.tasks.flaky") == 1  # fmt: skip
    assert samples(text, "django_ray_task_duration_seconds_count", queue=queue) == 4
    assert samples(text, "django_ray_tasks_in_flight") == 0
    assert samples(text, "django_ray_queue_depth", queue=queue) == 0
    assert "django_ray_worker_heartbeat_age_seconds" in text
    assert samples(text, "django_ray_worker_info", worker_id="metrics-w", mode="sync",
                   broker="django") == 1  # fmt: skip

    assert get(url + "/healthz")[0] == 200
    code, body = get(url + "/readyz")
    assert code == 200, body
    assert "database: ok" in body and "broker: ok" in body and "ray: not used" in body
    assert get(url + "/nothing")[0] == 404
    assert health(url) == 0
    assert health(url, "--check", "ready") == 0

    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(30) == 0, worker.log
    assert health(url) == 1  # nothing answers any more
    assert health(url, "--check", "live") == 1


@pytest.mark.django_db(transaction=True)
def test_probes_fail_when_the_broker_is_unreachable_or_the_loop_stalls() -> None:
    # A closed port: nothing listens on 1, so the connection is refused at once.
    broker = Broker("redis://127.0.0.1:1/0")
    worker = Worker(
        queues=["metrics-unreachable"], runner=SyncRunner(worker_id="metrics-probe"),
        broker=broker, install_signals=False,
    )  # fmt: skip
    server = metrics.serve(worker, "127.0.0.1", 0)
    try:
        code, body = get(server.url + "/readyz")
        assert code == 503, body
        assert "database: ok" in body
        assert re.search(r"^broker: .*(refused|111|connect)", body, re.M | re.I), body
        assert health(server.url, "--check", "ready") == 1

        # The loop never ran: alive within 60 s of the start, not with a zero allowance.
        assert get(server.url + "/healthz")[0] == 200
        code, body = get(server.url + "/healthz?max_age=0")
        assert code == 503 and "last ticked" in body
        assert get(server.url + "/healthz?max_age=soon")[0] == 400
        assert health(server.url, "--check", "live") == 0
        assert health(server.url, "--check", "live", "--max-age", "0") == 1
        # The scrape still answers though the queue depth cannot be read.
        code, text = get(server.url + "/metrics")
        assert code == 200 and "django_ray_worker_heartbeat_age_seconds" in text
    finally:
        server.stop()
        broker.close()


@pytest.mark.django_db(transaction=True)
def test_readiness_needs_ray_connected_in_ray_modes() -> None:
    class Disconnected(SyncRunner):
        mode = "local"  # a Ray mode whose connection dropped (LocalRunner._connected)
        _connected = False

    worker = Worker(
        queues=["metrics-ray"], runner=Disconnected(worker_id="metrics-ray"),
        broker=Broker("django://"), install_signals=False,
    )  # fmt: skip
    ready, lines = metrics.readiness(worker)
    assert not ready
    assert "ray: not connected to Ray" in lines
    Disconnected._connected = True
    assert metrics.readiness(worker) == (True, ["database: ok", "broker: ok", "ray: ok"])


def test_the_observer_counts_dead_letters_and_returned_deliveries() -> None:
    worker = Worker(
        queues=["metrics-dl"], runner=SyncRunner(worker_id="metrics-dl"),
        broker=Broker("django://"), install_signals=False,
    )  # fmt: skip
    observed = metrics.WorkerMetrics(worker)
    message = TaskMessage(id="m-1", task="tests.tasks.crash_always", queue="metrics-dl")
    parked = message.replace(queue="metrics-dl.dead-letter")
    observed.on_task("started", message, None)
    observed.on_task("finished", message, None)  # no outcome: given back to the broker
    observed.on_task("started", message, None)
    dead = Outcome(task_id="m-1", status=TaskStatus.FAILED, publish=(parked,), error="dl")
    observed.on_task("finished", message, dead)
    labels = {"task": "tests.tasks.crash_always", "queue": "metrics-dl"}
    value = observed.registry.get_sample_value
    assert value("django_ray_dead_letters_total", labels) == 1
    assert value("django_ray_tasks_started_total", labels) == 2
    assert value("django_ray_tasks_finished_total", {**labels, "status": "RETURNED"}) == 1
    assert value("django_ray_tasks_finished_total", {**labels, "status": "FAILED"}) == 1
    # Each worker has a registry of its own: nothing leaks into another one.
    other = metrics.WorkerMetrics(worker)
    assert other.registry.get_sample_value("django_ray_dead_letters_total", labels) is None


@pytest.mark.django_db
def test_metrics_view_serves_database_metrics_to_staff_or_a_token(
    queue: str, settings: pytest.FixtureRequest
) -> None:
    tasks.add.using(queue_name=queue).enqueue(1, 1)
    tasks.add.using(queue_name=queue).enqueue(2, 2)
    TaskRecord.objects.create(
        id=f"dead-{queue}", task_name="tests.tasks.crash_always", queue=queue,
        status=TaskStatus.FAILED,
        errors=[{"exception_class_path": "django_ray.exceptions.DeliveryLimitExceeded",
                 "traceback": "", "exc_message": ["delivered 5 times"]}],
    )  # fmt: skip
    QueueMessage.objects.create(queue=f"{queue}.dead-letter", payload="{}")
    client = Client()

    assert client.get("/django-ray/metrics").status_code == 403  # anonymous, no token set

    staff = get_user_model().objects.create_user("metrics-staff", password="x", is_staff=True)
    client.force_login(staff)
    response = client.get("/django-ray/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert samples(text, "django_ray_task_records", queue=queue, status="READY",
                   task="tests.tasks.add") == 2  # fmt: skip
    assert samples(text, "django_ray_task_records", queue=queue, status="FAILED") == 1
    assert samples(text, "django_ray_queue_depth", queue=queue) == 2
    assert samples(text, "django_ray_queue_messages", queue=queue) == 2
    assert samples(text, "django_ray_dead_letters", queue=queue,
                   task="tests.tasks.crash_always") == 1  # fmt: skip
    assert samples(text, "django_ray_dead_letter_messages", queue=queue) == 1
    assert client.post("/django-ray/metrics").status_code == 405

    not_staff = get_user_model().objects.create_user("metrics-user", password="x")
    client.force_login(not_staff)
    assert client.get("/django-ray/metrics").status_code == 403

    settings.DJANGO_RAY = {**settings.DJANGO_RAY, "METRICS_TOKEN": "s3cret"}  # type: ignore[attr-defined]
    scraper = Client()
    missing = scraper.get("/django-ray/metrics")
    assert missing.status_code == 401 and missing["WWW-Authenticate"].startswith("Bearer")
    wrong = scraper.get("/django-ray/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    right = scraper.get("/django-ray/metrics", headers={"Authorization": "Bearer s3cret"})
    assert right.status_code == 200
    assert samples(right.content.decode(), "django_ray_queue_depth", queue=queue) == 2


def test_a_busy_port_stops_the_worker_at_start() -> None:
    import socket

    from django_ray.exceptions import ImproperlyConfiguredRay

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = Worker(
            queues=["metrics-busy"], runner=SyncRunner(worker_id="metrics-busy"),
            broker=Broker("django://"), install_signals=False, metrics_port=port,
        )  # fmt: skip
        with pytest.raises(ImproperlyConfiguredRay, match=f"Cannot serve metrics on .*:{port}"):
            worker.run()
