"""Celery's own tools see our worker: ``celery inspect``/``celery control`` get its replies.

The real ``celery`` command line runs as a subprocess on the interop Celery app, and the
test process asks through ``app.control``; every request names our worker's node
(``--destination``), so workers of other sessions on the same Redis never answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from django_ray.celery.wire import node_name
from tests.celery_interop import cw_tasks
from tests.celery_interop.celery_app import RUN, app, client_app
from tests.celery_interop.workers import (
    RunningWorker,
    django_ray_worker,
    hold_started,
    interop_env,
    purge_redis_queue,
    release,
    unique,
)
from tests.conftest import ROOT
from tests.services import REDIS_URL, require_rabbitmq
from tests.waiting import wait_until

# Its workers write TaskRecords: pytest-django creates the test database only for a run
# that collects a django_db test, so this module declares it (it may run alone).
pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]
TIMEOUT = 10
NODE = node_name(f"cw-redis-{RUN}")  # the package's worker (conftest.worker)
TASKS = "tests.celery_interop.cw_tasks"


def celery_cli(*args: str, broker: str = REDIS_URL) -> subprocess.CompletedProcess[str]:
    """Run the real ``celery -A <interop app> ...`` as an operator would."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CW_BROKER_URL": broker}
    env.pop("DJANGO_SETTINGS_MODULE", None)  # a plain Celery project, no Django fixup
    command = [sys.executable, "-m", "celery", "-A", "tests.celery_interop.celery_app", *args]
    return subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def cli_json(*args: str, node: str = NODE, broker: str = REDIS_URL) -> Any:
    """Run ``celery inspect|control ... --json`` aimed at ``node``; return its replies."""
    done = celery_cli(*args, "--destination", node, "--timeout", "5", "--json", broker=broker)
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def inspect(node: str = NODE, client: Celery = app) -> Any:
    return client.control.inspect(destination=[node], timeout=5)


def test_cli_inspect_ping(worker: RunningWorker) -> None:
    assert cli_json("inspect", "ping") == {NODE: {"ok": "pong"}}
    assert app.control.ping(destination=[NODE], timeout=5) == [{NODE: {"ok": "pong"}}]


def test_cli_status_lists_the_node(worker: RunningWorker) -> None:
    done = celery_cli("status", "--destination", NODE, "--timeout", "5")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{NODE}: OK" in done.stdout and "1 node online." in done.stdout


def test_cli_inspect_registered(worker: RunningWorker) -> None:
    names = cli_json("inspect", "registered")[NODE]
    assert {f"{TASKS}.add", "cw.mul", f"{TASKS}.hold", "tests.tasks.add"} <= set(names)
    assert names == sorted(names)
    assert not [n for n in names if n.startswith("celery.")]
    assert inspect().registered() == {NODE: names}


def test_inspect_active_shows_the_running_task(
    worker: RunningWorker, redis_client: redis.Redis
) -> None:
    key = unique("active")
    running = cw_tasks.hold.apply_async((key,), kwargs={"timeout": 20})
    hold_started(redis_client, key)
    try:
        active = cli_json("inspect", "active")[NODE]
        assert len(active) == 1
        (request,) = active
        assert request["id"] == running.id
        assert request["name"] == request["type"] == f"{TASKS}.hold"
        assert (request["args"], request["kwargs"]) == ([key], {"timeout": 20})
        assert request["hostname"] == NODE
        assert request["worker_pid"] == worker.process.pid  # --sync: the worker runs it
        assert request["acknowledged"] is False  # acknowledged once its outcome is stored
        assert isinstance(request["time_start"], float)
        assert request["delivery_info"]["routing_key"] == app.conf.task_default_queue
        # From Python, as Flower asks; safe=True gives reprs instead of the arguments.
        assert inspect().active() == {NODE: active}
        (safe,) = inspect().active(safe=True)[NODE]
        assert (safe["args"], safe["kwargs"]) == (repr((key,)), repr({"timeout": 20}))
    finally:
        release(redis_client, key)
    assert running.get(timeout=TIMEOUT) == "released"
    wait_until(lambda: inspect().active() == {NODE: []}, "the task to leave active")


