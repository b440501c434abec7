"""Run the workloads on a real Celery prefork worker (-c 2) over Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _wait_ready(app, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if app.control.ping(timeout=0.5):
            return
    raise RuntimeError("Celery worker did not start")


def celery_numbers(noop_count: int, cpu_count: int, samples: int) -> dict[str, float]:
    sys.path.insert(0, str(ROOT))
    from benchmarks import celery_bench
    from benchmarks.harness import percentile

    app = celery_bench.app
    queue = "bench-celery"
    app.conf.task_default_queue = queue
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "benchmarks.celery_bench", "worker", "-c", "2",
         "--pool=prefork", "-Q", queue, "--loglevel=WARNING", "--without-gossip",
         "--without-mingle"], env=env, cwd=ROOT,
    )  # fmt: skip
    try:
        _wait_ready(app)
        celery_bench.noop.delay().get(timeout=30)

        def drain(task, count: int) -> float:  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            results = [task.delay() for _ in range(count)]
            for r in results:
                r.get(timeout=300)
            return count / (time.perf_counter() - start)

        noop = drain(celery_bench.noop, noop_count)
        cpu = drain(celery_bench.cpu_20ms, cpu_count)
        lat = []
        for _ in range(samples):
            start = time.perf_counter()
            celery_bench.noop.delay().get(timeout=30)
            lat.append(time.perf_counter() - start)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    return {"noop": noop, "cpu": cpu, "p50": percentile(lat, 0.5), "p95": percentile(lat, 0.95)}
