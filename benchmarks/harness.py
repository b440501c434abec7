"""Shared plumbing: environments, databases, worker subprocesses, helpers, timings."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANAGE = ROOT / "testproject" / "manage.py"
HELPER = ROOT / "benchmarks" / "scripts_enqueue.py"
CELERY_HELPER = ROOT / "benchmarks" / "celery_run.py"

# The suite's own services: Redis database 13, RabbitMQ's default vhost, one PG database.
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/13")
AMQP = os.environ.get("BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672//")
PG_NAME = os.environ.get("BENCH_PG_NAME", "bench_suite")


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


def _clean_base() -> dict[str, str]:
    """The caller's environment without anything that would point a run elsewhere."""
    dropped = ("DJANGO_RAY_", "RAY_", "CELERY_", "BENCH_CELERY_")
    return {k: v for k, v in os.environ.items() if not k.startswith(dropped)}


def environment(broker: str, db_path: str | None = None, **extra: str) -> dict[str, str]:
    """Environment of a benchmark's Django process: SQLite ``db_path`` (or a fresh file)."""
    env = _clean_base()
    env.update(
        DJANGO_SETTINGS_MODULE="testproject.settings",
        DJANGO_RAY_DB_NAME=db_path or fresh_database(),
        DJANGO_RAY_BROKER=broker,
        DJANGO_RAY_TASK_MODULES="benchmarks.bench_tasks",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "testproject")]),
        **extra,
    )
    return env


def postgres_environment(broker: str, name: str = PG_NAME, **extra: str) -> dict[str, str]:
    """The same on PostgreSQL database ``name``; Ray's processes are told to use it too."""
    return environment(
        broker,
        DJANGO_RAY_DB="postgres",
        DJANGO_RAY_PG_NAME=name,
        DJANGO_RAY_RAY_ENV_VARS="DJANGO_RAY_DB,DJANGO_RAY_PG_NAME",
        **extra,
    )


def celery_environment(broker: str, backend: str = REDIS) -> dict[str, str]:
    env = _clean_base()
    env.update(BENCH_CELERY_BROKER=broker, BENCH_CELERY_BACKEND=backend, PYTHONPATH=str(ROOT))
    return env


def fresh_database() -> str:
    return tempfile.mktemp(prefix="django-ray-bench-", suffix=".sqlite3")


def reset_postgres(name: str = PG_NAME) -> None:
    """Drop and create database ``name`` (the suite's own), closing its connections."""
    import psycopg

    with psycopg.connect(
        host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def new_queue() -> str:
    return f"bench-{uuid.uuid4().hex[:8]}"


def manage(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(MANAGE), *args], env=env, capture_output=True, text=True, check=check
    )


def migrate(env: dict[str, str]) -> None:
    proc = manage(env, "migrate", "-v0", check=False)
    if proc.returncode:
        raise RuntimeError(f"migrate failed:\n{proc.stderr[-2000:]}")


def worker(env: dict[str, str], queue: str, *mode: str, timeout: float = 900) -> None:
    """Run one ``--batch`` worker on ``queue`` until it has drained it."""
    proc = subprocess.run(
        [
            sys.executable,
            str(MANAGE),
            "django_ray_worker",
            f"--queue={queue}",
            "--batch",
            "-v0",
            *mode,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode:
        raise RuntimeError(f"worker {mode} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def helper(
    env: dict[str, str],
    *args: str,
    script: Path = HELPER,
    timeout: float = 900,
    watch: tuple[Service, ...] = (),
) -> dict:  # type: ignore[type-arg]
    """Run a helper script command; return the JSON object it prints last.

    If a process in ``watch`` (the worker it talks to) dies meanwhile, stop at once and say
    why, instead of waiting for a timeout.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, str(script), *args], env=env, cwd=ROOT, stdout=out, stderr=err
        )
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                for service in watch:
                    service.check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{script.name} {' '.join(args)}: no answer in {timeout}s")
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        err.seek(0)
        lines = out.read().decode().strip().splitlines()
        if proc.returncode or not lines:
            tail = err.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"{script.name} {' '.join(args)} failed:\n{tail}")
    return json.loads(lines[-1])


def session_pids(sid: int) -> list[int]:
    """Live processes whose session id is ``sid`` (what a service started; nothing else)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return pids


class Service:
    """A long-lived subprocess in a session of its own, stopped with everything it started.

    A ``--local`` worker starts Ray's processes as its children: they share its session, so
    stopping the session ends them too, and nothing else on the machine.
    """

    def __init__(self, command: list[str], env: dict[str, str], log_name: str) -> None:
        self.log = Path(tempfile.mkstemp(prefix=f"bench-{log_name}-", suffix=".log")[1])
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                command,
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def tail(self, size: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-size:]

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"process exited ({self.proc.returncode}):\n{self.tail()}")

    def stop(self, grace: float = 30) -> None:
        sid = self.proc.pid
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for sig in (signal.SIGTERM, signal.SIGKILL):  # what it left behind (Ray's processes)
            for pid in session_pids(sid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 3
            while session_pids(sid) and time.monotonic() < deadline:
                time.sleep(0.1)
        with contextlib.suppress(OSError):
            self.log.unlink()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_worker(env: dict[str, str], queue: str, *mode: str, worker_id: str = "") -> Service:
    """A long-lived ``django_ray_worker`` on ``queue`` (no ``--batch``)."""
    ident = [f"--worker-id={worker_id}"] if worker_id else []
    command = [
        sys.executable,
        str(MANAGE),
        "django_ray_worker",
        f"--queue={queue}",
        "-v1",
        *ident,
        *mode,
    ]
    return Service(command, env, "worker")


def start_celery(
    env: dict[str, str], queue: str, pool: str = "prefork", concurrency: int = 2
) -> Service:
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "benchmarks.celery_bench",
        "worker",
        f"--pool={pool}",
        "-c",
        str(concurrency),
        "-Q",
        queue,
        "--loglevel=WARNING",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    return Service(command, env, "celery")


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
