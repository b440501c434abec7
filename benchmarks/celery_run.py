"""The Celery side of the benchmarks: a producer run as a subprocess (a Celery client).

The worker is a real ``celery worker`` (see ``harness.start_celery``); this script sends to
it and prints one JSON object on its last line::

    produce NAME COUNT QUEUE     warm the worker, send COUNT tasks, wait for every result
    latency QUEUE SAMPLES        one no-op at a time: send -> result stored
    group QUEUE ITEMS MS         a ``group`` of ITEMS tasks of MS ms each

Times run from just before the first send to the last result's ``date_done`` (when the
worker stored it), the same end point as the django-ray side's ``finished_at``; results are
awaited with one Redis ``EXISTS`` per 50 ms, so waiting costs the worker nothing.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _done_at(meta: dict[str, Any]) -> float:
    value = meta["date_done"]
    when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if when.tzinfo is None:  # Celery stores UTC
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _wait(app, ids: list[str], timeout: float) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Wait until every result of ``ids`` is stored; return their metadata."""
    backend = app.backend
    keys = [backend.get_key_for_task(task_id) for task_id in ids]
    deadline = time.monotonic() + timeout
    while True:
        done = sum(backend.client.exists(*keys[i : i + 1000]) for i in range(0, len(keys), 1000))
        if done >= len(keys):
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f}s: {done}/{len(keys)} results")
        time.sleep(0.05)
    metas = []
    for i in range(0, len(keys), 1000):
        metas += [backend.decode_result(raw) for raw in backend.client.mget(keys[i : i + 1000])]
    return metas


def main() -> None:
    from benchmarks import celery_bench

    app = celery_bench.app
    command, *rest = sys.argv[1:]
    queue = rest[2] if command == "produce" else rest[0]
    app.conf.task_default_queue = queue
    warm = [celery_bench.noop.delay().id for _ in range(20)]
    _wait(app, warm, timeout=120)  # the worker is up and its processes are busy-ready
    out: dict[str, Any]
    if command == "produce":
        name, count = rest[0], int(rest[1])
        task = getattr(celery_bench, name)
        t0 = time.time()
        ids = [task.delay().id for _ in range(count)]
        enqueue_seconds = time.time() - t0
        metas = _wait(app, ids, timeout=600)
        statuses = sorted({m["status"] for m in metas})
        out = {
            "seconds": max(_done_at(m) for m in metas) - t0,
            "enqueue_seconds": enqueue_seconds,
            "statuses": statuses,
            "count": len(metas),
        }
    elif command == "latency":
        samples = int(rest[1])
        stored, seen = [], []
        for _ in range(samples):
            time.sleep(0.05)
            t0 = time.time()
            result = celery_bench.noop.delay()
            result.get(timeout=60)
            seen.append(time.time() - t0)
            stored.append(_done_at({"date_done": result.date_done}) - t0)
        out = {"stored": stored, "seen": seen}
    elif command == "group":
        from celery import group

        items, ms = int(rest[1]), float(rest[2])
        _wait(app, [celery_bench.burn_ms.delay(ms).id for _ in range(20)], timeout=120)
        t0 = time.time()
        result = group(celery_bench.burn_ms.s(ms) for _ in range(items)).apply_async()
        metas = _wait(app, [r.id for r in result.results], timeout=600)
        out = {
            "seconds": max(_done_at(m) for m in metas) - t0,
            "statuses": sorted({m["status"] for m in metas}),
        }
    else:
        raise SystemExit(f"unknown command {command!r}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
