"""Hostile and broken messages: each is refused with a recorded reason, once, on every broker,
and the worker goes on to the next message.

Each case was seen to stop or loop workers: a body nested too deep for the JSON decoder,
a follow-up embed the worker could not apply after the task ran, values the task record
cannot hold (a retry count past int4, a time past year 9999 once in UTC, NUL characters
that PostgreSQL refuses), and a parked message that cannot be published again.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import OperationalError
from django.utils import timezone

from django_ray import schedule
from django_ray.message import TaskMessage
from django_ray.models import ScheduledMessage, TaskRecord, TaskStatus
from tests import tasks
from tests.inprocess import publish_raw, queue_size, run_worker_inprocess
from tests.services import ALL_BROKERS

pytestmark = pytest.mark.timeout(90)

ADD = "tests.tasks.add"
MALFORMED = "django_ray.exceptions.MalformedMessage"


def body(embed: dict[str, Any] | None = None, args: list[Any] | None = None) -> str:
    return json.dumps([args if args is not None else [1, 2], {}, embed or {}])


def headers(task_id: str, **extra: Any) -> dict[str, Any]:
    return {"task": ADD, "id": task_id, **extra}


def hostile(broker_url: str) -> dict[str, dict[str, Any]]:
    """Messages (by task id) that must end FAILED as malformed."""
    # AMQP header tables carry at most int64: the largest value a producer can send there.
    huge = 2**40 if broker_url.startswith("amqp") else 10**30
    deep = "[" * 5000 + "]" * 5000
    cases: dict[str, dict[str, Any]] = {
        "deep-body": {"body": f"[{deep}, {{}}, null]", "headers": headers("deep-body")},
        "callback-empty": {"body": body({"callbacks": [{}]})},
        "chain-no-task": {"body": body({"chain": [{"args": []}]})},
        "chord-no-body": {
            "body": body({"chord": {"task": "celery.chord", "subtask_type": "chord", "kwargs": {}}})
        },
        "callback-args-not-list": {"body": body({"callbacks": [{"task": ADD, "args": "x"}]})},
        "huge-retries": {"body": body(), "headers": headers("huge-retries", retries=huge)},
        "int4-retries": {"body": body(), "headers": headers("int4-retries", retries=2**31)},
        "huge-group-index": {
            "body": body(),
            "headers": headers("huge-group-index", group="g", group_index=huge),
        },
        "eta-past-9999": {
            "body": body(),
            "headers": headers("eta-past-9999", eta="9999-12-31T23:59:59-14:00"),
        },
        "expires-before-year-1": {
            "body": body(),
            "headers": headers("expires-before-year-1", expires="0001-01-01T00:00:00+14:00"),
        },
        "long-group-id": {"body": body(), "headers": headers("long-group-id", group="g" * 300)},
        "nul-argument": {"body": body(args=["a\u0000b", 1])},
    }
    for task_id, case in cases.items():
        case.setdefault("headers", headers(task_id))
    return cases


@ALL_BROKERS
@pytest.mark.django_db(transaction=True)
def test_hostile_messages_are_refused_once_and_the_worker_goes_on(
    broker_url: str, queue: str
) -> None:
    cases = hostile(broker_url)
    for case in cases.values():
        publish_raw(queue, case["body"], headers=case["headers"])
    # Without a record to hold them: an id too long, a task name too long, a NUL in the id.
    publish_raw(queue, body(), headers=headers("x" * 300))
    publish_raw(queue, body(), headers={"task": "t" * 300, "id": "long-task-name"})
    publish_raw(queue, body(), headers=headers("nul\u0000id"))
    good = tasks.add.using(queue_name=queue).enqueue(2, 3)

    run_worker_inprocess([queue])

    for task_id in [*cases, "long-task-name"]:
        record = TaskRecord.objects.get(pk=task_id)
        assert record.status == TaskStatus.FAILED, task_id
        assert [e["exception_class_path"] for e in record.errors] == [MALFORMED], task_id
        assert record.worker_ids == [], task_id  # refused before any attempt
    assert not TaskRecord.objects.filter(pk__startswith="xxxxxxxx").exists()
    good.refresh()
    assert good.return_value == 5
    assert queue_size(queue) == 0


@pytest.mark.django_db(transaction=True)
def test_a_parked_message_that_cannot_be_published_again_is_failed_and_dropped(
    broker_url: str, queue: str
) -> None:
    due = timezone.now() - timedelta(seconds=1)
    broken = TaskMessage(id=f"parked-{uuid.uuid4().hex}", task=ADD, args=(1, 2), queue=queue)
    fine = TaskMessage(id=f"parked-{uuid.uuid4().hex}", task=ADD, args=(2, 2), queue=queue)
    for message in (broken, fine):
        assert schedule.park(message.replace(eta=due))
    # Whatever made it unpublishable (here: headers grown past the limit while parked).
    row = ScheduledMessage.objects.get(task_id=broken.id)
    row.payload["headers"]["padding"] = "x" * (300 * 1024)
    row.save()

    run_worker_inprocess([queue])

    record = TaskRecord.objects.get(pk=broken.id)
    assert record.status == TaskStatus.FAILED
    assert record.last_error["exception_class_path"] == MALFORMED
    assert not ScheduledMessage.objects.filter(task_id=broken.id).exists()
    assert TaskRecord.objects.get(pk=fine.id).return_value == 4


@pytest.mark.redis
@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
@pytest.mark.django_db(transaction=True)
def test_garbage_pushed_onto_a_redis_list_does_not_stop_the_worker(
    broker_url: str, queue: str
) -> None:
    import redis

    from django_ray.transport import Broker

    broker = Broker(broker_url)
    broker._declare(queue)  # the queue exists, as it does once any worker consumed it
    broker.close()
    client = redis.Redis.from_url(broker_url)
    envelope = {"body": "%%% not base64 %%%", "headers": {}, "content-type": "application/json",
                "content-encoding": "utf-8", "properties": {"body_encoding": "base64",
                "delivery_tag": "t", "delivery_info": {"routing_key": queue}}}  # fmt: skip
    client.lpush(queue, b"not json at all", json.dumps(envelope))
    good = tasks.add.using(queue_name=queue).enqueue(2, 3)

    run_worker_inprocess([queue])

    good.refresh()
    assert good.return_value == 5
    assert queue_size(queue) == 0


@pytest.mark.django_db(transaction=True)
def test_rows_of_a_django_queue_that_are_not_messages_are_dropped(queue: str) -> None:
    from django_ray.models import QueueMessage

    # Rows no kombu producer writes (by hand, or a broken producer): each was claimed, failed
    # to build, rolled back or came back after its lease, and stayed first in the queue.
    envelope = {
        "body": "%%% not base64 %%%",
        "headers": {"id": "x", "task": ADD},
        "content-type": "application/json",
        "properties": {"body_encoding": "base64"},
    }
    garbage = ["not json", "[1, 2]", "null", json.dumps({**envelope, "properties": []}),
               json.dumps({**envelope, "headers": ["x"]}), json.dumps(envelope)]  # fmt: skip
    for n, payload in enumerate(garbage):
        QueueMessage.objects.create(queue=queue, payload=payload, delivery_tag=f"{queue}-{n}")
    good = tasks.add.using(queue_name=queue).enqueue(2, 3)

    run_worker_inprocess([queue])

    good.refresh()
    assert good.return_value == 5
    assert queue_size(queue) == 0


@pytest.mark.django_db(transaction=True)
def test_a_priority_header_past_any_column_is_stored_clamped_on_django(queue: str) -> None:
    publish_raw(queue, body(), headers=headers("huge-priority", django_ray_priority=2**64))

    run_worker_inprocess([queue])

    record = TaskRecord.objects.get(pk="huge-priority")
    assert (record.status, record.return_value, record.priority) == ("SUCCESSFUL", 3, 100)


@pytest.mark.redis
@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
@pytest.mark.django_db(transaction=True)
def test_a_run_of_garbage_on_a_redis_list_costs_no_pause_and_no_reconnect(
    broker_url: str, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    import redis

    from django_ray.transport import Broker

    broker = Broker(broker_url)
    broker._declare(queue)
    broker.close()
    # Items kombu cannot turn into messages: not JSON, not an envelope, no properties (a
    # KeyError, which kombu counts as a Redis connection error). Each used to pause the
    # worker longer (0.5 s doubling to 10 s), or make it reconnect.
    items = [b"not json", b"[1]", json.dumps({"body": "", "headers": {}}).encode()] * 10
    redis.Redis.from_url(broker_url).lpush(queue, *items)
    good = tasks.add.using(queue_name=queue).enqueue(2, 3)

    with caplog.at_level("INFO", logger="django_ray.worker"):
        run_worker_inprocess([queue])

    good.refresh()
    assert good.return_value == 5
    assert caplog.text.count("Dropped an item the transport could not read") == len(items)
    assert "Broker connection lost" not in caplog.text
    assert "Could not take a message" not in caplog.text


@pytest.mark.django_db(transaction=True)
def test_an_outcome_the_reachable_database_refuses_ends_failed_once(
    queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite's answer to a value over its limit (SQLITE_MAX_LENGTH, 1 GB: too big to build
    # here), or PostgreSQL's to a jsonb over 255 MB: an OperationalError from a database that
    # is still there. Not an outage: the task ends FAILED once, and is not run again.
    def refuse(self: TaskRecord, *args: Any, **kwargs: Any) -> bool:
        raise OperationalError("string or blob too big")

    monkeypatch.setattr(TaskRecord, "mark_successful", refuse)
    result = tasks.add.using(queue_name=queue).enqueue(2, 3)

    worker = run_worker_inprocess([queue])

    record = TaskRecord.objects.get(pk=result.id)
    assert (record.status, record.attempts) == (TaskStatus.FAILED, 1)
    assert record.last_error["exception_class_path"] == "django.db.utils.OperationalError"
    assert worker.processed == 1
    assert queue_size(queue) == 0
