"""Shared plumbing: a fresh database per run, enqueueing, a worker subprocess, timings."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANAGE = ROOT / "testproject" / "manage.py"


@dataclass
class Run:
    label: str
    tasks: int
    enqueue_seconds: float
    drain_seconds: float  # first task started -> last task finished, from the records

    @property
    def enqueue_rate(self) -> float:
        return self.tasks / self.enqueue_seconds if self.enqueue_seconds else 0.0

    @property
    def drain_rate(self) -> float:
        return self.tasks / self.drain_seconds if self.drain_seconds else 0.0


def environment(broker: str, db_path: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="testproject.settings",
        DJANGO_RAY_DB_NAME=db_path,
        DJANGO_RAY_BROKER=broker,
        DJANGO_RAY_TASK_MODULES="benchmarks.bench_tasks",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "testproject")]),
        **extra,
    )
    return env


def fresh_database() -> str:
    path = tempfile.mktemp(prefix="django-ray-bench-", suffix=".sqlite3")
    return path


def manage(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(MANAGE), *args], env=env, capture_output=True, text=True, check=check
    )


def worker(env: dict[str, str], queue: str, *mode: str, timeout: float = 900) -> None:
    proc = manage(env, "django_ray_worker", f"--queue={queue}", "--batch", "-v0", *mode,
                  check=False)  # fmt: skip
    if proc.returncode:
        raise RuntimeError(f"worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def timed(fn, *args, **kwargs) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return time.perf_counter() - start, value
