"""Workloads the benchmarks run (the same functions in every mode)."""

from __future__ import annotations

from django.tasks import task

from benchmarks.workloads import burn_cpu


@task
def noop() -> None:
    return None


@task
def cpu_20ms() -> int:
    """Burn ~20 ms of CPU."""
    return burn_cpu(0.020)
