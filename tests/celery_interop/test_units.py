"""In-process checks of the Celery formats, the result stores, time limits and revoke."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from celery.app.task import Context
from django.test import override_settings

from django_ray.celery import results
from django_ray.celery import wire as fmt
from django_ray.celery.stores import RedisStore
from django_ray.message import TaskMessage
from django_ray.models import TaskRecord, TaskStatus
from django_ray.runtime.time_limits import (
    HardTimeLimit,
    SoftTimeLimitExceeded,
    Terminated,
    terminate,
    time_limits,
)
from tests.celery_interop import cw_tasks
from tests.celery_interop.celery_app import app
from tests.celery_interop.workers import result_meta, unique
from tests.services import REDIS_URL


def message(**fields: Any) -> TaskMessage:
    return TaskMessage(**{"id": unique("unit"), "task": "cw.mul", "queue": "q", **fields})


def without_date(meta: dict[str, Any] | None) -> dict[str, Any]:
    assert meta is not None
    return {k: v for k, v in meta.items() if k != "date_done"}


@pytest.mark.redis
def test_redis_store_writes_what_celery_writes(redis_client: redis.Redis) -> None:
    """The redis-py writer (no Celery) and Celery's own backend produce the same documents."""
    store = RedisStore(REDIS_URL, expires=600)
    cases: list[tuple[str, Any]] = [
        ("SUCCESS", {"nested": [1, 2.5, None]}),
        ("FAILURE", cw_tasks.CwCustomError(418, "custom failure")),
        ("REVOKED", None),
    ]
    for state, value in cases:
        ours, celery = message(parent_id="p-1", group="g-1"), message(parent_id="p-1", group="g-1")
        context = Context(fmt.request_dict(celery, hostname="h", broker_priority=None))
        if state == "SUCCESS":
            store.done(ours, value, children=[], store=True)
            app.backend.mark_as_done(celery.id, value, request=context)
        elif state == "FAILURE":
            store.failed(ours, value, "Traceback ...", store=True)
            app.backend.mark_as_failure(celery.id, value, "Traceback ...", request=context)
        else:
            store.revoked(ours.id, "revoked", ours)
            app.backend.mark_as_revoked(celery.id, "revoked", request=context)
        mine = without_date(result_meta(redis_client, ours.id))
        theirs = without_date(result_meta(redis_client, celery.id))
        assert {**mine, "task_id": None} == {**theirs, "task_id": None}, state


@pytest.mark.redis
def test_redis_store_never_overwrites_success(redis_client: redis.Redis) -> None:
    store = RedisStore(REDIS_URL, expires=600)
    done = message()
    store.done(done, 7, children=[], store=True)
    store.failed(done, ValueError("late"), None, store=True)
    store.revoked(done.id, "revoked")
    meta = result_meta(redis_client, done.id)
    assert meta is not None and (meta["status"], meta["result"]) == ("SUCCESS", 7)


def test_encode_exception_uses_celery_names_for_stand_ins() -> None:
    assert fmt.encode_exception(SoftTimeLimitExceeded()) == {
        "exc_type": "SoftTimeLimitExceeded",
        "exc_message": [],
        "exc_module": "billiard.exceptions",
    }
    assert fmt.encode_exception(ValueError(object))["exc_message"] == [repr(object)]


def test_soft_limit_raises_inside_and_hard_limit_cannot_be_swallowed() -> None:
    with (
        time_limits(None, 0.05, soft_exc=SoftTimeLimitExceeded),
        pytest.raises(SoftTimeLimitExceeded),
    ):
        time.sleep(1)
    swallowed = False
    with pytest.raises(HardTimeLimit), time_limits(0.05, None, soft_exc=SoftTimeLimitExceeded):
        try:
            time.sleep(1)
        except Exception:
            swallowed = True
    assert not swallowed


def test_terminate_interrupts_only_the_attempt_it_names() -> None:
    import threading

    assert not terminate("nobody")  # nothing runs
    with pytest.raises(Terminated), time_limits(None, None, soft_exc=Exception, task_id="t-1"):
        assert not terminate("t-2")
        threading.Timer(0.05, terminate, args=("t-1",)).start()
        time.sleep(2)
    assert not terminate("t-1")  # over


@pytest.mark.django_db
@override_settings(DJANGO_RAY={"CELERY_APP": None}, CELERY_RESULT_BACKEND=None)
def test_revoke_marks_records_durably_but_lets_a_running_task_finish() -> None:
    waiting, running = unique("waiting"), unique("running")
    TaskRecord.objects.create(id=running, task_name="x", status=TaskStatus.RUNNING)
    assert results.revoke([waiting, running]) == [waiting]
    assert TaskRecord.objects.get(pk=waiting).status == TaskStatus.REVOKED
    assert TaskRecord.objects.get(pk=running).status == TaskStatus.RUNNING
    results._revoked.clear()  # another process: only the database knows
    assert results.is_revoked(waiting) and not results.is_revoked(running)
