"""A service restarted mid-run: the worker lives, nothing is lost, nothing finished runs again.

A batch of short tasks (``tests.tasks.journal``: each appends ``start``/``end`` lines to a
file) runs through one worker subprocess; after a few have finished, the service goes away
while a task runs, and comes back once the worker has noticed. Then:

* the worker is still up and finishes the batch: every task is SUCCESSFUL, with its
  return value;
* no task body started after its record was finished: a message delivered again after the
  outage (its acknowledgement was lost with the connection) is found finished and dropped;
* the queue is empty and nothing was dead-lettered.

Redis is a server of the test's own (append-only file, synced on every write), killed with
SIGKILL and started again. RabbitMQ and PostgreSQL are shared by the whole suite, so the
worker reaches them through a TCP proxy that resets every connection and refuses new ones
(``tests/tcpproxy.py``): what a client sees of a restart, with the data kept as RabbitMQ's
durable queues and PostgreSQL's tables keep it. The Ray head's restart is in
``tests/runners/test_ray_loss.py``.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from tests.conftest import worker_command, worker_env
from tests.inprocess import queue_size
from tests.journal import enqueue_batch, statuses
from tests.private_redis import RedisServer
from tests.processes import Process
from tests.services import POSTGRES_HOST, require_postgres, require_rabbitmq
from tests.tcpproxy import TcpProxy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

COUNT = 24
SECONDS = 0.2


def run_through_outage(
    tmp_path: Path,
    *,
    env: dict[str, str],
    stop: Callable[[], None],
    start: Callable[[], None],
    noticed: str,
    args: tuple[str, ...] = ("--sync",),
) -> Process:
    """Run the batch; ``stop()`` the service mid-run, wait for the worker's log to show
    ``noticed``, ``start()`` it again; check what the module docstring promises."""
    batch = enqueue_batch(f"restart-{uuid.uuid4().hex[:8]}", tmp_path, COUNT, SECONDS)
    queue, ids, label_of = batch.queue, batch.ids, batch.label_of
    worker = Process(worker_command(f"--queue={queue}", "--worker-id=steady", *args), env)
    try:
        worker.wait_for(
            lambda: statuses(ids)["SUCCESSFUL"] >= 4 and statuses(ids)["RUNNING"],
            "a few tasks to finish and one to run", timeout=120,
        )  # fmt: skip
        stop()
        try:
            worker.wait_for(lambda: noticed in worker.log, "the worker to notice the outage")
        finally:
            start()
        worker.wait_for(
            lambda: statuses(ids)["SUCCESSFUL"] == COUNT, "the whole batch", timeout=120
        )
        assert worker.stop() == 0, worker.log[-4000:]
    finally:
        worker.kill()

    records = batch.records()
    assert all(records[i].return_value == label_of[i] for i in ids)
    finished_at = {label_of[pk]: r.finished_at for pk, r in records.items()}
    events = batch.events()
    ends = {label for kind, label, _ in events if kind == "end"}
    assert ends == set(label_of.values())
    late = [
        (label, t) for kind, label, t in events
        if kind == "start" and datetime.fromtimestamp(t, finished_at[label].tzinfo)
        > finished_at[label]
    ]  # fmt: skip
    assert late == [], f"bodies started after their record finished: {late}"
    starts = Counter(label for kind, label, _ in events if kind == "start")
    # At most the task running when the service went away ran twice.
    assert sum(starts.values()) - COUNT <= 2, starts
    assert queue_size(queue) == 0
    assert queue_size(f"{queue}.dead-letter") == 0
    return worker


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("mode", ["sync", "local"])
def test_redis_restarted_mid_run(
    private_redis: RedisServer, settings: Any, tmp_path: Path, mode: str
) -> None:
    settings.DJANGO_RAY = {**settings.DJANGO_RAY, "BROKER_URL": private_redis.url}
    worker = run_through_outage(
        tmp_path,
        env=worker_env(DJANGO_RAY_BROKER=private_redis.url, DJANGO_RAY_VISIBILITY_TIMEOUT="3"),
        stop=lambda: private_redis.stop(crash=True),
        start=private_redis.start,
        noticed="Broker connection lost",
        args=(f"--{mode}",),
    )
    assert "Reconnected to the broker" in worker.log


@pytest.mark.rabbitmq
@pytest.mark.django_db(transaction=True)
def test_rabbitmq_restarted_mid_run(settings: Any, tmp_path: Path) -> None:
    url = require_rabbitmq()
    settings.DJANGO_RAY = {**settings.DJANGO_RAY, "BROKER_URL": url}
    proxy = TcpProxy("127.0.0.1", 5672).start()
    through_proxy = url.replace("127.0.0.1:5672", f"127.0.0.1:{proxy.port}")
    assert through_proxy != url
    try:
        worker = run_through_outage(
            tmp_path,
            env=worker_env(DJANGO_RAY_BROKER=through_proxy),
            stop=proxy.cut,
            start=proxy.resume,
            noticed="Broker connection lost",
        )
    finally:
        proxy.cut()
    assert "Reconnected to the broker" in worker.log
    assert proxy.connections > 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="PostgreSQL only; tests/test_records_postgres.py runs it on PostgreSQL",
)
def test_postgresql_restarted_mid_run(tmp_path: Path) -> None:
    # django:// on PostgreSQL: the broker and the records go away together.
    require_postgres()
    assert settings.DJANGO_RAY["BROKER_URL"] == "django://"
    proxy = TcpProxy(*POSTGRES_HOST).start()
    try:
        worker = run_through_outage(
            tmp_path,
            env=worker_env(DJANGO_RAY_PG_PORT=str(proxy.port)),
            stop=proxy.cut,
            start=proxy.resume,
            noticed="connection lost",
        )
    finally:
        proxy.cut()
    assert proxy.connections > 1
    assert "Traceback" not in worker.log, worker.log[-4000:]
