"""The worker, in-process: through ``call_command`` and the ``Worker`` class."""

from __future__ import annotations

import json
import logging
import pickle
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.tasks import TaskResultStatus
from django.utils import timezone

from django_ray.exceptions import ModeNotAvailable
from django_ray.message import TaskMessage, new_task_id
from django_ray.models import TaskRecord, TaskStatus
from django_ray.runners import MODES, get_runner_class
from django_ray.runners.sync import SyncRunner
from django_ray.transport import Broker
from tests import tasks
from tests.inprocess import WORKER_ID, publish_raw, queue_size, run_worker_inprocess
from tests.services import ALL_BROKERS

pytestmark = pytest.mark.timeout(60)


def worker(*args: str) -> None:
    call_command("django_ray_worker", "--sync", *args)


def status(result: Any) -> TaskResultStatus:
    result.refresh()
    return result.status


# -- registry-only execution -------------------------------------------------------------


def publish(queue: str, name: str, *args: Any, **headers: Any) -> str:
    message = TaskMessage(id=new_task_id(), task=name, args=args, queue=queue, **headers)
    Broker().publish(message)
    return message.id


@pytest.mark.django_db
def test_only_registered_tasks_run(broker_url: str, queue: str, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    refused = {
        "os.system": publish(queue, "os.system", f"touch {canary}"),
        "builtins.eval": publish(queue, "builtins.eval", "1"),
        "antigravity.geohash": publish(queue, "antigravity.geohash", 1, 2, b"x".decode()),
        "tests.services.require_redis": publish(queue, "tests.services.require_redis"),
        "tests.tasks.Path": publish(queue, "tests.tasks.Path", str(canary)),
        "tests.tasks.missing": publish(queue, "tests.tasks.missing"),
        "tests.tasks.add.func": publish(queue, "tests.tasks.add.func", 1, 2),
    }
    good = publish(queue, "tests.tasks.add", 1, 2)
    worker(f"--queue={queue}", "--batch")

    assert not canary.exists()
    assert "antigravity" not in sys.modules  # a module a message names is never imported
    for name, task_id in refused.items():
        record = TaskRecord.objects.get(pk=task_id)
        assert record.status == TaskStatus.FAILED, name
        assert record.task_name == name
        assert record.last_error["exception_class_path"] == "django_ray.exceptions.NotRegistered"
        assert "is not registered" in record.last_error["exc_message"][0]
        assert record.worker_ids == []  # never started
    good_record = TaskRecord.objects.get(pk=good)
    assert (good_record.status, good_record.return_value) == (TaskStatus.SUCCESSFUL, 3)
    assert queue_size(queue) == 0


# -- acknowledgement ---------------------------------------------------------------------


class AckSpy:
    """Wrap a kombu message; note the record's state when the worker acknowledges it."""

    def __init__(self, raw: Any, seen: list[tuple[str, Any]]) -> None:
        self.raw, self.seen = raw, seen

    def ack(self) -> None:
        record = TaskRecord.objects.get(pk=self.raw.headers["id"])
        self.seen.append((record.status, record.return_value))
        self.seen.append(("on the broker", queue_size(self.raw.delivery_info["routing_key"])))
        self.raw.ack()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


class SpyRunner(SyncRunner):
    def __init__(self, seen: list[tuple[str, Any]]) -> None:
        super().__init__(worker_id=WORKER_ID)
        self.seen = seen

    def submit(self, message: TaskMessage, delivery: Any) -> None:
        super().submit(message, AckSpy(delivery, self.seen))


@pytest.mark.django_db
def test_message_is_acknowledged_after_the_outcome_is_stored(broker_url: str, queue: str) -> None:
    tasks.add.using(queue_name=queue).enqueue(20, 22)
    seen: list[tuple[str, Any]] = []
    run_worker_inprocess([queue], runner=SpyRunner(seen))
    assert seen == [(TaskStatus.SUCCESSFUL, 42), ("on the broker", 1)]
    assert queue_size(queue) == 0


@pytest.mark.django_db
def test_a_finished_task_delivered_again_is_not_run_again(broker_url: str, queue: str) -> None:
    result = tasks.add.using(queue_name=queue).enqueue(1, 2)
    run_worker_inprocess([queue])
    raw = Broker()
    raw.publish(TaskMessage(id=result.id, task="tests.tasks.add", args=(1, 2), queue=queue))
    run_worker_inprocess([queue], worker_id="second")
    record = TaskRecord.objects.get(pk=result.id)
    assert record.worker_ids == [WORKER_ID]
    assert queue_size(queue) == 0


# -- ordering and timing -------------------------------------------------------------------


@ALL_BROKERS
@pytest.mark.django_db(transaction=True)
def test_higher_priority_runs_first(broker_url: str, queue: str, tmp_path: Path) -> None:
    log = tmp_path / "order.txt"
    for priority in (-100, 0, 100, -50):  # one per Redis priority bucket
        tasks.record_order.using(queue_name=queue, priority=priority).enqueue(
            str(log), str(priority)
        )
    worker(f"--queue={queue}", "--batch")
    assert log.read_text().split() == ["100", "0", "-50", "-100"]


@ALL_BROKERS
@pytest.mark.django_db(transaction=True)
def test_run_after_is_never_early(broker_url: str, queue: str, tmp_path: Path) -> None:
    log = tmp_path / "order.txt"
    run_after = timezone.now() + timedelta(seconds=1.5)
    later = tasks.record_order.using(queue_name=queue, run_after=run_after, priority=50).enqueue(
        str(log), "later"
    )
    now = tasks.record_order.using(queue_name=queue).enqueue(str(log), "now")
    worker(f"--queue={queue}", "--batch")
    assert log.read_text().split() == ["now", "later"]
    later.refresh()
    assert later.status == TaskResultStatus.SUCCESSFUL
    assert later.started_at >= run_after
    assert status(now) == TaskResultStatus.SUCCESSFUL
    assert queue_size(queue) == 0


# -- queues and run modes ------------------------------------------------------------------


@pytest.mark.django_db
def test_only_the_given_queues_are_consumed(broker_url: str, queue: str) -> None:
    other = f"{queue}-b"
    third = f"{queue}-c"
    on_a = tasks.add.using(queue_name=queue).enqueue(1, 1)
    on_b = tasks.add.using(queue_name=other).enqueue(2, 2)
    on_c = tasks.add.using(queue_name=third).enqueue(3, 3)

    worker(f"--queue={queue}", "--batch")
    assert status(on_a) == TaskResultStatus.SUCCESSFUL
    assert (status(on_b), status(on_c)) == (TaskResultStatus.READY, TaskResultStatus.READY)
    assert (queue_size(other), queue_size(third)) == (1, 1)

    worker(f"--queues={other},{third}", "--batch")
    assert (status(on_b), status(on_c)) == (TaskResultStatus.SUCCESSFUL,) * 2

    again_b = tasks.add.using(queue_name=other).enqueue(1, 0)
    again_c = tasks.add.using(queue_name=third).enqueue(2, 0)
    worker(f"--queue={other}", f"--queue={third}", "--batch")
    assert (status(again_b), status(again_c)) == (TaskResultStatus.SUCCESSFUL,) * 2


@pytest.mark.django_db
def test_task_default_queue_is_honoured(broker_url: str) -> None:
    result = tasks.on_other_queue.enqueue("x")
    assert TaskRecord.objects.get(pk=result.id).queue == "other"
    worker(f"--queue=not-{result.id[:8]}", "--batch")
    assert status(result) == TaskResultStatus.READY
    worker("--queue=other", "--batch")
    assert (status(result), result.return_value) == (TaskResultStatus.SUCCESSFUL, "X")


@pytest.mark.django_db
def test_max_tasks_stops_after_n_tasks(broker_url: str, queue: str) -> None:
    results = [tasks.add.using(queue_name=queue).enqueue(i, i) for i in range(3)]
    worker(f"--queue={queue}", "--max-tasks=2", "--worker-id=max-2")  # exits without --batch
    statuses = sorted(str(status(r)) for r in results)
    assert statuses == ["READY", "SUCCESSFUL", "SUCCESSFUL"]
    assert queue_size(queue) == 1
    assert {tuple(TaskRecord.objects.get(pk=r.id).worker_ids) for r in results} == {
        ("max-2",), (),
    }  # fmt: skip


@pytest.mark.django_db
def test_batch_exits_when_the_queue_is_empty(broker_url: str, queue: str) -> None:
    worker(f"--queue={queue}", "--batch")  # nothing to do: returns
    results = [tasks.add.using(queue_name=queue).enqueue(i, 1) for i in range(3)]
    worker(f"--queue={queue}", "--batch")
    assert all(status(r) == TaskResultStatus.SUCCESSFUL for r in results)


@pytest.mark.parametrize(
    "args",
    [
        ["--worker-id=" + "x" * 65],
        ["--worker-id="],
        ["--max-tasks=0"],
        ["--concurrency=-1"],
    ],
)
def test_bad_arguments_are_refused(args: list[str]) -> None:
    with pytest.raises(CommandError):
        call_command("django_ray_worker", "--sync", "--batch", *args)


def test_only_one_mode_at_a_time() -> None:
    with pytest.raises(CommandError, match="not allowed with"):
        call_command("django_ray_worker", "--sync", "--local", "--batch")


# How the worker command selects each mode (no mode option: Ray Job mode).
MODE_ARGS = {
    "sync": ["--sync"],
    "local": ["--local"],
    "cluster": ["--cluster=127.0.0.1:6380"],
    "job": [],
}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_is_accepted_by_the_command_and_builds_its_runner(
    mode: str, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    """The command builds the runner MODES names for the mode, and hands it to the Worker."""
    from django_ray.management.commands import django_ray_worker

    settings.DJANGO_RAY = {**settings.DJANGO_RAY, "RAY_ADDRESS": "http://127.0.0.1:8265"}
    built: list[Any] = []

    class NoRun:  # the runner is built, never started: no Ray is needed
        def __init__(self, *, runner: Any, **options: Any) -> None:
            built.append(runner)

        def run(self) -> int:
            return 0

    monkeypatch.setattr(django_ray_worker, "Worker", NoRun)
    assert mode in MODE_ARGS, f"No worker command option selects the {mode!r} mode."
    call_command("django_ray_worker", *MODE_ARGS[mode], "--batch", "--worker-id=modes")
    [runner] = built
    assert type(runner) is get_runner_class(mode)
    assert f"{type(runner).__module__}:{type(runner).__qualname__}" == MODES[mode]
    assert (runner.mode, runner.worker_id) == (mode, "modes")


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ModeNotAvailable, match="Unknown execution mode 'bogus'"):
        get_runner_class("bogus")


# -- bad input --------------------------------------------------------------------------------

CANARY: list[str] = []


def _canary(label: str) -> None:
    CANARY.append(label)


class Trap:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_canary, ("unpickled",))


