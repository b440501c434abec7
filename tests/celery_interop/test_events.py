"""``django_ray_worker -E`` sends Celery's events: Celery's own receiver and state see them.

``app.events.Receiver`` and ``app.events.State`` are what ``celery events`` and Flower use.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from django_ray.celery.wire import node_name
from tests.celery_interop import cw_tasks
from tests.celery_interop.celery_app import RUN, app
from tests.celery_interop.workers import (
    RunningWorker,
    django_ray_worker,
    interop_env,
    purge_redis_queue,
)
from tests.services import REDIS_URL
from tests.waiting import wait_until

# Its worker writes TaskRecords: pytest-django creates the test database only for a run
# that collects a django_db test, so this module declares it (it may run alone).
pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]
TIMEOUT = 10
WORKER_ID, QUEUE = f"cw-events-{RUN}", f"cw_events_{RUN}"
NODE = node_name(WORKER_ID)


class Captured:
    """Celery's event receiver on a thread: the events ``NODE`` sent, in order."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self._connection = app.connection_for_read()
        self.receiver = app.events.Receiver(self._connection, handlers={"*": self._on_event})
        consume_ready = self.receiver.on_consume_ready

        def on_consume_ready(*args: Any, **kwargs: Any) -> None:
            consume_ready(*args, **kwargs)
            self.ready.set()

        self.receiver.on_consume_ready = on_consume_ready  # type: ignore[method-assign]
        self._thread = threading.Thread(
            target=self.receiver.capture, kwargs={"wakeup": False}, daemon=True
        )

    def _on_event(self, event: dict[str, Any]) -> None:
        if event.get("hostname") == NODE:
            self.events.append(event)

    def start(self) -> None:
        self._thread.start()
        wait_until(self.ready.is_set, "the event receiver to listen")

    def stop(self) -> None:
        self.receiver.should_stop = True
        self._thread.join(5)
        self._connection.release()

    def of(self, kind: str, task_id: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in list(self.events)
            if e["type"] == kind and (task_id is None or e.get("uuid") == task_id)
        ]

    def wait_for(self, kind: str, task_id: str | None = None) -> dict[str, Any]:
        return wait_until(
            lambda: self.of(kind, task_id), f"a {kind} event", timeout=TIMEOUT,
            details=lambda: "\n".join(f"{e['type']} {e.get('uuid', '')}" for e in self.events),
        )[-1]  # fmt: skip


@pytest.fixture
def captured() -> Iterator[Captured]:
    capture = Captured()
    capture.start()
    yield capture
    capture.stop()


@pytest.fixture
def events_worker(
    captured: Captured, redis_client: redis.Redis, django_db_setup: None
) -> Iterator[RunningWorker]:
    purge_redis_queue(redis_client, QUEUE)
    env = interop_env(REDIS_URL, QUEUE)
    with django_ray_worker(WORKER_ID, [QUEUE], mode=("--sync", "-E"), **env) as running:
        yield running


def test_worker_sends_celerys_task_events_and_heartbeats(
    events_worker: RunningWorker, captured: Captured
) -> None:
    online = captured.wait_for("worker-online")
    assert online["sw_ident"] == "py-celery" and online["freq"] == 2.0

    ok = cw_tasks.add.apply_async((2, 3), queue=QUEUE)
    failed = cw_tasks.fail.apply_async(("boom",), queue=QUEUE)
    assert ok.get(timeout=TIMEOUT) == 5
    with pytest.raises(ValueError, match="boom"):
        failed.get(timeout=TIMEOUT)

    received = captured.wait_for("task-received", ok.id)
    assert received["name"] == "tests.celery_interop.cw_tasks.add"
    assert received["args"] == "(2, 3)" and received["root_id"] == ok.id
    assert captured.wait_for("task-started", ok.id)["pid"] == events_worker.process.pid
    assert captured.wait_for("task-succeeded", ok.id)["runtime"] >= 0
    assert "ValueError" in captured.wait_for("task-failed", failed.id)["exception"]
    kinds = [e["type"] for e in captured.events if e.get("uuid") == ok.id]
    assert kinds == ["task-received", "task-started", "task-succeeded"]

    beat = captured.wait_for("worker-heartbeat")  # every 2 s
    assert beat["processed"] >= 2 and beat["active"] == 0

    # What Flower builds from them: Celery's event state.
    state = app.events.State()
    for event in list(captured.events):
        state.event(event)
    assert state.workers[NODE].alive
    assert state.tasks[ok.id].state == "SUCCESS"
    assert state.tasks[failed.id].state == "FAILURE"
    assert state.tasks[ok.id].worker.hostname == NODE

    events_worker.stop()
    assert events_worker.process.returncode == 0
    offline = captured.wait_for("worker-offline")
    assert offline["processed"] >= 2


def test_heartbeat_command_gets_one_at_once(
    events_worker: RunningWorker, captured: Captured
) -> None:
    online = captured.wait_for("worker-online")
    app.control.broadcast("heartbeat", destination=[NODE])  # what `celery events` sends
    beat = captured.wait_for("worker-heartbeat")
    # Before the first periodic one, due 2 s after worker-online.
    assert beat["timestamp"] - online["timestamp"] < 1.9
