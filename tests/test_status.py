"""django_ray_status: the broker's backlog per queue, dead letters and live workers."""

from __future__ import annotations

import contextlib
import io
import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from django.core.management import call_command
from django.utils import timezone

from django_ray import operations
from django_ray.cli import CHECK_STALE_WORKER, main
from django_ray.models import QueueMessage, TaskRecord, TaskStatus, WorkerHeartbeat
from django_ray.runtime.settle import DEAD_LETTER_SUFFIX
from django_ray.transport import Broker
from tests.services import require_rabbitmq, require_redis

pytestmark = pytest.mark.django_db

DEAD = "django_ray.exceptions.DeliveryLimitExceeded"


def redis_url() -> str:
    return require_redis().rsplit("/", 1)[0] + "/14"


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("django_ray_status", *args, stdout=out)
    return out.getvalue()


def message(queue: str, priority: int = 0) -> Any:
    from django_ray.message import TaskMessage

    return TaskMessage(id=uuid.uuid4().hex, task="tests.tasks.add", queue=queue, priority=priority)


@pytest.fixture
def on_broker(settings: Any) -> Any:
    """Point the settings at a broker URL; purge and close what the test published."""
    brokers: list[tuple[Broker, list[str]]] = []

    def use(url: str, *queues: str) -> Broker:
        settings.DJANGO_RAY = {**settings.DJANGO_RAY, "BROKER_URL": url}
        broker = Broker(url)
        brokers.append((broker, list(queues)))
        return broker

    yield use
    for broker, queues in brokers:
        for name in queues:
            with contextlib.suppress(Exception):
                broker.queue(name)(broker.connection.default_channel).delete()
        broker.close()


def test_a_redis_queue_counts_every_priority_list_and_names_the_broker(on_broker: Any) -> None:
    q = f"status-redis-{uuid.uuid4().hex[:6]}"
    broker = on_broker(redis_url(), q, q + DEAD_LETTER_SUFFIX)
    # Three priorities land on three of kombu's lists (<q>, <q>\x06\x163, ...).
    for priority in (100, 0, -100):
        broker.publish(message(q, priority))
    broker.publish(message(q + DEAD_LETTER_SUFFIX))
    assert broker.queue_size(q) == 3

    report = operations.status(queues=[q])
    assert report.broker == redis_url() and report.broker_kind == "redis"
    (queue,) = report.queues
    assert (queue.name, queue.waiting, queue.dead_letter_waiting) == (q, 3, 1)

    out = run(f"--queue={q}")
    assert "3 waiting (redis://" in out and "django://" not in out
    data = json.loads(run(f"--queue={q}", "--json"))
    assert data["broker"] == redis_url()
    assert data["queues"][q]["waiting"] == 3
    assert data["queues"][q]["dead_letter"] == {"failed": 0, "waiting": 1}


def test_an_amqp_queue_reports_its_message_count(on_broker: Any) -> None:
    url = require_rabbitmq()
    q = f"status-amqp-{uuid.uuid4().hex[:6]}"
    broker = on_broker(url, q)
    broker.publish(message(q))
    broker.publish(message(q))

    report = operations.status(queues=[q, "status-amqp-missing"])
    assert report.broker_kind == "amqp" and "guest:guest" not in report.broker
    waiting = {queue.name: queue.waiting for queue in report.queues}
    assert waiting == {q: 2, "status-amqp-missing": 0}


def test_django_broker_counts_visible_messages_and_folds_dead_letters() -> None:
    q = "status-db"
    QueueMessage.objects.create(queue=q, payload="{}")
    QueueMessage.objects.create(queue=q + DEAD_LETTER_SUFFIX, payload="{}")
    TaskRecord.objects.create(
        id="dead", task_name="tests.tasks.add", queue=q, status=TaskStatus.FAILED,
        errors=[{"exception_class_path": DEAD, "traceback": "", "exc_message": []}],
    )  # fmt: skip
    TaskRecord.objects.create(
        id="plain", task_name="tests.tasks.add", queue=q, status=TaskStatus.FAILED,
        errors=[{"exception_class_path": "builtins.ValueError", "traceback": ""}],
    )  # fmt: skip

    report = operations.status()
    assert [queue.name for queue in report.queues] == [q]
    (queue,) = report.queues
    assert (queue.waiting, queue.dead_lettered, queue.dead_letter_waiting) == (1, 1, 1)
    assert "dead-lettered: 1 FAILED, 1 waiting" in run()


def beat(worker_id: str, seconds_ago: float, **fields: Any) -> None:
    now = timezone.now()
    WorkerHeartbeat.objects.create(
        worker_id=worker_id, hostname="h", pid=1, mode=fields.get("mode", "sync"),
        queues=fields.get("queues", ["status-w"]), in_flight=fields.get("in_flight", 0),
        started_at=now - timedelta(hours=1), last_seen=now - timedelta(seconds=seconds_ago),
    )  # fmt: skip


def test_live_and_stale_workers_in_text_json_and_check(settings: Any) -> None:
    settings.DJANGO_RAY = {**settings.DJANGO_RAY, "HEARTBEAT_INTERVAL": 5}
    beat("w-live", 2, mode="local", in_flight=3)
    beat("w-gone", 60)

    report = operations.status()
    workers = {w.worker_id: w for w in report.workers}
    assert not workers["w-live"].stale and workers["w-gone"].stale
    # A queue a live worker consumes is listed even without records or messages.
    assert [q.name for q in report.queues] == ["status-w"]

    out = run()
    line = next(x for x in out.splitlines() if "w-live" in x)
    assert "mode local" in line and "queues status-w" in line and "3 in flight" in line
    assert next(x for x in out.splitlines() if "w-gone" in x).endswith("STALE")
    data = json.loads(run("--json"))
    assert [w["worker_id"] for w in data["workers"]] == ["w-live", "w-gone"]
    assert data["workers"][0]["in_flight"] == 3 and data["workers"][1]["stale"] is True

    done = CliRunner().invoke(main, ["status", "--check", "--json"])
    assert done.exit_code & CHECK_STALE_WORKER
    assert json.loads(done.output)["check"]["stale_workers"] == 1


def test_the_worker_records_its_heartbeat_and_removes_it_on_exit(settings: Any) -> None:
    from django_ray.runners.sync import SyncRunner
    from django_ray.worker import Worker

    seen: list[tuple[str, list[str], int]] = []
    runner = SyncRunner(worker_id="status-hb-worker")
    worker = Worker(queues=["status-hb"], runner=runner, batch=True, install_signals=False)
    original = worker._step

    def step() -> None:
        original()
        row = WorkerHeartbeat.objects.get(pk="status-hb-worker")
        seen.append((row.mode, row.queues, row.in_flight))

    worker._step = step  # type: ignore[method-assign]
    assert worker.run() == 0
    assert seen and seen[0] == ("sync", ["status-hb"], 0)
    assert not WorkerHeartbeat.objects.filter(pk="status-hb-worker").exists()