def bad_messages(queue: str) -> dict[str, dict[str, Any]]:
    """Messages a worker must survive, keyed by the id they carry."""
    ok = json.dumps([[1, 2], {}, {}])
    return {
        "unregistered": {"headers": {"task": "tests.tasks.nope", "id": "unregistered"}, "body": ok},
        "invalid-json": {"headers": {"task": "tests.tasks.add", "id": "invalid-json"}, "body": "{"},
        "protocol-v1": {
            "headers": {"task": "tests.tasks.add", "id": "protocol-v1"},
            "body": json.dumps({"task": "tests.tasks.add", "id": "protocol-v1", "args": [1, 2]}),
        },
        "two-items": {
            "headers": {"task": "tests.tasks.add", "id": "two-items"},
            "body": json.dumps([[1, 2], {}]),
        },
        "pickle": {
            "headers": {"task": "tests.tasks.add", "id": "pickle"},
            "body": pickle.dumps(((Trap(),), {}, {})),
            "content_type": "application/x-python-serialize",
            "content_encoding": "binary",
        },
        "os-system": {
            "headers": {"task": "os.system", "id": "os-system"},
            "body": json.dumps([["echo pwned"], {}, {}]),
        },
        "unknown-backend": {
            "headers": {
                "task": "tests.tasks.add",
                "id": "unknown-backend",
                "django_ray_backend": "no-such-alias",
            },
            "body": ok,
        },
        "no-id": {"headers": {"task": "tests.tasks.add"}, "body": ok},
        "no-headers": {"headers": None, "body": ok},
    }


