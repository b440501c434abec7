"""Run the real ``Worker`` in the test process, and read what a broker holds."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from django.conf import settings

from django_ray.runners.sync import SyncRunner
from django_ray.transport import Broker
from django_ray.worker import Worker

WORKER_ID = "test-worker"


def run_worker_inprocess(
    queues: Iterable[str],
    *,
    batch: bool = True,
    max_tasks: int | None = None,
    worker_id: str = WORKER_ID,
    runner: SyncRunner | None = None,
) -> Worker:
    """Run a ``--sync`` worker on the configured broker until it exits; return it."""
    worker = Worker(
        queues=list(queues),
        runner=runner or SyncRunner(worker_id=worker_id),
        batch=batch,
        max_tasks=max_tasks,
        install_signals=False,
    )
    assert worker.run() == 0
    return worker


def queue_size(name: str, url: str | None = None) -> int:
    """Return how many messages wait in queue ``name`` (django:// also counts hidden ones)."""
    url = url or settings.DJANGO_RAY["BROKER_URL"]
    broker = Broker(url)
    try:
        channel = broker.connection.default_channel
        if broker.kind == "amqp":
            try:
                return channel.queue_declare(name, passive=True).message_count
            except broker.connection.channel_errors:
                return 0
        return channel._size(name)
    finally:
        broker.close()


def held(name: str, url: str | None = None) -> int:
    """Return how many of queue ``name``'s messages a consumer holds unacknowledged (Redis;
    ``queue_size`` already counts them on django://)."""
    url = url or settings.DJANGO_RAY["BROKER_URL"]
    broker = Broker(url)
    try:
        if broker.kind != "redis":
            return 0
        channel = broker.connection.default_channel
        entries = channel.client.hvals(channel.unacked_key)
        return sum(1 for raw in entries if json.loads(raw)[2] == name)
    finally:
        broker.close()


def publish_raw(
    queue: str,
    body: bytes | str,
    *,
    headers: dict[str, Any] | None,
    content_type: str = "application/json",
    content_encoding: str = "utf-8",
    url: str | None = None,
) -> None:
    """Publish bytes as any producer (or attacker) could, bypassing ``TaskMessage``."""
    from kombu import Producer

    broker = Broker(url or settings.DJANGO_RAY["BROKER_URL"])
    try:
        broker._declare(queue)
        Producer(broker.connection.default_channel).publish(
            body,
            exchange="",
            routing_key=queue,
            headers=headers or {},
            content_type=content_type,
            content_encoding=content_encoding,
        )
    finally:
        broker.close()