def test_inspect_stats(worker: RunningWorker) -> None:
    before = inspect().stats()[NODE]["total"].get(f"{TASKS}.add", 0)
    assert cw_tasks.add.delay(20, 22).get(timeout=TIMEOUT) == 42

    def counted() -> bool:  # the result is stored a moment before the worker counts it
        return bool(inspect().stats()[NODE]["total"].get(f"{TASKS}.add") == before + 1)

    wait_until(counted, "the worker to count the task")
    stats = cli_json("inspect", "stats")[NODE]
    assert stats["pid"] == worker.process.pid
    assert stats["total"][f"{TASKS}.add"] == before + 1
    assert stats["pool"]["max-concurrency"] == 1
    assert stats["pool"]["implementation"] == "django_ray.runners.sync:SyncRunner"
    assert stats["prefetch_count"] == 1
    assert stats["broker"]["transport"] == "redis" and "password" not in stats["broker"]
    assert isinstance(stats["uptime"], int) and stats["uptime"] >= 0
    assert int(stats["clock"]) > 0
    assert isinstance(stats["rusage"]["maxrss"], int)
    assert stats["django_ray"]["mode"] == "sync"
    assert stats["django_ray"]["worker_id"] == f"cw-redis-{RUN}"


def test_cli_control_revoke(worker: RunningWorker, redis_client: redis.Redis) -> None:
    key = unique("cli-revoked")
    # Due in 8 s: the revoke (a `celery` command, seconds to start) arrives well before.
    parked = cw_tasks.record_run.apply_async((key,), countdown=8)
    reply = cli_json("control", "revoke", parked.id)
    assert reply == [{NODE: {"ok": f"tasks {parked.id} flagged as revoked"}}]  # control: a list
    with pytest.raises(Exception, match="revoked") as info:
        parked.get(timeout=TIMEOUT + 8)  # told when the message comes up
    assert type(info.value).__name__ == "TaskRevokedError"
    assert redis_client.hgetall(f"cw:runs:{key}") == {}


def test_commands_we_do_not_answer_get_no_reply(worker: RunningWorker) -> None:
    # A reply would mislead Celery's tools (e.g. a pool we do not have to grow).
    assert app.control.broadcast("pool_grow", destination=[NODE], reply=True, timeout=1) == []


@pytest.fixture
def own_worker(redis_client: redis.Redis, django_db_setup: None) -> Iterator[RunningWorker]:
    """A worker of its own, on a queue of its own: the test stops it."""
    queue = f"cw_shutdown_{RUN}"
    purge_redis_queue(redis_client, queue)
    env = interop_env(REDIS_URL, queue)
    with django_ray_worker(f"cw-shutdown-{RUN}", [queue], **env) as running:
        yield running


def test_cli_control_shutdown_finishes_running_tasks_then_exits_0(
    own_worker: RunningWorker, redis_client: redis.Redis
) -> None:
    node, queue = node_name(f"cw-shutdown-{RUN}"), f"cw_shutdown_{RUN}"
    key = unique("shutdown")
    running = cw_tasks.hold.apply_async((key,), queue=queue)
    hold_started(redis_client, key)
    assert cli_json("control", "shutdown", node=node) == [{node: {"ok": "shutting down"}}]
    own_worker.wait_for("Got shutdown from remote")
    queued = cw_tasks.add.apply_async((1, 2), queue=queue)  # not taken: the worker is stopping
    assert own_worker.process.poll() is None  # the running task holds it
    release(redis_client, key)
    assert running.get(timeout=TIMEOUT) == "released"
    wait_until(lambda: own_worker.process.poll() is not None, "the worker to exit", timeout=15)
    assert own_worker.process.returncode == 0, own_worker.output()
    assert "stopped after 1 task(s)" in own_worker.output()
    assert queued.state == "PENDING"  # still on the queue for the next worker
    assert redis_client.llen(queue) == 1
    purge_redis_queue(redis_client, queue)


@pytest.mark.rabbitmq
def test_inspect_and_shutdown_over_rabbitmq(
    redis_client: redis.Redis, django_db_setup: None
) -> None:
    url = require_rabbitmq()
    client = client_app(url)
    worker_id, queue = f"cw-amqp-inspect-{RUN}", f"cw_amqp_inspect_{RUN}"
    node = node_name(worker_id)
    try:
        with django_ray_worker(worker_id, [queue], **interop_env(url, queue)) as running:
            assert cli_json("inspect", "ping", node=node, broker=url) == {node: {"ok": "pong"}}
            assert f"{TASKS}.add" in inspect(node, client).registered()[node]
            assert inspect(node, client).active() == {node: []}
            assert inspect(node, client).stats()[node]["broker"]["transport"] == "amqp"
            assert client.control.shutdown(destination=[node], reply=True, timeout=5) == [
                {node: {"ok": "shutting down"}}
            ]
            wait_until(lambda: running.process.poll() is not None, "the worker to exit")
            assert running.process.returncode == 0, running.output()
    finally:
        with client.connection_for_write() as connection:
            connection.default_channel.queue_delete(queue)
        client.close()
