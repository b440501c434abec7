"""Workloads the benchmarks run (the same functions in every mode)."""

from __future__ import annotations

import time

from django.tasks import task


@task
def noop() -> None:
    return None


@task
def cpu_20ms() -> int:
    """Burn ~20 ms of CPU."""
    deadline = time.perf_counter() + 0.020
    n = 0
    while time.perf_counter() < deadline:
        n += 1
    return n
