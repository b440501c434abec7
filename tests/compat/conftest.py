"""Fixtures for compat.celery: capture what a producer publishes, switch eager mode on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from django_ray.message import TaskMessage, decode


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[TaskMessage]:
    """Collect the messages compat.celery publishes (instead of sending them to the broker)."""
    sent: list[TaskMessage] = []

    def capture(message: TaskMessage, *, using: str | None = None) -> None:
        sent.append(message)

    monkeypatch.setattr("django_ray.enqueue.publish", capture)
    return sent


def roundtrip(message: TaskMessage) -> tuple[dict[str, Any], list[Any], TaskMessage]:
    """Encode ``message`` as the wire does and decode it back: (headers, body, decoded)."""
    headers, body = message.wire_headers(), message.wire_body()
    decoded = decode(
        headers=headers, body=body, content_type="application/json", queue=message.queue
    )
    return headers, json.loads(body), decoded


@pytest.fixture
def eager(settings: Any) -> Iterator[None]:
    """Run compat tasks eagerly (``CELERY_TASK_ALWAYS_EAGER``) through the sync runner."""
    settings.CELERY_TASK_ALWAYS_EAGER = True
    yield


@pytest.fixture
def eager_propagates(settings: Any, eager: None) -> Iterator[None]:
    settings.CELERY_TASK_EAGER_PROPAGATES = True
    yield


class ChordSizes(dict[str, int]):
    """A stand-in Celery result store that records the chord sizes a client stores."""

    def set_chord_size(self, group_id: str, size: int) -> None:
        self[group_id] = size


@pytest.fixture
def chord_store(monkeypatch: pytest.MonkeyPatch) -> ChordSizes:
    """Give the worker a result store (chords need one) that records the chord sizes."""
    store = ChordSizes()
    monkeypatch.setattr("django_ray.celery.results.store", lambda: store)
    return store


@pytest.fixture
def redis_result_backend(settings: Any) -> Iterator[str]:
    """A Celery result backend (CELERY_RESULT_BACKEND) on the real Redis, emptied afterwards."""
    from tests.services import require_redis

    url = settings.CELERY_RESULT_BACKEND = require_redis()
    yield url
    import redis

    client = redis.Redis.from_url(url)
    for key in client.scan_iter("celery-task*"):
        client.delete(key)
