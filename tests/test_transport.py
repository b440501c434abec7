"""The transport layer against django://, Redis and RabbitMQ, for real."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import transaction
from django.test import override_settings

from django_ray import conf
from django_ray.message import TaskMessage, new_task_id
from django_ray.models import QueueMessage, TaskRecord
from django_ray.transport import (
    Broker,
    broker_kind,
    decode_kombu,
    from_broker_priority,
    publish,
    to_broker_priority,
)
from tests import tasks
from tests.inprocess import queue_size
from tests.services import ALL_BROKERS
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

EXTERNAL_BROKERS = pytest.mark.parametrize(
    "broker_url",
    [
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("amqp", marks=pytest.mark.rabbitmq),
    ],
    indirect=True,
)


class Collector:
    """Consume ``queue`` on a fresh ``Broker`` and keep the raw kombu messages."""

    def __init__(self, url: str, queue: str) -> None:
        self.broker = Broker(url)
        self.messages: list[Any] = []
        self.broker.consume([queue], self.messages.append, prefetch=1)

    def next(self, timeout: float = 5) -> Any:
        count = len(self.messages)

        def arrived() -> bool:
            self.broker.drain(timeout=0.2)  # waits in the broker; returns when one comes
            return len(self.messages) > count

        wait_until(arrived, "a message", timeout=timeout, interval=0)
        return self.messages[-1]

    def nothing(self, wait: float = 0.5) -> bool:
        count = len(self.messages)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            self.broker.drain(timeout=0.1)
        return len(self.messages) == count

    def close(self) -> None:
        self.broker.close()


@pytest.fixture
def collector(broker_url: str, queue: str) -> Iterator[Collector]:
    consumer = Collector(broker_url, queue)
    yield consumer
    consumer.close()


def message_for(queue: str, **fields: Any) -> TaskMessage:
    return TaskMessage(
        id=new_task_id(), task="tests.tasks.add", args=(1, 2), queue=queue, backend="default",
        **fields,
    )  # fmt: skip


# -- publish and consume -----------------------------------------------------------------


@ALL_BROKERS
@pytest.mark.django_db
def test_publish_and_consume_protocol_v2_json(broker_url: str, queue: str) -> None:
    message = message_for(queue, kwargs={"k": "v"}, priority=5, retries=1, group="g")
    broker = Broker(broker_url)
    broker.publish(message)
    broker.close()

    consumer = Collector(broker_url, queue)
    try:
        raw = consumer.next()
        assert raw.content_type == "application/json"
        assert raw.headers["task"] == "tests.tasks.add"
        assert raw.headers["id"] == message.id
        assert json.loads(raw.body) == [[1, 2], {"k": "v"}, {
            "callbacks": None, "errbacks": None, "chain": None, "chord": None,
        }]  # fmt: skip
        decoded = decode_kombu(raw, consumer.broker.kind)
        assert decoded == message.replace(
            correlation_id=message.id,
            root_id=message.id,
            origin=decoded.origin,
            delivery_info=decoded.delivery_info,
        )
        assert decoded.queue == queue
        raw.ack()
        assert consumer.nothing(0.3)
    finally:
        consumer.close()
    assert queue_size(queue, broker_url) == 0


@ALL_BROKERS
@pytest.mark.django_db
def test_higher_priority_is_delivered_first(broker_url: str, queue: str) -> None:
    # One priority per Redis bucket (kombu's Redis transport has four: 0, 3, 6, 9).
    broker = Broker(broker_url)
    for priority in (-100, 0, 100, -50):
        broker.publish(message_for(queue, priority=priority))
    broker.close()
    consumer = Collector(broker_url, queue)
    try:
        order = []
        for _ in range(4):
            raw = consumer.next()
            order.append(decode_kombu(raw, consumer.broker.kind).priority)
            raw.ack()
    finally:
        consumer.close()
    assert order == [100, 0, -50, -100]


@ALL_BROKERS
@pytest.mark.django_db
def test_rejected_with_requeue_comes_back(
    broker_url: str, queue: str, collector: Collector
) -> None:
    message = message_for(queue)
    Broker(broker_url).publish(message)
    first = collector.next()
    first.reject(requeue=True)
    second = collector.next()
    assert second.headers["id"] == message.id
    second.reject(requeue=False)
    assert collector.nothing(0.3)
    assert queue_size(queue, broker_url) == 0


@ALL_BROKERS
@pytest.mark.django_db
def test_unacknowledged_message_returns_when_the_consumer_goes(broker_url: str, queue: str) -> None:
    message = message_for(queue)
    Broker(broker_url).publish(message)
    first = Collector(broker_url, queue)
    first.next()  # never acknowledged
    first.close()
    second = Collector(broker_url, queue)
    try:
        raw = second.next()
        assert raw.headers["id"] == message.id
        raw.ack()
    finally:
        second.close()


@ALL_BROKERS
@pytest.mark.django_db
def test_cancel_stops_new_deliveries(broker_url: str, queue: str, collector: Collector) -> None:
    collector.broker.cancel()
    Broker(broker_url).publish(message_for(queue))
    assert collector.nothing(0.5)
    assert queue_size(queue, broker_url) == 1


# -- push delivery ---------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
def test_redis_consumer_blocks_in_brpop(broker_url: str, queue: str, collector: Collector) -> None:
    import redis

    client = redis.Redis.from_url(broker_url)

    def brpop_clients() -> set[str]:
        return {c["id"] for c in client.client_list() if c["cmd"] == "brpop"}

    before = brpop_clients()
    result: list[bool] = []
    waiting = threading.Thread(target=lambda: result.append(collector.broker.drain(timeout=10)))
    waiting.start()
    wait_until(lambda: brpop_clients() - before, "the consumer to wait in BRPOP", timeout=5)
    Broker(broker_url).publish(message_for(queue))  # delivered into the blocked call
    waiting.join(10)
    assert result == [True]
    collector.messages[-1].ack()
    client.close()


@pytest.mark.rabbitmq
@pytest.mark.parametrize("broker_url", ["amqp"], indirect=True)
def test_rabbitmq_consumer_is_subscribed(broker_url: str, queue: str, collector: Collector) -> None:
    other = Broker(broker_url)
    try:
        declared = other.connection.default_channel.queue_declare(queue, passive=True)
        assert declared.consumer_count == 1  # basic.consume, not a basic.get polling loop
    finally:
        other.close()


@pytest.mark.redis
@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
def test_redis_wire_format_is_what_celery_reads(broker_url: str, queue: str) -> None:
    import base64

    import redis

    message = message_for(queue)
    Broker(broker_url).publish(message)
    client = redis.Redis.from_url(broker_url)
    keys = [k for k in client.keys(f"{queue}*") if not k.startswith(b"_kombu")]
    assert len(keys) == 1
    envelope = json.loads(client.lindex(keys[0], 0))
    client.close()
    assert envelope["content-type"] == "application/json"
    assert envelope["headers"]["task"] == "tests.tasks.add"
    assert envelope["properties"]["body_encoding"] == "base64"
    assert json.loads(base64.b64decode(envelope["body"]))[0] == [1, 2]


# -- priorities on the broker's own scale --------------------------------------------------


def test_priority_mapping_keeps_the_order() -> None:
    django_scale = [-100, -50, 0, 50, 100]
    redis = [to_broker_priority("redis", p) for p in django_scale]
    amqp = [to_broker_priority("amqp", p) for p in django_scale]
    assert redis == sorted(redis, reverse=True) and redis[0] == 9 and redis[-1] == 0
    assert amqp == sorted(amqp) and amqp[0] == 0 and amqp[-1] == 9
    for kind in ("redis", "amqp"):
        back = [from_broker_priority(kind, to_broker_priority(kind, p)) for p in django_scale]
        assert back == sorted(back)
        assert back[0] == -100 and back[-1] == 100
    assert from_broker_priority("redis", None) == 0


def test_broker_kind() -> None:
    assert broker_kind("django://") == "django"
    assert broker_kind("rediss://h:1/0") == "redis"
    assert broker_kind("pyamqp://guest@h//") == "amqp"
    assert broker_kind("amqp://guest@h//") == "amqp"


# -- broker URL from settings ---------------------------------------------------------


def test_broker_url_comes_from_django_ray_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    with override_settings(DJANGO_RAY={"BROKER_URL": "redis://example:6379/3"}):
        assert conf.broker_url() == "redis://example:6379/3"
        assert Broker().url == "redis://example:6379/3"
    with override_settings(DJANGO_RAY={}):
        assert conf.broker_url() == "django://"


def test_broker_url_falls_back_to_celery_broker_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    with override_settings(DJANGO_RAY={}, CELERY_BROKER_URL="amqp://guest@rabbit//"):
        assert conf.broker_url() == "amqp://guest@rabbit//"
        assert Broker().kind == "amqp"
    with override_settings(
        DJANGO_RAY={"BROKER_URL": "django://"}, CELERY_BROKER_URL="amqp://guest@rabbit//"
    ):
        assert conf.broker_url() == "django://"  # DJANGO_RAY wins
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://from-env:6379/0")
    with override_settings(DJANGO_RAY={}):
        assert conf.broker_url() == "redis://from-env:6379/0"


# -- transactions ---------------------------------------------------------------------


@EXTERNAL_BROKERS
@pytest.mark.django_db(transaction=True)
def test_external_broker_publishes_only_after_commit(broker_url: str, queue: str) -> None:
    with transaction.atomic():
        result = tasks.add.using(queue_name=queue).enqueue(1, 2)
        with transaction.atomic():  # a nested block commits nothing by itself
            tasks.add.using(queue_name=queue).enqueue(3, 4)
        assert queue_size(queue, broker_url) == 0
    assert queue_size(queue, broker_url) == 2
    assert TaskRecord.objects.filter(pk=result.id).exists()


@EXTERNAL_BROKERS
@pytest.mark.django_db(transaction=True)
def test_external_broker_publishes_nothing_on_rollback(broker_url: str, queue: str) -> None:
    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        result = tasks.add.using(queue_name=queue).enqueue(1, 2)
        raise Abort()
    assert queue_size(queue, broker_url) == 0
    assert not TaskRecord.objects.filter(pk=result.id).exists()
    # Outside any transaction it is published at once.
    tasks.add.using(queue_name=queue).enqueue(1, 2)
    assert queue_size(queue, broker_url) == 1


@pytest.mark.parametrize("broker_url", ["django"], indirect=True)
@pytest.mark.django_db(transaction=True)
def test_django_broker_message_is_part_of_the_transaction(broker_url: str, queue: str) -> None:
    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        result = tasks.add.using(queue_name=queue).enqueue(1, 2)
        assert QueueMessage.objects.filter(queue=queue).count() == 1  # already there
        raise Abort()
    assert not QueueMessage.objects.filter(queue=queue).exists()
    assert not TaskRecord.objects.filter(pk=result.id).exists()
    with transaction.atomic():
        tasks.add.using(queue_name=queue).enqueue(1, 2)
    assert QueueMessage.objects.filter(queue=queue).count() == 1


@pytest.mark.parametrize("broker_url", ["django"], indirect=True)
@pytest.mark.django_db
def test_publish_helper_is_immediate_for_django(broker_url: str, queue: str) -> None:
    publish(message_for(queue))
    assert queue_size(queue, broker_url) == 1


# -- acknowledgements in batches (Redis) -------------------------------------------------


def _commands(client: Any, name: str) -> int:
    stats = client.info("commandstats").get(f"cmdstat_{name}", {})
    return int(stats.get("calls", 0))


@pytest.mark.redis
@pytest.mark.django_db
def test_redis_acks_in_a_batch_are_one_round_trip(private_redis: Any, queue: str) -> None:
    import redis

    url = private_redis.url
    for _ in range(5):
        Broker(url).publish(message_for(queue))
    consumer = Collector(url, queue)
    consumer.broker.set_prefetch(5)
    try:
        delivered = [consumer.next() for _ in range(5)]
        client = redis.Redis.from_url(url)
        unacked = consumer.broker.connection.default_channel.unacked_key
        assert client.hlen(unacked) == 5
        before = _commands(client, "hdel")
        with consumer.broker.acks_batched():
            for raw in delivered:
                raw.ack()
            assert client.hlen(unacked) == 5  # nothing sent inside the block
        assert _commands(client, "hdel") - before == 1
        assert client.hlen(unacked) == 0
        assert queue_size(queue, url) == 0
    finally:
        consumer.close()


@pytest.mark.redis
@pytest.mark.django_db
def test_redis_acks_that_failed_are_sent_after_reconnecting(private_redis: Any, queue: str) -> None:
    import redis

    url = private_redis.url
    Broker(url).publish(message_for(queue))
    consumer = Collector(url, queue)
    try:
        raw = consumer.next()
        private_redis.stop(crash=True)
        with pytest.raises(consumer.broker.recoverable_errors), consumer.broker.acks_batched():
            raw.ack()
        private_redis.start()
        client = redis.Redis.from_url(url)
        unacked = consumer.broker.connection.default_channel.unacked_key
        assert client.hlen(unacked) == 1  # durable: the delivery outlived the crash
        consumer.broker.reconnect()
        assert client.hlen(unacked) == 0
        assert consumer.nothing(0.5)  # acknowledged: it never comes back
        assert queue_size(queue, url) == 0
    finally:
        consumer.close()