EXPECTED_ERROR = {
    "unregistered": "django_ray.exceptions.NotRegistered",
    "invalid-json": "django_ray.exceptions.MalformedMessage",
    "protocol-v1": "django_ray.exceptions.MalformedMessage",
    "two-items": "django_ray.exceptions.MalformedMessage",
    "pickle": "django_ray.exceptions.MalformedMessage",
    "os-system": "django_ray.exceptions.NotRegistered",
    "unknown-backend": "django.tasks.exceptions.InvalidTaskBackend",
}


@ALL_BROKERS
@pytest.mark.django_db(transaction=True)
def test_bad_messages_are_recorded_refused_and_skipped(
    broker_url: str, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    CANARY.clear()
    for message in bad_messages(queue).values():
        publish_raw(queue, **message)
    good = tasks.add.using(queue_name=queue).enqueue(2, 3)

    with caplog.at_level(logging.INFO, logger="django_ray"):
        worker(f"--queue={queue}", "--batch")

    assert CANARY == []  # nothing was unpickled
    for task_id, error in EXPECTED_ERROR.items():
        record = TaskRecord.objects.get(pk=task_id)
        assert record.status == TaskStatus.FAILED, task_id
        assert record.last_error["exception_class_path"] == error, task_id
        assert record.finished_at is not None
        assert task_id in caplog.text
    # The messages without an id are logged, and leave no record behind.
    mine = TaskRecord.objects.filter(queue=queue)  # other tests' workers may share the database
    assert set(mine.values_list("id", flat=True)) == {*EXPECTED_ERROR, good.id}
    assert caplog.text.count("no 'id' header") == 1
    assert caplog.text.count("no 'task' header") == 1
    assert "application/x-python-serialize" in caplog.text
    # ... and the worker went on to the good message; nothing is left on the broker.
    assert status(good) == TaskResultStatus.SUCCESSFUL
    assert good.return_value == 5
    assert queue_size(queue) == 0


@pytest.mark.django_db
def test_a_refused_message_does_not_touch_a_finished_record(broker_url: str, queue: str) -> None:
    result = tasks.add.using(queue_name=queue).enqueue(1, 2)
    run_worker_inprocess([queue])
    publish_raw(queue, "{", headers={"task": "tests.tasks.add", "id": result.id})
    run_worker_inprocess([queue])
    assert status(result) == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 3


@pytest.mark.redis
@pytest.mark.parametrize("broker_url", ["redis"], indirect=True)
@pytest.mark.django_db(transaction=True)
def test_broker_option_is_used_for_retries_and_scheduled_messages(
    broker_url: str, queue: str, settings: Any
) -> None:
    # Enqueue on Redis, then point the settings elsewhere: the worker's --broker decides
    # where its retries and due ETA messages go, or it would never see them again.
    retried = tasks.flaky.using(queue_name=queue).enqueue(2)
    deferred = tasks.add.using(
        queue_name=queue, run_after=timezone.now() + timedelta(seconds=0.5)
    ).enqueue(1, 1)
    settings.DJANGO_RAY = {**settings.DJANGO_RAY, "BROKER_URL": "django://"}
    worker(f"--queue={queue}", "--batch", f"--broker={broker_url}")
    assert (status(retried), retried.return_value, retried.attempts) == (
        TaskResultStatus.SUCCESSFUL, 2, 2,
    )  # fmt: skip
    assert status(deferred) == TaskResultStatus.SUCCESSFUL
    assert queue_size(queue, "django://") == 0


@pytest.mark.django_db
def test_a_task_name_never_imports_a_module(broker_url: str, queue: str) -> None:
    # A module of an installed app, but not a task module: naming it must not import it.
    module = "django_ray.management.commands.django_ray_prune"
    sys.modules.pop(module, None)
    task_id = publish(queue, f"{module}.Command")

    run_worker_inprocess([queue])

    record = TaskRecord.objects.get(pk=task_id)
    assert record.status == TaskStatus.FAILED
    assert record.last_error["exception_class_path"] == "django_ray.exceptions.NotRegistered"
    assert module not in sys.modules


@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="PostgreSQL only; tests/test_records_postgres.py runs it on PostgreSQL",
)
@pytest.mark.django_db(transaction=True)
def test_a_kept_connection_the_server_ended_is_dropped_before_use() -> None:
    """A Ray process keeps its connection between calls while work continues; one the
    server ended during an idle spell is closed before the next call uses it."""
    from django.db import OperationalError

    from django_ray.runtime import bootstrap

    def server_ends_it() -> None:
        pid = connection.connection.info.backend_pid
        other = connection.get_new_connection(connection.get_connection_params())
        try:
            other.execute("SELECT pg_terminate_backend(%s)", [pid])
        finally:
            other.close()

    connection.ensure_connection()
    server_ends_it()
    with pytest.raises(OperationalError):  # what the next task would have met
        TaskRecord.objects.count()
    connection.close()

    connection.ensure_connection()
    server_ends_it()
    bootstrap.check_connections(verify=True)
    assert connection.connection is None
    assert TaskRecord.objects.count() >= 0  # a fresh connection
