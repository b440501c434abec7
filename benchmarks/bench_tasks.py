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


@task
def where() -> str:
    """A no-op that returns the Ray node it ran on ("no-ray" outside Ray)."""
    try:
        import ray
    except ImportError:
        return "no-ray"
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "no-ray"


def burn_ms(ms: float) -> int:
    """One fan-out item: ``ms`` milliseconds of CPU (module level, so Ray pickles it by name)."""
    return burn_cpu(ms / 1000)


@task
def fanout(items: int, ms: float) -> int:
    """One task that fans ``items`` pieces of ``ms`` ms each out with ``parallel_map``."""
    from django_ray.runtime.distributed import parallel_map

    return len(parallel_map(burn_ms, [ms] * items))
