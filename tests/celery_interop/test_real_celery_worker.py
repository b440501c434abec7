"""Side by side with a real ``celery worker``: the same results, and one run per message."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from celery import chain, group
from celery.result import AsyncResult

from tests.celery_interop import cw_tasks
from tests.celery_interop.celery_app import RUN, app
from tests.celery_interop.workers import (
    RunningWorker,
    celery_worker,
    django_ray_worker,
    interop_env,
    purge_redis_queue,
    result_meta,
    unique,
)
from tests.services import REDIS_URL
from tests.waiting import wait_until

# Its worker writes TaskRecords: pytest-django creates the test database only for a run
# that collects a django_db test, so this module declares it (it may run alone).
pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.django_db(transaction=True)]
OURS, REAL, SHARED = (f"cw_cmp_{kind}_{RUN}" for kind in ("ours", "real", "shared"))
READY = {"SUCCESS", "FAILURE", "REVOKED"}

Send = Callable[[str, str], AsyncResult]
CASES: dict[str, Send] = {
    "success": lambda q, tid: cw_tasks.add.apply_async((2, 3), queue=q, task_id=tid),
    "named": lambda q, tid: app.send_task("cw.mul", (6, 7), queue=q, task_id=tid),
    "failure": lambda q, tid: cw_tasks.fail.apply_async(("kaput",), queue=q, task_id=tid),
    "custom": lambda q, tid: cw_tasks.custom_fail.apply_async(queue=q, task_id=tid),
    "unknown": lambda q, tid: app.send_task("cw.nope", queue=q, task_id=tid),
    "expired": lambda q, tid: cw_tasks.add.apply_async(
        (1, 1), queue=q, task_id=tid, expires=datetime.now(UTC) - timedelta(seconds=5)
    ),
    "retried": lambda q, tid: cw_tasks.flaky.apply_async(
        (1,), {"countdown": 0.2}, queue=q, task_id=tid
    ),
    "max_retries": lambda q, tid: cw_tasks.always_retry.apply_async((False,), queue=q, task_id=tid),
    "retry_exc": lambda q, tid: cw_tasks.always_retry.apply_async((True,), queue=q, task_id=tid),
    "chain": lambda q, tid: chain(
        cw_tasks.add.s(1, 2).set(queue=q), cw_tasks.mul.s(10).set(queue=q, task_id=tid)
    ).apply_async(),
    "group": lambda q, tid: group(
        cw_tasks.add.s(1, 1).set(queue=q, task_id=tid), cw_tasks.add.s(2, 2).set(queue=q)
    ).apply_async(),
}


@pytest.fixture(scope="module")
def workers(redis_client: redis.Redis, django_db_setup: None) -> Iterator[dict[str, RunningWorker]]:
    for queue in (OURS, REAL, SHARED):
        purge_redis_queue(redis_client, queue)
    env = interop_env(REDIS_URL, OURS)
    with ExitStack() as stack:
        real = stack.enter_context(celery_worker(f"cw-real-{RUN}", f"{REAL},{SHARED}", **env))
        ours = stack.enter_context(django_ray_worker(f"cw-cmp-{RUN}", [OURS, SHARED], **env))
        yield {"real": real, "ours": ours}


def comparable(meta: dict[str, Any], task_id: str) -> dict[str, Any]:
    """Return the parts of a result meta both workers must agree on."""
    result = meta["result"]
    if isinstance(result, dict) and "exc_message" in result:
        # MaxRetriesExceededError names the task id; compare the rest of the text.
        messages = [re.sub(re.escape(task_id), "<id>", str(m)) for m in result["exc_message"]]
        result = {**result, "exc_message": messages}
    return {
        "keys": sorted(meta),
        "status": meta["status"],
        "result": result,
        "has_traceback": meta["traceback"] is not None,
        "children": len(meta["children"]),
        "date_done": meta["date_done"] is not None,
    }


def test_same_results_as_a_real_celery_worker(
    workers: dict[str, RunningWorker], redis_client: redis.Redis
) -> None:
    ids = {
        (kind, case): unique(f"cmp-{kind}-{case}") for kind in ("ours", "real") for case in CASES
    }
    for (kind, case), task_id in ids.items():
        CASES[case](OURS if kind == "ours" else REAL, task_id)

    def pending() -> list[tuple[str, str]]:
        metas = {key: result_meta(redis_client, i) for key, i in ids.items()}
        return [key for key, m in metas.items() if m is None or m["status"] not in READY]

    def logs() -> str:
        tails = "\n".join(w.output()[-3000:] for w in workers.values())
        return f"Not finished: {pending()}\n{tails}"

    wait_until(lambda: not pending(), "every result to be stored", timeout=20, details=logs)
    for case in CASES:
        ours = result_meta(redis_client, ids["ours", case])
        real = result_meta(redis_client, ids["real", case])
        assert ours is not None and real is not None
        assert comparable(ours, ids["ours", case]) == comparable(real, ids["real", case]), case


def test_both_workers_on_one_queue_run_each_message_once(
    workers: dict[str, RunningWorker], redis_client: redis.Redis
) -> None:
    key = unique("shared")
    results = [cw_tasks.record_run.apply_async((key, 0.05), queue=SHARED) for _ in range(30)]
    hosts = [r.get(timeout=20) for r in results]
    counts: dict[bytes, bytes] = redis_client.hgetall(f"cw:runs:{key}")  # type: ignore[assignment]
    runs = {k.decode(): int(v) for k, v in counts.items()}
    assert runs == {r.id: 1 for r in results}
    assert any(h.startswith(f"django_ray.cw-cmp-{RUN}@") for h in hosts), hosts
    assert any(h.startswith(f"cw-real-{RUN}@") for h in hosts), hosts
