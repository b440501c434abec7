"""django://: the kombu transport over the project's own database."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone
from kombu import Connection, Exchange
from kombu import Queue as KombuQueue
from kombu.transport import TRANSPORT_ALIASES

from django_ray.message import TaskMessage, new_task_id
from django_ray.models import QueueMessage
from django_ray.transport import Broker, decode_kombu
from django_ray.transports.django import Transport
from tests.waiting import wait_until

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.parametrize("broker_url", ["django"], indirect=True),
]


def message_for(queue: str, **fields: Any) -> TaskMessage:
    return TaskMessage(id=new_task_id(), task="tests.tasks.noop", queue=queue, **fields)


@pytest.fixture
def get() -> Iterator[Callable[..., Any]]:
    """Return ``get(queue, **options)``: one message as a new consumer takes it, or None."""
    brokers: list[Broker] = []

    def take(queue: str, **options: Any) -> Any:
        broker = Broker("django://", transport_options=options)
        brokers.append(broker)
        channel = broker.connection.default_channel
        return KombuQueue(queue, Exchange(queue), routing_key=queue)(channel).get(no_ack=False)

    yield take
    for broker in brokers:  # gives back what a test left unacknowledged
        broker.close()


def test_django_is_a_kombu_transport(broker_url: str) -> None:
    Broker(broker_url)  # registers the alias
    assert TRANSPORT_ALIASES["django"] == "django_ray.transports.django:Transport"
    assert Connection("django://").transport_cls == "django"
    assert isinstance(Connection("django://").transport, Transport)


@pytest.mark.django_db
def test_a_message_is_a_json_row(broker_url: str, queue: str) -> None:
    message = message_for(queue, priority=12)
    Broker(broker_url).publish(message)
    row = QueueMessage.objects.get(queue=queue)
    assert row.priority == 12
    payload = json.loads(row.payload)
    assert payload["headers"]["id"] == message.id
    assert payload["content-type"] == "application/json"


@pytest.mark.django_db
def test_higher_priority_first_then_fifo(
    broker_url: str, queue: str, get: Callable[..., Any]
) -> None:
    broker = Broker(broker_url)
    labels = [("low", -5), ("high-1", 10), ("zero", 0), ("high-2", 10)]
    ids = {}
    for label, priority in labels:
        message = message_for(queue, priority=priority)
        ids[message.id] = label
        broker.publish(message)
    order = []
    while (raw := get(queue)) is not None:
        order.append(ids[raw.headers["id"]])
        raw.ack()
    assert order == ["high-1", "high-2", "zero", "low"]


@pytest.mark.django_db
def test_unacknowledged_message_is_redelivered_after_the_visibility_timeout(
    broker_url: str, queue: str, get: Callable[..., Any]
) -> None:
    message = message_for(queue)
    Broker(broker_url).publish(message)
    first = get(queue, visibility_timeout=1)
    assert first is not None and not first.delivery_info.get("redelivered")
    hidden_until = QueueMessage.objects.get(queue=queue).visible_at
    assert hidden_until > timezone.now()
    assert get(queue) is None  # another consumer does not see it while it is hidden
    time.sleep(max(0.0, (hidden_until - timezone.now()).total_seconds()) + 0.05)
    again = get(queue)
    assert again is not None
    assert again.headers["id"] == message.id
    assert again.delivery_info["redelivered"] is True
    again.ack()
    assert not QueueMessage.objects.filter(queue=queue).exists()


@pytest.mark.django_db
def test_eta_keeps_a_message_hidden_until_due(
    broker_url: str, queue: str, get: Callable[..., Any]
) -> None:
    eta = timezone.now() + timedelta(seconds=1)
    Broker(broker_url).publish(message_for(queue, eta=eta))
    row = QueueMessage.objects.get(queue=queue)
    assert row.visible_at == eta.replace(microsecond=eta.microsecond)
    assert not QueueMessage.objects.visible(queue, timezone.now()).exists()
    assert get(queue) is None
    time.sleep(max(0.0, (eta - timezone.now()).total_seconds()) + 0.05)
    raw = get(queue)
    assert raw is not None
    assert decode_kombu(raw, "django").eta == eta
    raw.ack()


@pytest.mark.django_db
def test_ack_deletes_reject_requeues_and_close_restores(broker_url: str, queue: str) -> None:
    broker = Broker(broker_url)
    for _ in range(3):
        broker.publish(message_for(queue))
    channel = Broker(broker_url).connection.default_channel
    assert channel._size(queue) == 3

    consumer = KombuQueue(queue, Exchange(queue), routing_key=queue)(channel)
    consumer.get(no_ack=False).ack()
    assert QueueMessage.objects.filter(queue=queue).count() == 2

    rejected = consumer.get(no_ack=False)
    rejected.reject(requeue=True)
    assert QueueMessage.objects.visible(queue, timezone.now()).count() == 2

    consumer.get(no_ack=False).reject(requeue=False)
    assert QueueMessage.objects.filter(queue=queue).count() == 1

    held = consumer.get(no_ack=False)
    assert held is not None
    assert not QueueMessage.objects.visible(queue, timezone.now()).exists()
    channel.close()  # closing without acknowledging gives it back at once
    assert QueueMessage.objects.visible(queue, timezone.now()).count() == 1
    assert Broker(broker_url).connection.default_channel._purge(queue) == 1
    assert not QueueMessage.objects.filter(queue=queue).exists()


@pytest.mark.django_db
def test_a_row_is_claimed_once(broker_url: str, queue: str, get: Callable[..., Any]) -> None:
    broker = Broker(broker_url)
    broker.publish(message_for(queue))
    broker.publish(message_for(queue))
    row = QueueMessage.objects.filter(queue=queue).order_by("id").first()
    channel = Broker(broker_url).connection.default_channel
    now = timezone.now()
    assert channel._claim(row, now) is True
    assert channel._claim(row, now) is False  # a second consumer holding the same stale row
    first, second = get(queue), get(queue)
    assert first is not None and second is None  # the claimed row stays hidden
    first.ack()


@pytest.mark.django_db
def test_rollback_removes_the_message(broker_url: str, queue: str) -> None:
    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        Broker(broker_url).publish(message_for(queue))
        assert QueueMessage.objects.filter(queue=queue).count() == 1
        raise Abort()
    assert not QueueMessage.objects.filter(queue=queue).exists()
    with transaction.atomic():
        Broker(broker_url).publish(message_for(queue))
    assert QueueMessage.objects.filter(queue=queue).count() == 1


@pytest.mark.postgres
@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="PostgreSQL only; tests/test_records_postgres.py runs it on PostgreSQL",
)
@pytest.mark.django_db(transaction=True)
def test_postgres_skips_rows_locked_by_another_consumer(
    broker_url: str, queue: str, get: Callable[..., Any]
) -> None:
    broker = Broker(broker_url)
    first, second = message_for(queue, priority=5), message_for(queue)
    broker.publish(first)
    broker.publish(second)
    locked, release = threading.Event(), threading.Event()

    def hold_first_row() -> None:
        try:
            with transaction.atomic():
                row = QueueMessage.objects.select_for_update().get(queue=queue, priority=5)
                assert json.loads(row.payload)["headers"]["id"] == first.id
                locked.set()
                release.wait(10)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_first_row)
    holder.start()
    try:
        assert locked.wait(10)
        with connection.cursor() as cursor:  # a blocking claim fails instead of hanging
            cursor.execute("SET lock_timeout = '3s'")
        raw = get(queue)
        assert raw is not None
        assert raw.headers["id"] == second.id
        raw.ack()
    finally:
        release.set()
        holder.join(10)
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = 0")
    raw = get(queue)
    assert raw is not None and raw.headers["id"] == first.id
    raw.ack()


@pytest.mark.postgres
@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="PostgreSQL only; tests/test_records_postgres.py runs it on PostgreSQL",
)
@pytest.mark.django_db(transaction=True)
def test_postgres_wakes_a_waiting_consumer_on_commit_not_at_its_next_look(queue: str) -> None:
    """A consumer that looks every 60 s still gets a message in seconds: NOTIFY wakes it."""
    received: list[Any] = []
    consumer_conn = Connection("django://", transport_options={"polling_interval": 60})
    channel = consumer_conn.default_channel
    channel.queue_declare(queue=queue)
    channel.basic_consume(queue, False, received.append, consumer_tag="waiting")

    def consume() -> None:
        try:
            consumer_conn.drain_events(timeout=120)
        finally:
            connection.close()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    transport = consumer_conn.transport
    wait_until(
        lambda: transport._listener is not None and queue in transport._listener.listening,
        "the consumer to LISTEN",
    )
    assert transport._listener.listening == {queue}
    Broker("django://").publish(message_for(queue))
    wait_until(lambda: bool(received), "the waiting consumer to take the message", timeout=20)
    thread.join(10)
    consumer_conn.release()


@pytest.mark.django_db
def test_acks_in_a_batch_are_one_delete(broker_url: str, queue: str) -> None:
    from django.test.utils import CaptureQueriesContext

    broker = Broker(broker_url)
    for _ in range(3):
        broker.publish(message_for(queue))
    channel = Broker(broker_url).connection.default_channel
    consumer = KombuQueue(queue, Exchange(queue), routing_key=queue)(channel)
    delivered = [consumer.get(no_ack=False) for _ in range(3)]
    with CaptureQueriesContext(connection) as queries, channel.qos.batched():
        for raw in delivered:
            raw.ack()
        assert QueueMessage.objects.filter(queue=queue).count() == 3  # nothing sent yet
    deletes = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("DELETE")]
    assert len(deletes) == 1, deletes
    assert not QueueMessage.objects.filter(queue=queue).exists()
    channel.close()  # nothing is given back: all three were acknowledged
    assert not QueueMessage.objects.filter(queue=queue).exists()
