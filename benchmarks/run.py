"""Throughput of one --sync worker over django:// and Redis: a quick check of one machine.

Usage: ``python benchmarks/run.py [--tasks N]``. Enqueues N no-op tasks, drains them with
one ``django_ray_worker --sync --batch`` subprocess, and prints enqueue and drain rates
side by side with their ratio (compare within one run: these machines are noisy).
The whole suite, against Celery, is ``benchmarks/suite.py`` (``make bench``).
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import REDIS, Run, environment, fresh_database, helper, worker


def measure(label: str, broker: str, tasks: int, *mode: str, workload: str = "noop") -> Run:
    env = environment(broker, fresh_database())
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    enqueued = helper(env, "enqueue", workload, str(tasks), queue)
    worker(env, queue, *mode)
    window = helper(env, "drain-window", queue)
    if window["count"] != tasks or window["statuses"] != ["SUCCESSFUL"]:
        raise RuntimeError(f"{label}: expected {tasks} SUCCESSFUL, got {window}")
    return Run(label, tasks, enqueued["seconds"], window["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--redis", default=REDIS)
    args = parser.parse_args()
    runs = [
        measure("sync / django://", "django://", args.tasks, "--sync"),
        measure("sync / redis://", args.redis, args.tasks, "--sync"),
    ]
    base = runs[0].drain_rate
    print(f"\n{args.tasks} no-op tasks, one --sync worker\n")
    print(f"{'run':<20} {'enqueue/s':>10} {'drain/s':>10} {'drain ratio':>12}")
    for run in runs:
        ratio = run.drain_rate / base if base else 0
        print(f"{run.label:<20} {run.enqueue_rate:>10.0f} {run.drain_rate:>10.0f} {ratio:>11.2f}x")


if __name__ == "__main__":
    main()
