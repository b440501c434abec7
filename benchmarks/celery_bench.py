"""The benchmark workloads as a plain Celery app, for the Celery comparison."""

from __future__ import annotations

import os

from celery import Celery

from benchmarks.workloads import burn_cpu

app = Celery(
    "celery_bench",
    broker=os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/10"),
    backend=os.environ.get("BENCH_CELERY_BACKEND", "redis://127.0.0.1:6379/11"),
)
app.conf.update(worker_prefetch_multiplier=4, task_acks_late=False, worker_hijack_root_logger=False)


@app.task(name="bench.noop")
def noop() -> None:
    return None


@app.task(name="bench.cpu_20ms")
def cpu_20ms() -> int:
    return burn_cpu(0.020)
