"""Faults with a defined outcome: a killed worker, a restarted broker.

* A worker killed with SIGKILL mid-task loses nothing: after the visibility timeout the
  next worker runs the message; the record shows both attempts' worker ids.
* A broker that goes away and comes back: the worker reconnects and keeps consuming.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.tasks import TaskResultStatus

from django_ray.models import TaskRecord
from django_ray.transport import Broker
from tests import tasks
from tests.conftest import run_worker, worker_command, worker_env
from tests.inprocess import queue_size
from tests.services import ALL_BROKERS
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

LEASE_2S = {"DJANGO_RAY_VISIBILITY_TIMEOUT": "2"}


def kill_mid_task(queue: str, task_id: str) -> None:
    """Start a ``--sync`` worker "doomed" (2 s lease) on ``queue``; SIGKILL it once it runs
    ``task_id``."""
    first = subprocess.Popen(
        worker_command(f"--queue={queue}", "--sync", "--worker-id=doomed"),
        env=worker_env(**LEASE_2S), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(
            lambda: TaskRecord.objects.filter(pk=task_id, status="RUNNING").exists(),
            "the first worker to start the task", timeout=30,
        )  # fmt: skip
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait(timeout=10)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("broker_url", "inside_restore"),
    [("django", False), ("redis", False), ("redis", True)],
    indirect=["broker_url"],
)
def test_a_killed_worker_loses_nothing(
    broker_url: str, inside_restore: bool, tmp_path: Path
) -> None:
    queue = f"kill-{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "done"
    result = tasks.sleep_then_touch.using(queue_name=queue).enqueue(3, str(marker))
    kill_mid_task(queue, result.id)
    assert not marker.exists()
    if inside_restore:
        # Killed while restoring expired deliveries (Redis): it leaves the restore lock held,
        # for as long as the lock's expiry says; the next worker waits that out.
        broker = Broker(broker_url)
        try:
            channel: Any = broker.connection.default_channel
            assert channel.client.set(
                channel.unacked_mutex_key, "killed", ex=channel.unacked_mutex_expire, nx=True
            )
        finally:
            broker.close()

    proc = run_worker(f"--queue={queue}", "--sync", "--max-tasks=1", "--worker-id=survivor",
                      timeout=60, **LEASE_2S)  # fmt: skip

    assert proc.returncode == 0, proc.stderr[-2000:]
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.worker_ids == ["doomed", "survivor"]
    assert marker.exists()


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
def test_a_killed_workers_task_comes_back_while_the_queue_stays_busy(
    broker_url: str, tmp_path: Path
) -> None:
    """kombu puts expired Redis deliveries back only when a poll finds the queue empty; the
    worker also looks every few seconds, so a dead worker's task does not wait for the
    backlog to drain (in a busy deployment it might never drain)."""
    from tests.journal import enqueue_batch

    queue = f"busy-{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "done"
    lost = tasks.sleep_then_touch.using(queue_name=queue).enqueue(1, str(marker))
    kill_mid_task(queue, lost.id)
    backlog = enqueue_batch(queue, tmp_path, 40, 0.3)  # 12 s of work, never a pause

    proc = run_worker(f"--queue={queue}", "--sync", "--batch", "--worker-id=survivor",
                      timeout=120, **LEASE_2S)  # fmt: skip

    assert proc.returncode == 0, proc.stderr[-2000:]
    lost.refresh()
    assert lost.status == TaskResultStatus.SUCCESSFUL, proc.stderr[-2000:]
    assert lost.worker_ids == ["doomed", "survivor"]
    backlog_starts = [t for kind, _, t in backlog.events() if kind == "start"]
    assert len(backlog_starts) == 40
    # It ran again while the backlog still ran, not once the queue was empty.
    assert lost.last_attempted_at is not None
    assert lost.last_attempted_at.timestamp() < max(backlog_starts)
    assert queue_size(queue) == 0


@pytest.mark.django_db(transaction=True)
def test_worker_survives_a_broker_restart(
    private_redis: Any, settings: Any, tmp_path: Path
) -> None:
    settings.DJANGO_RAY = {**settings.DJANGO_RAY, "BROKER_URL": private_redis.url}
    queue = f"restart-{uuid.uuid4().hex[:8]}"
    env = worker_env()
    env["DJANGO_RAY_BROKER"] = private_redis.url
    log_path = tmp_path / "worker.log"

    def log() -> str:
        return log_path.read_text(errors="replace")

    with log_path.open("wb") as out:
        worker = subprocess.Popen(
            worker_command(f"--queue={queue}", "--sync", "--max-tasks=2"),
            env=env, stdout=subprocess.DEVNULL, stderr=out,
        )  # fmt: skip
    try:
        before = tasks.add.using(queue_name=queue).enqueue(1, 2)
        wait_until(lambda: _finished(before.id), "the task sent before the restart", timeout=30)

        private_redis.stop()
        # The worker notices the broker is gone, and does not exit.
        wait_until(lambda: "Broker connection lost" in log(), "the worker to notice", details=log)
        assert worker.poll() is None, "the worker died with the broker"
        private_redis.start()

        after = tasks.add.using(queue_name=queue).enqueue(3, 4)
        wait_until(lambda: _finished(after.id), "the task sent after the restart", timeout=60)
        assert worker.wait(timeout=30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
    assert "Reconnected to the broker" in log()
    after.refresh()
    assert after.return_value == 7


def _finished(task_id: str) -> bool:
    return TaskRecord.objects.filter(pk=task_id, status="SUCCESSFUL").exists()


@pytest.mark.django_db(transaction=True)
@ALL_BROKERS
def test_a_message_that_kills_every_worker_is_dead_lettered(broker_url: str, queue: str) -> None:
    result = tasks.crash_always.using(queue_name=queue).enqueue()
    env = {"DJANGO_RAY_VISIBILITY_TIMEOUT": "1", "DJANGO_RAY_MAX_DELIVERIES": "3"}
    exits = []

    def next_worker_finishes_it() -> bool:
        proc = run_worker(f"--queue={queue}", "--sync", "--batch", timeout=60, **env)
        exits.append(proc.returncode)
        result.refresh()
        return result.status == TaskResultStatus.FAILED

    wait_until(next_worker_finishes_it, "the crash-looping message to be dead-lettered", timeout=60)

    # Three workers died starting it (a batch worker may also find it still invisible and
    # exit 0); the fourth delivery was refused, and that worker lived.
    assert exits.count(17) == 3
    assert exits[-1] == 0
    assert len(result.worker_ids) == 3
    error = result.errors[-1]
    assert error.exception_class_path == "django_ray.exceptions.DeliveryLimitExceeded"
    assert queue_size(f"{queue}.dead-letter") == 1
    assert queue_size(queue) == 0


def start_worker(queue: str, worker_id: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        worker_command(f"--queue={queue}", "--sync", "--max-tasks=1", f"--worker-id={worker_id}"),
        env=worker_env(**env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def running_on(result: Any, worker_id: str) -> bool:
    record = TaskRecord.objects.filter(pk=result.id, status="RUNNING").first()
    return record is not None and worker_id in record.worker_ids


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("broker_url", ["django", "redis"], indirect=True)
def test_a_task_longer_than_its_lease_is_not_delivered_again_while_its_worker_lives(
    broker_url: str, queue: str
) -> None:
    result = tasks.sleep_then_touch.using(queue_name=queue).enqueue(4, os.devnull)
    env = {"DJANGO_RAY_VISIBILITY_TIMEOUT": "1"}  # a 1 s lease, renewed by the live worker
    first = start_worker(queue, "holder", **env)
    second = None
    try:
        wait_until(lambda: running_on(result, "holder"), "the first worker to start it", timeout=30)
        second = start_worker(queue, "idle", **env)
        _, first_log = first.communicate(timeout=60)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)

    assert first.returncode == 0, first_log[-2000:]
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.worker_ids == ["holder"]  # never delivered to the other worker
    assert queue_size(queue) == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("broker_url", ["django", "redis"], indirect=True)
def test_a_late_outcome_never_overwrites_a_finished_record(broker_url: str, queue: str) -> None:
    # The first worker freezes mid-attempt (a stopped VM, a long GC pause) past its lease:
    # the message is delivered again and the second worker's attempt succeeds; then the
    # first worker thaws and its attempt fails, late.
    result = tasks.slow_to_fail_first.using(queue_name=queue).enqueue(1)
    env = {"DJANGO_RAY_VISIBILITY_TIMEOUT": "1"}
    first = start_worker(queue, "frozen", **env)
    try:
        wait_until(lambda: running_on(result, "frozen"), "the first worker to start it", timeout=30)
        first.send_signal(signal.SIGSTOP)
        second = run_worker(
            f"--queue={queue}", "--sync", "--max-tasks=1", "--worker-id=fast", timeout=60, **env
        )
        first.send_signal(signal.SIGCONT)
        _, first_log = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGCONT)
            first.kill()
            first.wait(timeout=10)

    assert second.returncode == 0, second.stderr[-2000:]
    assert first.returncode == 0, first_log[-2000:]
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 2
    assert result.worker_ids == ["frozen", "fast"]
    assert result.errors == []  # the late failure was dropped, not recorded
    assert "outcome is dropped" in first_log
    assert queue_size(queue) == 0
