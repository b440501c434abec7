"""Failure of Ray itself: a ``--cluster`` worker whose Ray head dies loses nothing.

The worker runs as a real subprocess against a Ray head of this test's own (the session's
head is shared and must stay up). The head is stopped while a task runs, then started again
on the same ports with the same token, as a crashed head node comes back; SIGTERM then
stops the worker as usual.
"""

from __future__ import annotations

import signal
import subprocess
import uuid
from pathlib import Path

import pytest
from django.tasks import TaskResult, TaskResultStatus

from tests import tasks
from tests.conftest import worker_command, worker_env
from tests.inprocess import queue_size
from tests.raycluster import RayHead, ray_head_fixture
from tests.waiting import wait_until

pytestmark = [pytest.mark.ray, pytest.mark.slow]


own_head = ray_head_fixture(scope="function", name="own_head")


def finished(result: TaskResult) -> bool:
    result.refresh()
    return result.is_finished


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
def test_worker_gives_tasks_back_and_reconnects_when_ray_head_dies(
    broker_url: str, own_head: RayHead, tmp_path: Path
) -> None:
    queue = f"ray-loss-{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "slow"
    started = marker.with_suffix(".started")
    running = tasks.slow_first_attempt.using(queue_name=queue).enqueue(60, str(marker))
    log_path = tmp_path / "worker.log"

    def log() -> str:
        return log_path.read_text(errors="replace")

    command = worker_command(f"--queue={queue}", f"--cluster={own_head.gcs_address}")
    with log_path.open("wb") as out:
        worker = subprocess.Popen(
            command, env=worker_env(**own_head.env()), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_until(started.exists, "the first attempt to start", timeout=60, details=log)
        own_head.stop()

        # The attempt is not recorded as finished, its message waits in the broker again,
        # and the worker keeps trying to reconnect instead of exiting.
        wait_until(
            lambda: "Reconnecting to Ray failed" in log(),
            "a failed reconnection",
            timeout=30,
            details=log,
        )
        assert worker.poll() is None, log()
        running.refresh()
        # SIGTERM ended the attempt unrecorded: READY again (RUNNING had it been SIGKILLed).
        assert running.status in (TaskResultStatus.READY, TaskResultStatus.RUNNING), log()
        assert running.errors == []
        assert queue_size(queue) == 1

        own_head.restart()
        wait_until(
            lambda: "Reconnected to Ray" in log(), "the reconnection", timeout=60, details=log
        )
        after = tasks.add.using(queue_name=queue).enqueue(2, 3)
        wait_until(
            lambda: finished(running) and finished(after), "both tasks", timeout=60, details=log
        )
        # Still stoppable as usual: reconnecting kept the worker's own SIGTERM handler.
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()

    text = log()
    assert worker.returncode == 0, text[-3000:]
    running.refresh()
    after.refresh()
    # Redelivered and run again by the same worker: two attempts, no error recorded.
    assert running.status == TaskResultStatus.SUCCESSFUL, running.errors
    assert running.return_value == 2
    assert running.attempts == 2
    assert running.errors == []
    assert after.status == TaskResultStatus.SUCCESSFUL
    assert after.return_value == 5
    assert started.read_text() == "2"
    assert "Lost the connection to Ray" in text
    assert "returning 1 message(s) to the broker" in text
    assert "next try in" in text
    assert "Received SIGTERM" in text
    assert "stopped after 2 task(s)" in text
    assert own_head.token not in text
