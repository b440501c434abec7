"""The benchmark workloads as a plain Celery app, for the Celery comparison.

The broker and the result backend come from ``BENCH_CELERY_BROKER`` and
``BENCH_CELERY_BACKEND`` (the suite's Redis database 13 by default).
"""

from __future__ import annotations

import os

from celery import Celery

from benchmarks.workloads import burn_cpu

_REDIS = "redis://127.0.0.1:6379/13"
app = Celery(
    "celery_bench",
    broker=os.environ.get("BENCH_CELERY_BROKER", _REDIS),
    backend=os.environ.get("BENCH_CELERY_BACKEND", _REDIS),
)
app.conf.update(
    worker_prefetch_multiplier=4,
    task_acks_late=False,
    worker_hijack_root_logger=False,
    result_expires=3600,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.noop")
def noop() -> None:
    return None


@app.task(name="bench.cpu_20ms")
def cpu_20ms() -> int:
    return burn_cpu(0.020)


@app.task(name="bench.burn_ms")
def burn_ms(ms: float) -> int:
    return burn_cpu(ms / 1000)
