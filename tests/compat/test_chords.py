"""Chords without a Celery result backend: the header is joined through ``TaskRecord``.

The body runs once, after every header part, with the results in ``group_index`` order,
however many workers finish parts at the same time (SQLite here; the concurrency test
also runs on PostgreSQL, in a pytest subprocess).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, connections

from compat.celery import chain, chord, group
from compat.celery.exceptions import ChordError
from django_ray.celery import chords
from django_ray.celery.canvas import freeze
from django_ray.message import TaskMessage, new_task_id
from django_ray.models import TaskRecord, TaskStatus
from tests.compat.compat_tasks import TransientError, add, append_json, collect, fail, tsum
from tests.conftest import ROOT, worker_command, worker_env
from tests.services import require_postgres

MODULES = "tests.tasks,tests.compat.compat_tasks"


@pytest.mark.django_db
def test_body_runs_once_with_the_results_in_order(eager: None) -> None:
    result = chord([add.s(i, i) for i in range(4)], collect.s())()
    assert result.get() == [0, 2, 4, 6]
    assert TaskRecord.objects.filter(task_name=collect.name).count() == 1


@pytest.mark.django_db
def test_a_failed_part_fails_the_body_with_chord_error(eager: None) -> None:
    result = chord([add.s(1, 1), fail.s("header part")], collect.s()).apply_async()
    with pytest.raises(TransientError):
        result.parent.get()  # type: ignore[union-attr]
    with pytest.raises(ChordError, match="raised TransientError"):
        result.get()
    assert TaskRecord.objects.get(pk=result.id).worker_ids == []  # never ran


@pytest.mark.django_db
def test_chords_after_the_first_step_and_inside_a_body(eager: None) -> None:
    later = chain(add.s(1, 1), group(add.s(1), add.s(2)), tsum.s(), add.s(100)).apply_async()
    assert later.get() == 107  # add(2, 1) + add(2, 2), then + 100
    inner = chord([tsum.s(), tsum.s()], collect.s())
    nested = chord([add.s(1, 1), add.s(2, 2)], inner).apply_async()
    assert nested.get() == [6, 6]  # each inner part got [2, 4]


# -- race-free across workers -------------------------------------------------------------


def _header(size: int) -> tuple[list[TaskMessage], dict[str, Any]]:
    """Create the records of a chord header of ``size`` parts; return their messages."""
    group_id = new_task_id()
    body = freeze(collect.s())
    body["options"]["group_id"] = group_id
    body["chord_size"] = size
    messages = [
        TaskMessage(id=new_task_id(), task=add.name, group=group_id, group_index=i, chord=body)
        for i in range(size)
    ]
    for m in messages:
        TaskRecord.objects.create(
            id=m.id, task_name=m.task, group_id=group_id, group_index=m.group_index
        )
    return messages, body


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("round_", range(3))
def test_concurrent_parts_send_the_body_exactly_once(round_: int) -> None:
    size = 8
    messages, body = _header(size)
    barrier = threading.Barrier(size)
    sent: list[list[TaskMessage]] = []
    errors: list[BaseException] = []

    def finish(message: TaskMessage) -> None:
        try:
            record = TaskRecord.objects.get(pk=message.id)
            barrier.wait()
            record.mark_running("w")
            # Out of order on purpose: the results must still come in group_index order.
            record.mark_successful(10 * (size - message.group_index))  # type: ignore[operator]
            sent.append(chords.part_finished(message))
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=finish, args=(m,)) for m in messages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    bodies = [b for b in sent if b]
    assert len(bodies) == 1, sent
    [[message]] = bodies
    assert message.id == body["options"]["task_id"]
    assert message.args == ([10 * (size - i) for i in range(size)],)
    assert TaskRecord.objects.get(pk=message.id).status == TaskStatus.READY


@pytest.mark.django_db
def test_a_redelivered_part_joins_the_chord_its_worker_left() -> None:
    from django_ray.runtime.execute import execute

    messages, body = _header(2)
    # Both parts finished, but the worker of the last one stopped before joining.
    for index, message in enumerate(messages):
        record = TaskRecord.objects.get(pk=message.id)
        record.mark_successful(index)
    outcome = execute(messages[1], worker_id="w")
    assert outcome.duplicate
    assert [(m.id, m.args) for m in outcome.publish] == [(body["options"]["task_id"], ([0, 1],))]
    assert execute(messages[1], worker_id="w").publish == ()  # sent once


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.skipif(connection.vendor == "postgresql", reason="this run is on PostgreSQL already")
def test_concurrent_join_on_postgresql() -> None:
    require_postgres()
    env = {
        **os.environ,
        "DJANGO_RAY_DB": "postgres",
        "DJANGO_RAY_PG_TEST_NAME": f"test_django_ray_chords_{os.getpid()}",
    }
    env.pop("PYTEST_ADDOPTS", None)
    command = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider",
               "--create-db", "-k", "concurrent and not postgresql", "--timeout=90"]  # fmt: skip
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=230, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "3 passed" in output, output[-4000:]


# -- end to end: several worker processes, no result backend --------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
@pytest.mark.parametrize("broker_url", ["django", "redis"], indirect=True)
def test_workers_join_a_chord_without_a_result_backend(
    broker_url: str, queue: str, tmp_path: Path
) -> None:
    out = tmp_path / "body.jsonl"
    header = [add.s(i, i).set(queue=queue) for i in range(12)]
    result = chain(
        chord(header, append_json.s(str(out)).set(queue=queue)), tsum.s().set(queue=queue)
    ).apply_async()
    args = ["--sync", "--batch", f"--queue={queue}"]
    env = worker_env(DJANGO_RAY_TASK_MODULES=MODULES)
    workers = [
        subprocess.Popen(
            worker_command(*args),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err[-3000:]
    expected = [2 * i for i in range(12)]
    assert result.get(timeout=10) == sum(expected)
    assert result.parent.get(timeout=10) == expected  # type: ignore[union-attr]
    assert [json.loads(line) for line in out.read_text().splitlines()] == [expected]
