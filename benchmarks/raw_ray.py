"""Floor: the same workloads as plain Ray tasks (no broker, no database)."""

from __future__ import annotations

import json
import sys
import time

import ray


def noop() -> None:
    return None


def cpu_20ms() -> int:
    # Kept here (same body as benchmarks.workloads.burn_cpu): functions of a script
    # travel to Ray workers by value, so this floor needs no import path set up.
    deadline = time.perf_counter() + 0.020
    n = 0
    while time.perf_counter() < deadline:
        n += 1
    return n


def rate(fn, count: int) -> float:  # type: ignore[no-untyped-def]
    remote = ray.remote(max_retries=0)(fn)
    ray.get([remote.remote() for _ in range(10)])  # warm the workers
    start = time.perf_counter()
    ray.get([remote.remote() for _ in range(count)])
    return count / (time.perf_counter() - start)


if __name__ == "__main__":
    count_noop, count_cpu = int(sys.argv[1]), int(sys.argv[2])
    # address="local": never attach to a cluster some earlier `ray start` left behind.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    result = {"noop": rate(noop, count_noop), "cpu": rate(cpu_20ms, count_cpu)}
    ray.shutdown()
    print(json.dumps(result))
