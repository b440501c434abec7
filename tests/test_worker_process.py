"""The worker as a real process: signals, draining, and what a stopped worker leaves behind."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.tasks import TaskResultStatus

from django_ray.models import TaskRecord, TaskStatus
from tests import tasks
from tests.conftest import run_worker, worker_command, worker_env
from tests.inprocess import queue_size
from tests.processes import Process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


class WorkerProcess(Process):
    """``django_ray_worker`` in a subprocess, its log collected on a thread."""

    def __init__(self, *args: str) -> None:
        super().__init__(worker_command(*args), worker_env())


@pytest.fixture
def spawn() -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(*args: str) -> WorkerProcess:
        process = WorkerProcess(*args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.django_db(transaction=True)
def test_a_signal_drains_the_worker(
    broker_url: str,
    queue: str,
    tmp_path: Path,
    signum: int,
    spawn: Callable[..., WorkerProcess],
) -> None:
    done = tmp_path / "done"
    running = tasks.slow_first_attempt.using(queue_name=queue, priority=10).enqueue(2.5, str(done))
    waiting = tasks.add.using(queue_name=queue).enqueue(1, 2)

    worker = spawn(f"--queue={queue}", "--sync", "--worker-id=draining")
    worker.wait_for(done.with_suffix(".started").exists, "the task to start")
    worker.signal(signum)
    assert worker.wait() == 0, worker.log

    assert done.read_text() == "1"  # the running task finished
    running.refresh()
    assert (running.status, running.return_value) == (TaskResultStatus.SUCCESSFUL, 1)
    assert running.worker_ids == ["draining"]
    assert f"Received {signal.Signals(signum).name}" in worker.log
    # No new message was taken after the signal: the next task waits for another worker.
    waiting.refresh()
    assert waiting.status == TaskResultStatus.READY
    assert queue_size(queue) == 1


@pytest.mark.parametrize(
    "broker_url", ["django", pytest.param("redis", marks=pytest.mark.redis)], indirect=True
)
@pytest.mark.django_db(transaction=True)
def test_a_second_signal_stops_at_once_and_the_message_is_redelivered(
    broker_url: str, queue: str, tmp_path: Path, spawn: Callable[..., WorkerProcess]
) -> None:
    done = tmp_path / "done"
    result = tasks.slow_first_attempt.using(queue_name=queue).enqueue(60, str(done))

    first = spawn(f"--queue={queue}", "--sync", "--worker-id=first")
    first.wait_for(done.with_suffix(".started").exists, "the task to start")
    first.signal(signal.SIGTERM)
    first.wait_for(lambda: "Received SIGTERM" in first.log, "the first signal to be handled")
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=15) == 1, first.log
    assert "Stopping at once" in first.log
    assert not done.exists()  # the task was cut short
    record = TaskRecord.objects.get(pk=result.id)
    assert record.status == TaskStatus.READY  # not left RUNNING
    assert record.worker_ids == ["first"]

    # The message went back to the broker: the next worker runs it (attempt 2, no sleep).
    second = run_worker(f"--queue={queue}", "--sync", "--batch", "--worker-id=second", timeout=60)
    assert second.returncode == 0, second.stdout + second.stderr
    result.refresh()
    assert (result.status, result.return_value) == (TaskResultStatus.SUCCESSFUL, 2)
    assert result.worker_ids == ["first", "second"]
    assert result.started_at < result.last_attempted_at
    assert done.read_text() == "2"
    assert queue_size(queue) == 0


@pytest.mark.django_db(transaction=True)
def test_batch_worker_process_runs_and_exits_zero(broker_url: str, queue: str) -> None:
    results = [tasks.add.using(queue_name=queue).enqueue(i, i) for i in range(3)]
    failing = tasks.fail.using(queue_name=queue).enqueue("boom")
    done = run_worker(f"--queue={queue}", "--sync", "--batch", timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    for i, result in enumerate(results):
        result.refresh()
        assert (result.status, result.return_value) == (TaskResultStatus.SUCCESSFUL, 2 * i)
    failing.refresh()
    assert failing.status == TaskResultStatus.FAILED
    assert failing.errors[0].exception_class_path == "tests.tasks.CustomError"


def test_ray_modes_are_parsed() -> None:
    # --local / --cluster / the default job mode exist as arguments; without a reachable
    # Ray they fail with a clear message, never a traceback.
    done = run_worker("--cluster=127.0.0.1:1", "--batch", "--queue=unused", timeout=60)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert "CommandError" in done.stderr and "127.0.0.1:1" in done.stderr, done.stderr
