"""Subprocess helpers run inside the benchmark's Django settings (fresh database)."""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    import django

    django.setup()
    from django.core.management import call_command

    from benchmarks import bench_tasks
    from django_ray.models import TaskRecord

    command, *rest = sys.argv[1:]
    if command == "enqueue":
        name, count, queue = rest[0], int(rest[1]), rest[2]
        call_command("migrate", verbosity=0)
        task = getattr(bench_tasks, name).using(queue_name=queue)
        start = time.perf_counter()
        for _ in range(count):
            task.enqueue()
        print(json.dumps({"seconds": time.perf_counter() - start}))
    elif command == "latency":
        queue, samples = rest[0], int(rest[1])
        task = bench_tasks.noop.using(queue_name=queue)
        latencies = []
        for _ in range(samples + 1):  # the first one waits for the worker to start
            result = task.enqueue()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                record = TaskRecord.objects.get(pk=result.id)
                if record.finished_at:
                    latencies.append((record.finished_at - record.enqueued_at).total_seconds())
                    break
                time.sleep(0.002)
        print(json.dumps({"latencies": latencies[1:]}))
    elif command == "drain-window":
        queue = rest[0]
        rows = TaskRecord.objects.filter(queue=queue)
        first = min(r.started_at for r in rows)
        last = max(r.finished_at for r in rows)
        statuses = sorted({r.status for r in rows})
        latencies = [(r.finished_at - r.enqueued_at).total_seconds() for r in rows]
        print(json.dumps({"seconds": (last - first).total_seconds(), "statuses": statuses,
                          "count": rows.count(), "latencies": latencies}))  # fmt: skip


if __name__ == "__main__":
    main()
