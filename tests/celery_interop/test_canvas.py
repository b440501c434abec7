"""Canvas from real Celery clients: chain, link/link_error, group, chord, starmap/map/chunks."""

from __future__ import annotations

import pytest
import redis
from celery import chain, chord, group

from tests.celery_interop import cw_tasks
from tests.celery_interop.workers import RunningWorker, result_meta, unique
from tests.waiting import wait_until

# Its worker writes TaskRecords: pytest-django creates the test database only for a run
# that collects a django_db test, so this module declares it (it may run alone).
pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]
TIMEOUT = 10


def test_chain_mutable_immutable_and_preassigned_ids(
    worker: RunningWorker, redis_client: redis.Redis
) -> None:
    result = chain(cw_tasks.add.s(1, 2), cw_tasks.mul.s(10), cw_tasks.add.si(5, 5)).apply_async()
    assert result.get(timeout=TIMEOUT) == 10  # immutable: the parent's 30 is not prepended
    assert result.parent.get(timeout=TIMEOUT) == 30  # mutable: mul(3, 10)
    assert result.parent.parent.get(timeout=TIMEOUT) == 3
    head = result_meta(redis_client, result.parent.parent.id)
    last = result_meta(redis_client, result.id)
    assert head is not None and last is not None
    assert head["children"] == [[[result.parent.id, None], None]]
    assert last["parent_id"] == result.parent.id


def test_chain_failure_fails_the_rest(worker: RunningWorker) -> None:
    result = chain(cw_tasks.add.s(1, 2), cw_tasks.fail.si("mid"), cw_tasks.add.s(1)).apply_async()
    with pytest.raises(ValueError, match="mid"):
        result.get(timeout=TIMEOUT)  # the last step never ran, yet get() does not hang
    assert result.parent.parent.get(timeout=TIMEOUT) == 3


def test_link_and_link_error(worker: RunningWorker, redis_client: redis.Redis) -> None:
    key = unique("links")
    ok = cw_tasks.add.apply_async((1, 1), link=cw_tasks.note.s(key))
    bad = cw_tasks.fail.apply_async(
        ("x",),
        link=cw_tasks.note.s(key),
        link_error=[cw_tasks.errback_old_style.s(key), cw_tasks.errback_new_style.s(key=key)],
    )
    assert ok.get(timeout=TIMEOUT) == 2
    with pytest.raises(ValueError):
        bad.get(timeout=TIMEOUT)
    errbacks = wait_until(
        lambda: len(got := redis_client.lrange(f"cw:errbacks:{key}", 0, -1)) == 2 and got,
        "both error callbacks",
    )
    # The new-style errback runs inline with (request, exc, traceback); the old one is a task.
    assert sorted(e.decode() for e in errbacks) == sorted([bad.id, f"{bad.id}:ValueError"])
    assert redis_client.lrange(f"cw:notes:{key}", 0, -1) == [b"2"]


def test_group(worker: RunningWorker, redis_client: redis.Redis) -> None:
    result = group(cw_tasks.add.s(i, i) for i in range(4)).apply_async()
    assert result.get(timeout=TIMEOUT) == [0, 2, 4, 6]
    meta = result_meta(redis_client, result.results[1].id)
    assert meta is not None and meta["group_id"] == result.id


def test_chord_body_runs_once_with_results_in_header_order(
    worker: RunningWorker, redis_client: redis.Redis
) -> None:
    key = unique("chord")
    # Later members finish first: the body must still see [0, 1, 2].
    header = [cw_tasks.sleep_then.s(i, 0.2 - i * 0.1) for i in range(3)]
    result = chord(header, cw_tasks.note.s(key)).apply_async()
    assert result.get(timeout=TIMEOUT) == [0, 1, 2]
    assert (
        chord([cw_tasks.add.s(i, i) for i in range(3)], cw_tasks.tsum.s())
        .delay()
        .get(timeout=TIMEOUT)
        == 6
    )
    assert redis_client.lrange(f"cw:notes:{key}", 0, -1) == [b"[0, 1, 2]"]


def test_starmap_map_and_chunks(worker: RunningWorker) -> None:
    assert cw_tasks.add.starmap([(1, 2), (3, 4)]).apply_async().get(timeout=TIMEOUT) == [3, 7]
    assert cw_tasks.tsum.map([[1, 2], [3]]).apply_async().get(timeout=TIMEOUT) == [3, 3]
    chunks = cw_tasks.add.chunks([(i, i) for i in range(5)], 2).apply_async()
    assert chunks.get(timeout=TIMEOUT) == [[0, 2], [4, 6], [8]]
