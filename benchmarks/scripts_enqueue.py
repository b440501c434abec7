"""The Django side of the benchmarks, run as a subprocess in the benchmark's settings.

Each command prints one JSON object on its last line::

    enqueue NAME COUNT QUEUE [--chunk C]   enqueue rate (C > 0: C enqueues per transaction)
    drain-window QUEUE                     first start -> last finish of a queue's records
    produce NAME COUNT QUEUE --workers IDS  wait for the workers, warm them, enqueue COUNT
                                           while they drain, wait for every outcome
    latency QUEUE SAMPLES --workers IDS    one no-op at a time: enqueue -> outcome stored
    fanout QUEUE ITEMS MS --workers IDS    one task doing parallel_map over ITEMS x MS ms

Times are wall-clock (``time.time()``) against the records' ``started_at``/``finished_at``,
so how often this process polls never shows in a figure.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from typing import Any


def _records(queue: str):  # type: ignore[no-untyped-def]
    from django_ray.models import TaskRecord

    return TaskRecord.objects.filter(queue=queue)


def _wait_finished(queue: str, ids: list[str], timeout: float) -> list[Any]:
    """Wait until the records ``ids`` have an outcome; return them."""
    from django.db import close_old_connections

    deadline = time.monotonic() + timeout
    ids_set = set(ids)
    while True:
        done = _records(queue).filter(pk__in=ids, finished_at__isnull=False).count()
        if done >= len(ids_set):
            return list(_records(queue).filter(pk__in=ids))
        if time.monotonic() > deadline:
            statuses = Counter(_records(queue).filter(pk__in=ids).values_list("status", flat=True))
            raise SystemExit(f"timed out after {timeout:.0f}s: {done}/{len(ids)} done, {statuses}")
        time.sleep(0.05)
        close_old_connections()


def _wait_workers(worker_ids: list[str], timeout: float = 180) -> None:
    from django_ray.models import WorkerHeartbeat

    deadline = time.monotonic() + timeout
    while WorkerHeartbeat.objects.filter(worker_id__in=worker_ids).count() < len(worker_ids):
        if time.monotonic() > deadline:
            raise SystemExit(f"workers {worker_ids} did not start within {timeout:.0f}s")
        time.sleep(0.2)


def _warm(queue: str, worker_ids: list[str], per_round: int = 20, rounds: int = 10) -> None:
    """Wait for the workers, then run no-ops until each has run some (Ray workers warm)."""
    from benchmarks import bench_tasks

    _wait_workers(worker_ids)
    task = bench_tasks.noop.using(queue_name=queue)
    seen: set[str] = set()
    for _ in range(rounds):
        ids = [task.enqueue().id for _ in range(per_round * len(worker_ids))]
        for record in _wait_finished(queue, ids, timeout=300):
            seen.update(record.worker_ids)
        if seen >= set(worker_ids):
            return


def _enqueue(task, count: int, chunk: int) -> tuple[float, list[str]]:  # type: ignore[no-untyped-def]
    from django.db import transaction

    ids: list[str] = []
    start = time.perf_counter()
    if chunk <= 0:
        ids = [task.enqueue().id for _ in range(count)]
    else:
        for first in range(0, count, chunk):
            with transaction.atomic():
                ids += [task.enqueue().id for _ in range(min(chunk, count - first))]
    return time.perf_counter() - start, ids


def _window(records: list[Any]) -> float:
    first = min(r.started_at for r in records)
    last = max(r.finished_at for r in records)
    return (last - first).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command")
    parser.add_argument("args", nargs="*")
    parser.add_argument("--chunk", type=int, default=0)
    parser.add_argument("--workers", default="")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--warm", type=int, default=20, help="warm-up no-ops per worker")
    opts = parser.parse_args()

    import django

    django.setup()
    from django.core.management import call_command

    from benchmarks import bench_tasks

    workers = [w for w in opts.workers.split(",") if w]
    rest = opts.args
    out: dict[str, Any]
    if opts.command == "enqueue":
        name, count, queue = rest[0], int(rest[1]), rest[2]
        call_command("migrate", verbosity=0)
        seconds, _ids = _enqueue(
            getattr(bench_tasks, name).using(queue_name=queue), count, opts.chunk
        )
        out = {"seconds": seconds, "rate": count / seconds}
    elif opts.command == "drain-window":
        records = list(_records(rest[0]))
        out = {
            "seconds": _window(records),
            "statuses": sorted({r.status for r in records}),
            "count": len(records),
        }
    elif opts.command == "produce":
        name, count, queue = rest[0], int(rest[1]), rest[2]
        _warm(queue, workers, opts.warm)
        task = getattr(bench_tasks, name).using(queue_name=queue)
        t0 = time.time()
        enqueue_seconds, ids = _enqueue(task, count, opts.chunk)
        records = _wait_finished(queue, ids, opts.timeout)
        last = max(r.finished_at for r in records).timestamp()
        nodes = Counter(str(r.return_value) for r in records) if name == "where" else {}
        per_worker = Counter(w for r in records for w in r.worker_ids[-1:])
        out = {
            "seconds": last - t0,
            "enqueue_seconds": enqueue_seconds,
            "drain_seconds": _window(records),
            "count": len(records),
            "statuses": sorted({r.status for r in records}),
            "nodes": dict(nodes),
            "per_worker": dict(per_worker),
        }
    elif opts.command == "latency":
        queue, samples = rest[0], int(rest[1])
        _warm(queue, workers, opts.warm)
        task = bench_tasks.noop.using(queue_name=queue)
        stored, seen = [], []
        for _ in range(samples):
            time.sleep(0.05)  # an idle worker: nothing else in flight
            t0 = time.time()
            result = task.enqueue()
            (record,) = _wait_finished_fast(queue, result.id)
            seen.append(time.time() - t0)
            stored.append(record.finished_at.timestamp() - t0)
        out = {"stored": stored, "seen": seen}
    elif opts.command == "fanout":
        queue, items, ms = rest[0], int(rest[1]), float(rest[2])
        _warm(queue, workers, opts.warm)
        task = bench_tasks.fanout.using(queue_name=queue)
        _wait_finished(queue, [task.enqueue(20, ms).id], opts.timeout)  # warm the Ray workers
        t0 = time.time()
        (record,) = _wait_finished(queue, [task.enqueue(items, ms).id], opts.timeout)
        out = {
            "seconds": record.finished_at.timestamp() - t0,
            "run_seconds": (record.finished_at - record.started_at).total_seconds(),
            "status": record.status,
            "return_value": record.return_value,
        }
    else:
        raise SystemExit(f"unknown command {opts.command!r}")
    print(json.dumps(out))


def _wait_finished_fast(queue: str, task_id: str, timeout: float = 60) -> list[Any]:
    """Poll one record every millisecond (latency samples)."""
    deadline = time.monotonic() + timeout
    rows = _records(queue).filter(pk=task_id, finished_at__isnull=False)
    while time.monotonic() < deadline:
        found = list(rows.all())
        if found:
            return found
        time.sleep(0.001)
    raise SystemExit(f"task {task_id} had no outcome within {timeout:.0f}s")


if __name__ == "__main__":
    main()
