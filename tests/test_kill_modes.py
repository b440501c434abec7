"""kill -9 the worker three times mid-batch, in every mode: nothing lost, nothing re-run.

A batch of short tasks (``tests.tasks.journal``: each appends ``start``/``end`` lines to a
file) runs through a worker subprocess with a 3 s lease (``VISIBILITY_TIMEOUT``). Three
times, while tasks run, the worker gets SIGKILL and a new one is started; the fourth one
finishes the batch. Then:

* every task is SUCCESSFUL;
* a task whose body finished never ran again: only a task that was running at a kill may
  have started (and even finished) twice, and it still has one record;
* a killed worker's work comes back: each task it was running runs again (or is found
  finished by the Ray job that outlived the worker); the figure printed per kill is the time
  until the last of them started again: the 3 s lease, the replacement worker's start, and
  on ``django://`` the backlog ahead of it (a message given back is ordered by when its
  lease ended; on Redis it goes back to the head of the queue).

In ``--local`` mode the worker's own Ray instance dies with it (the whole session gets
SIGKILL, as when a container is killed); in ``--cluster`` and Ray Job mode only the worker
process dies and the cluster (and a job already running on it) lives on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from django_ray.models import TaskRecord
from tests.conftest import worker_command, worker_env
from tests.inprocess import held, queue_size
from tests.journal import enqueue_batch, statuses
from tests.raycluster import ray_head_fixture, session_pids
from tests.runners.test_contract import mode_arguments
from tests.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

ray_head = ray_head_fixture()
LEASE = "3"
KILLS = 3
# Seconds from a kill until the work it interrupted runs again: the 3 s lease, then the
# backlog ahead of it (a message given back waits behind the queue's others), the next
# workers' start (a local Ray takes seconds) and the kills that follow it.
RECOVERY_LIMIT = 120
# In --local mode the replacement first starts a Ray of its own (15 s and more on a loaded
# 2-core machine), once per kill: the figure is mostly that start-up.
RECOVERY_LIMITS = {"local": 240}


class Worker:
    """A worker subprocess in a session of its own, logging to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                worker_command(*args), env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def consuming(self) -> bool:
        """Whether it has started consuming (its SIGTERM handler is installed by then)."""
        self.check_alive()
        return " consuming " in self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited ({self.proc.returncode}):\n{self.log()}")

    def kill(self, *, session: bool) -> None:
        """SIGKILL the worker (and, with ``session``, every process it started)."""
        targets = session_pids(self.proc.pid) if session else [self.proc.pid]
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def cleanup(self) -> None:
        """Kill whatever is left of the session this test started."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        for pid in session_pids(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def running_on(ids: list[str], worker_id: str) -> set[str]:
    rows = TaskRecord.objects.filter(pk__in=ids, status="RUNNING").values_list("pk", "worker_ids")
    # A Ray job's attempt is recorded as "<worker id>/job".
    return {pk for pk, workers in rows if workers and ran_on(workers[-1], worker_id)}


def ran_on(attempt: str, worker_id: str) -> bool:
    return attempt.split("/", 1)[0] == worker_id


def run_batch_with_kills(
    mode: str, broker_url: str, request: pytest.FixtureRequest, tmp_path: Path, count: int,
    seconds: float,
) -> None:  # fmt: skip
    args, mode_env = mode_arguments(mode, request)
    batch = enqueue_batch(f"kill-{mode}-{uuid.uuid4().hex[:8]}", tmp_path, count, seconds)
    queue, ids, label_of = batch.queue, batch.ids, batch.label_of
    env = worker_env(**mode_env, DJANGO_RAY_VISIBILITY_TIMEOUT=LEASE)
    workers: list[Worker] = []
    # When each worker was killed, its id, and the tasks finished just before.
    kills: list[tuple[float, str, set[str]]] = []
    started = time.monotonic()

    def start(name: str) -> Worker:
        worker = Worker([f"--queue={queue}", f"--worker-id={name}", *args], env,
                        tmp_path / f"{name}.log")  # fmt: skip
        workers.append(worker)
        return worker

    try:
        worker = start("w0")
        for kill in range(KILLS):
            name = f"w{kill}"
            floor = statuses(ids)["SUCCESSFUL"]

            def busy(worker: Worker = worker, name: str = name, floor: int = floor) -> set[str]:
                worker.check_alive()
                # Mid-batch: after the first, each has finished something, and runs tasks.
                progressed = name == "w0" or statuses(ids)["SUCCESSFUL"] > floor
                return running_on(ids, name) if progressed else set()

            # A new worker is a new Ray job: on a loaded machine its Ray processes take a
            # while to start (each sets the project up) once the killed job's are gone.
            wait_until(busy, f"worker {name} to run tasks", timeout=180, interval=0.1,
                                 details=worker.log)  # fmt: skip
            done = set(
                TaskRecord.objects.filter(pk__in=ids, status="SUCCESSFUL").values_list(
                    "pk", flat=True
                )
            )
            worker.kill(session=mode == "local")
            kills.append((time.time(), name, done))
            worker = start(f"w{kill + 1}")  # takes the work back once the leases run out

        def all_done(worker: Worker = worker) -> bool:
            worker.check_alive()
            return statuses(ids)["SUCCESSFUL"] == count

        wait_until(all_done, "the whole batch", timeout=240, interval=0.2, details=worker.log)
        # The batch may be finished by the jobs a killed job-mode worker left running, before
        # the last worker is up: stop it only once it runs (a process still starting has no
        # SIGTERM handler yet, and dies of the signal).
        wait_until(worker.consuming, "the last worker to start", timeout=120, details=worker.log)
        # Messages the killed workers held come back after their lease; found finished, each
        # is dropped (acknowledged) by the last worker.
        wait_until(
            lambda: worker.consuming() and queue_size(queue) == 0 and held(queue) == 0,
            "the given-back messages to be dropped", timeout=120, details=worker.log,
        )  # fmt: skip
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.proc.wait(timeout=60) == 0, worker.log()
    finally:
        for each in workers:
            each.cleanup()
    total = time.monotonic() - started

    records = batch.records()
    assert {r.status for r in records.values()} == {"SUCCESSFUL"}
    assert all(records[i].return_value == label_of[i] for i in ids)
    events = batch.events()
    starts = Counter(label for kind, label, _ in events if kind == "start")
    ends = Counter(label for kind, label, _ in events if kind == "end")
    # What a kill interrupted: delivered to the killed worker (it made an attempt) and not
    # finished when it died (a body that ended just before its record was written included).
    interrupted_at = [
        {label_of[pk] for pk, record in records.items()
         if pk not in done and any(ran_on(w, name) for w in record.worker_ids)}
        for _, name, done in kills
    ]  # fmt: skip
    interrupted = set().union(*interrupted_at)
    # Every body finished; only what a kill interrupted ran more than once.
    assert set(ends) == set(label_of.values())
    assert {label for label, n in starts.items() if n > 1} <= interrupted, (starts, interrupted)
    assert {label for label, n in ends.items() if n > 1} <= interrupted, (ends, interrupted)
    for task_id, record in records.items():
        if label_of[task_id] not in interrupted:
            assert len(record.worker_ids) == 1, (task_id, record.worker_ids)
    assert queue_size(queue) == 0
    assert queue_size(f"{queue}.dead-letter") == 0
    # Each killed worker's work was back (started again, or finished by a Ray job that
    # outlived its worker) within RECOVERY_LIMIT: the lease, a new worker's start, and the
    # backlog ahead of it (a message given back waits behind the queue's other messages).
    recoveries = []
    for (killed_at, _, _), labels in zip(kills, interrupted_at, strict=True):
        # No line after the kill: a Ray job that outlived its worker had just finished it.
        back = [
            min((t for _, label, t in events if label == each and t > killed_at), default=killed_at)
            - killed_at
            for each in labels
        ]
        recoveries.append(max(back, default=0.0))
    assert max(recoveries) < RECOVERY_LIMITS.get(mode, RECOVERY_LIMIT), recoveries
    print(
        f"\nkill -9 [{mode}, {broker_url.split(':')[0]}]: {count} tasks of {seconds} s, "
        f"{KILLS} kills, {len(interrupted)} tasks interrupted; work back "
        f"{', '.join(f'{s:.1f}' for s in recoveries)} s after each kill (lease {LEASE} s); "
        f"bodies started {sum(starts.values())} times, finished {sum(ends.values())} times; "
        f"total {total:.1f} s"
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "broker_url", ["django", pytest.param("redis", marks=pytest.mark.redis)], indirect=True
)
def test_kill_9_sync(broker_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    run_batch_with_kills("sync", broker_url, request, tmp_path, count=20, seconds=0.4)


@pytest.mark.ray
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", ["local", "cluster", "job"])
def test_kill_9_ray_modes(
    mode: str, broker_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    run_batch_with_kills(mode, broker_url, request, tmp_path, count=12, seconds=0.4)


@pytest.mark.spread
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "broker_url", ["django", pytest.param("redis", marks=pytest.mark.redis)], indirect=True
)
@pytest.mark.timeout(180)
def test_with_the_default_lease_a_killed_workers_task_runs_again_within_a_minute(
    broker_url: str, tmp_path: Path
) -> None:
    """No lease set (``VISIBILITY_TIMEOUT`` 30 s, the default): worker ``a`` gets SIGKILL
    while its task runs; worker ``b``, already running as a deployment's other worker would
    be, runs the task again within 60 s of the death (the lease, then ``b``'s next look)."""
    batch = enqueue_batch(f"lease-{uuid.uuid4().hex[:8]}", tmp_path, 1, 2.0)
    queue, ids = batch.queue, batch.ids
    env = worker_env()
    env.pop("DJANGO_RAY_VISIBILITY_TIMEOUT", None)  # the default lease
    a = Worker([f"--queue={queue}", "--worker-id=a", "--sync"], env, tmp_path / "a.log")
    b: Worker | None = None
    try:
        wait_until(lambda: running_on(ids, "a"), "worker a to run the task", timeout=60,
                   details=a.log)  # fmt: skip
        b = Worker([f"--queue={queue}", "--worker-id=b", "--sync"], env, tmp_path / "b.log")
        wait_until(b.consuming, "worker b to start", timeout=60, details=b.log)
        a.kill(session=False)
        killed_at = time.time()
        live = b
        wait_until(lambda: statuses(ids)["SUCCESSFUL"] == 1, "the task to run again",
                   timeout=120, interval=0.2, details=live.log)  # fmt: skip
        live.proc.send_signal(signal.SIGTERM)
        assert live.proc.wait(timeout=60) == 0, live.log()
    finally:
        a.cleanup()
        if b is not None:
            b.cleanup()
    again = min(t for kind, _, t in batch.events() if kind == "start" and t > killed_at)
    back = again - killed_at
    assert back < 60, back
    (record,) = batch.records().values()
    assert record.worker_ids == ["a", "b"]
    assert queue_size(queue) == 0 and held(queue) == 0
    print(f"\nkill -9, default lease, {broker_url.split(':')[0]}: ran again {back:.1f} s later")
