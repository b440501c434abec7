"""The same interop over RabbitMQ: a real Celery client publishing to amqp://."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from celery import Celery, chain, chord, group
from celery.canvas import Signature
from celery.exceptions import NotRegistered, TaskRevokedError

from tests.celery_interop.celery_app import QUEUE, RUN, client_app
from tests.celery_interop.workers import (
    RunningWorker,
    django_ray_worker,
    hold_started,
    interop_env,
    release,
    unique,
)
from tests.services import require_rabbitmq

# Its worker writes TaskRecords: pytest-django creates the test database only for a run
# that collects a django_db test, so this module declares it (it may run alone).
pytestmark = [pytest.mark.rabbitmq, pytest.mark.django_db(transaction=True)]
TIMEOUT = 10
TASKS = "tests.celery_interop.cw_tasks"


@pytest.fixture(scope="module")
def amqp_client() -> Iterator[Celery]:
    url = require_rabbitmq()
    client = client_app(url)
    with client.connection_for_write() as connection:
        # Declared as a Celery worker declares it, before our worker looks for it.
        queue = client.amqp.queues[QUEUE](connection.default_channel)
        queue.declare()
        queue.purge()
    yield client
    with client.connection_for_write() as connection:  # the queue is this session's own
        connection.default_channel.queue_delete(QUEUE)
        connection.default_channel.exchange_delete(QUEUE)
    client.close()


@pytest.fixture(scope="module")
def amqp_worker(
    amqp_client: Celery, redis_client: redis.Redis, django_db_setup: None
) -> Iterator[RunningWorker]:
    url = amqp_client.conf.broker_url
    with django_ray_worker(f"cw-amqp-{RUN}", [QUEUE], **interop_env(url, QUEUE)) as running:
        yield running


def test_send_task_and_signatures(amqp_worker: RunningWorker, amqp_client: Celery) -> None:
    assert amqp_client.send_task(f"{TASKS}.add", args=(2, 3)).get(timeout=TIMEOUT) == 5
    sig = amqp_client.signature(f"{TASKS}.inspect_request", args=(1,), kwargs={"k": 2})
    request = sig.apply_async(headers={"x-custom": "v"}, priority=5).get(timeout=TIMEOUT)
    assert request["args"] == [1] and request["kwargs"] == {"k": 2}
    assert request["headers"] == {"x-custom": "v"} and request["routing_key"] == QUEUE
    with pytest.raises(ValueError, match="kaput"):
        amqp_client.send_task(f"{TASKS}.fail", args=("kaput",)).get(timeout=TIMEOUT)


def test_canvas(amqp_worker: RunningWorker, amqp_client: Celery) -> None:
    def s(name: str, *args: object, immutable: bool = False) -> Signature:
        return amqp_client.signature(f"{TASKS}.{name}", args=args, immutable=immutable)

    result = chain(s("add", 1, 2), s("add", 10), s("add", 1, 1, immutable=True)).apply_async()
    assert result.get(timeout=TIMEOUT) == 2
    assert result.parent.get(timeout=TIMEOUT) == 13
    assert group(s("add", i, i) for i in range(3)).apply_async().get(timeout=TIMEOUT) == [0, 2, 4]
    body = amqp_client.signature(f"{TASKS}.tsum")
    assert chord([s("add", i, 1) for i in range(3)], body).apply_async().get(timeout=TIMEOUT) == 6


def test_retry(amqp_worker: RunningWorker, amqp_client: Celery) -> None:
    result = amqp_client.send_task(f"{TASKS}.flaky", args=(2,), kwargs={"countdown": 0.2})
    assert result.get(timeout=TIMEOUT) == 2


def test_revoke_and_unknown_name(
    amqp_worker: RunningWorker, amqp_client: Celery, redis_client: redis.Redis
) -> None:
    key, busy_key = unique("amqp-revoked"), unique("amqp-busy")
    busy = amqp_client.send_task(f"{TASKS}.hold", args=(busy_key,))  # until the revoke is in
    hold_started(redis_client, busy_key)
    queued = amqp_client.send_task(f"{TASKS}.record_run", args=(key,))
    queued.revoke()
    amqp_worker.wait_for(f"Revoked {queued.id}", TIMEOUT)
    release(redis_client, busy_key)
    with pytest.raises(TaskRevokedError):
        queued.get(timeout=TIMEOUT)
    assert busy.get(timeout=TIMEOUT) == "released"
    with pytest.raises(NotRegistered):
        amqp_client.send_task("cw.nope").get(timeout=TIMEOUT)
    assert redis_client.hgetall(f"cw:runs:{key}") == {}
