"""Compare the four worker modes, raw Ray, and Celery on the same work, in one run.

Usage: ``python benchmarks/modes.py [--noop N] [--cpu N] [--latency N] [--skip job,celery]``

Prints one table: no-op throughput (enqueue to result stored), single-task latency
p50/p95, and N CPU-bound ~20 ms tasks, for --sync, --local, --cluster and Ray Job mode on
Redis; raw Ray (local, no broker) and a raw JobSubmissionClient round trip as floors;
and a Celery prefork ``-c 2`` worker on Redis. Compare ratios within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import MANAGE, ROOT, environment, fresh_database, percentile

REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/9")
HELPER = ROOT / "benchmarks" / "scripts_enqueue.py"


def helper(env: dict[str, str], *args: str) -> dict:  # type: ignore[type-arg]
    out = subprocess.run([sys.executable, str(HELPER), *args], env=env, capture_output=True,
                         text=True, check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def throughput(env: dict[str, str], mode: list[str], workload: str, count: int) -> float:
    """Pre-enqueue ``count`` tasks, drain with one batch worker, return tasks/s."""
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    helper(env, "enqueue", workload, str(count), queue)
    proc = subprocess.run(
        [sys.executable, str(MANAGE), "django_ray_worker", f"--queue={queue}", "--batch", "-v0",
         *mode], env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    if proc.returncode:
        raise RuntimeError(f"worker {mode} failed:\n{proc.stderr[-2000:]}")
    window = helper(env, "drain-window", queue)
    if window["statuses"] != ["SUCCESSFUL"] or window["count"] != count:
        raise RuntimeError(f"worker {mode}: unexpected outcome {window['statuses']}")
    return count / window["seconds"]


def latency(env: dict[str, str], mode: list[str], samples: int) -> tuple[float, float]:
    """Run a long-lived worker; enqueue one task at a time; return p50/p95 seconds."""
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    worker = subprocess.Popen(
        [sys.executable, str(MANAGE), "django_ray_worker", f"--queue={queue}", "-v0", *mode],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        out = helper(env, "latency", queue, str(samples))
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    values = out["latencies"]
    return percentile(values, 0.5), percentile(values, 0.95)


def raw_ray(count_noop: int, count_cpu: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "raw_ray.py"),
                          str(count_noop), str(count_cpu)], capture_output=True, text=True,
                         check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--noop", type=int, default=500)
    parser.add_argument("--cpu", type=int, default=200)
    parser.add_argument("--latency", type=int, default=20)
    parser.add_argument("--skip", default="")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    rows: list[tuple[str, float | None, float | None, float | None, float | None]] = []

    head = None
    if not {"cluster", "job"} <= skip:
        from tests.raycluster import RayHead

        head = RayHead()
        head.start()
    try:
        modes: list[tuple[str, list[str], dict[str, str]]] = [
            ("sync", ["--sync"], {}),
            ("local", ["--local"], {}),
        ]
        if head is not None:
            modes.append(("cluster", [f"--cluster={head.gcs_address}"], head.env()))
            modes.append(("job", [], {**head.env(), "DJANGO_RAY_RAY_ADDRESS": head.dashboard_url}))
        for name, mode, extra in modes:
            if name in skip:
                continue
            env = environment(REDIS, fresh_database(), **extra)
            subprocess.run([sys.executable, str(MANAGE), "migrate", "-v0"], env=env, check=True)
            small = name == "job"
            noop = throughput(env, mode, "noop", 20 if small else args.noop)
            cpu = throughput(env, mode, "cpu_20ms", 20 if small else args.cpu)
            p50, p95 = latency(env, mode, 5 if small else args.latency)
            rows.append((name, noop, p50, p95, cpu))
            print(f"  measured {name}", file=sys.stderr)
        if "ray" not in skip:
            raw = raw_ray(args.noop, args.cpu)
            rows.append(("raw ray (no broker)", raw["noop"], None, None, raw["cpu"]))
        if head is not None and "job" not in skip:
            from benchmarks.raw_jobs import round_trip

            rt = round_trip(head, samples=5)
            rows.append(("raw JobSubmissionClient", None, rt, rt, None))
    finally:
        if head is not None:
            head.stop()
    if "celery" not in skip:
        from benchmarks.celery_run import celery_numbers

        c = celery_numbers(args.noop, args.cpu, args.latency)
        rows.append(("celery prefork -c 2", c["noop"], c["p50"], c["p95"], c["cpu"]))
    print_table(rows, args)


def print_table(rows, args) -> None:  # type: ignore[no-untyped-def]
    sync = next((r for r in rows if r[0] == "sync"), None)
    print(f"\nno-op: {args.noop} tasks, cpu: {args.cpu} x 20 ms (job mode: 20 each); Redis\n")
    print(f"{'mode':<26}{'no-op/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'cpu/s':>8}{'cpu vs sync':>13}")
    for name, noop, p50, p95, cpu in rows:
        ratio = f"{cpu / sync[4]:.2f}x" if cpu and sync and sync[4] else "-"
        print(f"{name:<26}{_f(noop):>9}{_f(p50, 1000):>9}{_f(p95, 1000):>9}{_f(cpu):>8}{ratio:>13}")


def _f(value: float | None, scale: float = 1) -> str:
    return "-" if value is None else f"{value * scale:.0f}"


if __name__ == "__main__":
    main()
