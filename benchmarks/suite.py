"""The benchmark suite: django-ray against Celery on the same machine, in one run.

Usage::

    python benchmarks/suite.py [--quick] [--only NAME,...] [--out DIR]

Every row measures django-ray and its baseline side by side and the suite prints their
ratios; a row (or one case of it) that fails is reported and the others still run. Each row
starts what it needs (workers, a Celery worker, a Ray head on free ports, a fresh database)
and stops it, so no row depends on what ran before. Writes ``results.json`` (every figure,
the machine and the versions), ``summary.md`` (the table of ratios) and PNG plots to
``--out`` (default ``benchmarks/results/``). Rows: see ``ROWS`` and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (
    AMQP,
    CELERY_HELPER,
    REDIS,
    ROOT,
    celery_environment,
    environment,
    helper,
    migrate,
    new_queue,
    percentile,
    postgres_environment,
    reset_postgres,
    start_celery,
    start_worker,
    worker,
)

Figures = dict[str, Any]


@dataclass(frozen=True)
class Sizes:
    e2e: int  # no-op tasks enqueued by a producer while one worker drains them
    sync: int  # the same for --sync against Celery solo
    pg_drain: int  # no-op tasks pre-enqueued on django:// (PostgreSQL), then drained
    pg_enqueue: int  # enqueues timed one commit each, and all in one transaction
    latency: int  # samples, one task at a time
    cpu: int  # CPU-bound 20 ms tasks
    fanout: int  # parallel_map items of 5 ms (and a Celery group of as many tasks)
    scale: int  # no-op tasks per point of the scale curve
    job: int  # Ray Job mode samples (about a second each)


QUICK = Sizes(
    e2e=200,
    sync=200,
    pg_drain=200,
    pg_enqueue=200,
    latency=15,
    cpu=40,
    fanout=100,
    scale=100,
    job=2,
)
FULL = Sizes(
    e2e=2000,
    sync=2000,
    pg_drain=1000,
    pg_enqueue=1000,
    latency=100,
    cpu=200,
    fanout=1000,
    scale=600,
    job=5,
)
FANOUT_MS = 5.0
SCALE_WORKERS = (1, 2, 4)

CELERY_PREFORK = "celery prefork -c 2"


class Suite:
    def __init__(self, sizes: Sizes, bar: Any) -> None:
        self.sizes = sizes
        self.bar = bar
        self.rows: dict[str, dict[str, Figures]] = {}
        self.errors: dict[str, str] = {}

    def case(self, row: str, name: str, measure: Callable[[], Figures]) -> Figures | None:
        """Run one measurement; keep its figures, or its error, and go on either way."""
        self.bar.set_description(f"{row}: {name}")
        started = time.perf_counter()
        try:
            figures = measure()
        except Exception as exc:
            self.errors[f"{row} / {name}"] = _error(exc)
            self.bar.write(f"  FAILED {row} / {name}: {_error(exc).splitlines()[0]}")
            figures = None
        else:
            figures["elapsed_s"] = round(time.perf_counter() - started, 1)
            self.rows.setdefault(row, {})[name] = figures
            self.bar.write(f"  {row} / {name}: {_brief(figures)}")
        finally:
            self.bar.update(1)
        return figures


def _error(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _brief(figures: Figures) -> str:
    keys = ("tasks_per_s", "p50_ms", "p95_ms", "seconds", "enqueue_per_s", "nodes")
    return ", ".join(f"{k}={_short(figures[k])}" for k in keys if k in figures)


def _short(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)


# -- measurements ------------------------------------------------------------------------


def _ids(prefix: str, count: int = 1) -> list[str]:
    tag = new_queue().removeprefix("bench-")
    return [f"bench-{prefix}-{tag}-{i}" for i in range(count)]


def _check(out: dict[str, Any], count: int, ok: str = "SUCCESSFUL") -> None:
    if out.get("statuses") != [ok] or out.get("count", count) != count:
        raise RuntimeError(f"expected {count} {ok}, got {out.get('count')} {out.get('statuses')}")


def django_produce(
    env: dict[str, str], mode: list[str], task: str, count: int, workers: int = 1, chunk: int = 0,
    producer_env: dict[str, str] | None = None,
) -> Figures:  # fmt: skip
    """``workers`` long-lived workers drain while a producer process enqueues ``count`` tasks
    (with ``producer_env`` in place of ``env`` when given)."""
    queue, ids = new_queue(), _ids("w", workers)
    services = [start_worker(env, queue, *mode, worker_id=wid) for wid in ids]
    try:
        out = helper(
            producer_env or env,
            "produce",
            task,
            str(count),
            queue,
            f"--workers={','.join(ids)}",
            f"--chunk={chunk}",
            watch=tuple(services),
        )
    finally:
        for service in services:
            service.stop()
    _check(out, count)
    return {
        "tasks": count,
        "tasks_per_s": count / out["seconds"],
        "seconds": out["seconds"],
        "enqueue_per_s": count / out["enqueue_seconds"],
        "drain_per_s": count / out["drain_seconds"],
        "nodes": out["nodes"],
        "per_worker": out["per_worker"],
    }


def celery_produce(
    broker: str, task: str, count: int, pool: str = "prefork", concurrency: int = 2
) -> Figures:
    env, queue = celery_environment(broker), new_queue()
    with start_celery(env, queue, pool, concurrency) as service:
        out = helper(
            env, "produce", task, str(count), queue, script=CELERY_HELPER, watch=(service,)
        )
    _drop_queue(broker, queue)
    _check(out, count, "SUCCESS")
    return {
        "tasks": count,
        "tasks_per_s": count / out["seconds"],
        "seconds": out["seconds"],
        "enqueue_per_s": count / out["enqueue_seconds"],
    }


def _drop_queue(broker: str, queue: str) -> None:
    """Delete a RabbitMQ queue the run declared (Redis lists vanish when empty)."""
    if not broker.startswith("amqp"):
        return
    from kombu import Connection

    try:
        with Connection(broker, connect_timeout=5) as conn:
            conn.default_channel.queue_delete(queue)
    except Exception:  # nothing to clean, or the broker is gone: not a benchmark failure
        pass


def _latency_figures(out: dict[str, list[float]]) -> Figures:
    stored, seen = out["stored"], out["seen"]
    return {
        "samples": len(stored),
        "p50_ms": 1000 * percentile(stored, 0.5),
        "p95_ms": 1000 * percentile(stored, 0.95),
        "seen_p50_ms": 1000 * percentile(seen, 0.5),
        "seen_p95_ms": 1000 * percentile(seen, 0.95),
    }


def django_latency(env: dict[str, str], mode: list[str], samples: int, warm: int = 20) -> Figures:
    queue, (wid,) = new_queue(), _ids("lat")
    with start_worker(env, queue, *mode, worker_id=wid) as service:
        out = helper(
            env,
            "latency",
            queue,
            str(samples),
            f"--workers={wid}",
            f"--warm={warm}",
            watch=(service,),
        )
    return _latency_figures(out)


def celery_latency(broker: str, samples: int) -> Figures:
    env, queue = celery_environment(broker), new_queue()
    with start_celery(env, queue) as service:
        out = helper(env, "latency", queue, str(samples), script=CELERY_HELPER, watch=(service,))
    return _latency_figures(out)


def pg_enqueue(env: dict[str, str], count: int, chunk: int) -> Figures:
    out = helper(env, "enqueue", "noop", str(count), new_queue(), f"--chunk={chunk}")
    return {"tasks": count, "enqueue_per_s": out["rate"], "seconds": out["seconds"]}


def pg_drain(env: dict[str, str], mode: list[str], count: int) -> Figures:
    queue = new_queue()
    enq = helper(env, "enqueue", "noop", str(count), queue, f"--chunk={count}")
    worker(env, queue, *mode)
    out = helper(env, "drain-window", queue)
    _check(out, count)
    return {
        "tasks": count,
        "tasks_per_s": count / out["seconds"],
        "seconds": out["seconds"],
        "enqueue_per_s": enq["rate"],
    }


# -- rows --------------------------------------------------------------------------------


def row_e2e(s: Suite, row: str, broker: str) -> None:
    env = environment(broker)
    migrate(env)
    n = s.sizes.e2e
    s.case(row, "django-ray --local", lambda: django_produce(env, ["--local"], "noop", n))
    s.case(row, CELERY_PREFORK, lambda: celery_produce(broker, "noop", n))


def row_e2e_redis(s: Suite) -> None:
    row_e2e(s, "e2e-redis", REDIS)


def row_e2e_rabbitmq(s: Suite) -> None:
    row_e2e(s, "e2e-rabbitmq", AMQP)
    # Like for like: a producer that publishes without publisher confirms, as Celery's does
    # by default (the worker keeps them for its follow-up messages).
    env = environment(AMQP)
    migrate(env)
    unconfirmed = {**env, "DJANGO_RAY_CONFIRM_PUBLISH": "0"}
    s.case(
        "e2e-rabbitmq",
        "django-ray --local, producer without confirms",
        lambda: django_produce(env, ["--local"], "noop", s.sizes.e2e, producer_env=unconfirmed),
    )


def row_sync(s: Suite) -> None:
    env = environment(REDIS)
    migrate(env)
    n = s.sizes.sync
    s.case("sync", "django-ray --sync", lambda: django_produce(env, ["--sync"], "noop", n))
    s.case("sync", "celery solo", lambda: celery_produce(REDIS, "noop", n, "solo", 1))


def row_postgres(s: Suite) -> None:
    reset_postgres()
    env = postgres_environment("django://")
    migrate(env)
    n, m = s.sizes.pg_drain, s.sizes.pg_enqueue
    s.case("postgres", "enqueue, one commit each", lambda: pg_enqueue(env, m, 0))
    s.case("postgres", "enqueue, one transaction", lambda: pg_enqueue(env, m, m))
    s.case("postgres", "drain --sync", lambda: pg_drain(env, ["--sync"], n))
    s.case("postgres", "drain --local", lambda: pg_drain(env, ["--local"], n))


def row_latency(s: Suite) -> None:
    n = s.sizes.latency
    env = environment(REDIS)
    migrate(env)
    s.case("latency", "django-ray --local (Redis)", lambda: django_latency(env, ["--local"], n))
    s.case("latency", f"{CELERY_PREFORK} (Redis)", lambda: celery_latency(REDIS, n))
    reset_postgres()
    pg = postgres_environment("django://")
    migrate(pg)
    s.case("latency", "django:// PostgreSQL --sync", lambda: django_latency(pg, ["--sync"], n))
    s.case("latency", "django:// PostgreSQL --local", lambda: django_latency(pg, ["--local"], n))


def row_cpu(s: Suite) -> None:
    env = environment(REDIS)
    migrate(env)
    n = s.sizes.cpu
    # Enqueued in one transaction: the row measures execution, not the producer's commits.
    s.case(
        "cpu",
        "django-ray --local",
        lambda: django_produce(env, ["--local"], "cpu_20ms", n, chunk=n),
    )
    s.case("cpu", CELERY_PREFORK, lambda: celery_produce(REDIS, "cpu_20ms", n))

    def raw() -> Figures:
        out = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "raw_ray.py"), "200", str(n)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if out.returncode:
            raise RuntimeError(out.stderr[-2000:])
        rates = json.loads(out.stdout.strip().splitlines()[-1])
        return {"tasks": n, "tasks_per_s": rates["cpu"], "noop_per_s": rates["noop"]}

    s.case("cpu", "raw ray (floor, no broker)", raw)


def row_fanout(s: Suite) -> None:
    items, ms = s.sizes.fanout, FANOUT_MS
    env = environment(REDIS)
    migrate(env)

    def ours() -> Figures:
        queue, (wid,) = new_queue(), _ids("fan")
        with start_worker(env, queue, "--local", worker_id=wid) as service:
            out = helper(
                env, "fanout", queue, str(items), str(ms), f"--workers={wid}", watch=(service,)
            )
        if out["status"] != "SUCCESSFUL":
            raise RuntimeError(f"the fan-out task ended {out['status']}")
        return {"items": items, "seconds": out["seconds"], "run_seconds": out["run_seconds"]}

    def celery() -> Figures:
        env_c, queue = celery_environment(REDIS), new_queue()
        with start_celery(env_c, queue) as service:
            out = helper(
                env_c, "group", queue, str(items), str(ms), script=CELERY_HELPER, watch=(service,)
            )
        if out["statuses"] != ["SUCCESS"]:
            raise RuntimeError(f"the group ended {out['statuses']}")
        return {"items": items, "seconds": out["seconds"]}

    s.case("fanout", "parallel_map in one task (--local)", ours)
    s.case("fanout", "celery group (prefork -c 2)", celery)
    cores = os.cpu_count() or 1
    s.rows.setdefault("fanout", {})["ideal (work / cores)"] = {
        "items": items,
        "cores": cores,
        "seconds": items * ms / 1000 / cores,
    }


def row_scale(s: Suite) -> None:
    """1, 2 and 4 --cluster workers on a one-node cluster, then with a second node joined."""
    from benchmarks.cluster import BenchHead, RayNode

    reset_postgres()
    n = s.sizes.scale
    head = BenchHead(2, dashboard=False).start()
    node = None
    head_nodes: set[str] = set()  # the head's Ray node id, learnt from the one-node points

    def point(k: int) -> Figures:
        figures = django_produce(env, mode, "where", n, workers=k, chunk=50)
        if node is None:
            head_nodes.update(figures["nodes"])
        elif head_nodes:
            figures["nodes"] = {
                ("head" if key in head_nodes else "second node"): count
                for key, count in figures["nodes"].items()
            }
        return figures

    try:
        env = postgres_environment(REDIS, **head.env())
        migrate(env)
        mode = [f"--cluster={head.gcs_address}"]
        for k in SCALE_WORKERS:
            s.case("scale", f"1 node, {k} worker(s)", lambda k=k: point(k))
        try:
            node = RayNode(head, num_cpus=2).start()
        except Exception as exc:
            s.errors["scale / second node"] = _error(exc)
        else:
            for k in SCALE_WORKERS:
                s.case("scale", f"2 nodes, {k} worker(s)", lambda k=k: point(k))
    finally:
        if node is not None:
            node.stop()
        head.stop()


def row_job(s: Suite) -> None:
    from benchmarks.cluster import BenchHead
    from benchmarks.raw_jobs import round_trip

    samples = s.sizes.job
    head = BenchHead(2, dashboard=True).start()
    try:
        env = environment(REDIS, **head.env(), DJANGO_RAY_RAY_ADDRESS=head.dashboard_url)
        migrate(env)
        s.case("job", "django-ray Ray Job mode", lambda: django_latency(env, [], samples, warm=1))
        s.case(
            "job",
            "raw JobSubmissionClient",
            lambda: {"samples": samples, "p50_ms": 1000 * round_trip(head, samples)},
        )
    finally:
        head.stop()


# Name -> (cases it measures, the row). --only takes these names.
ROWS: dict[str, tuple[int, Callable[[Suite], None]]] = {
    "e2e-redis": (2, row_e2e_redis),
    "e2e-rabbitmq": (3, row_e2e_rabbitmq),
    "sync": (2, row_sync),
    "postgres": (4, row_postgres),
    "latency": (4, row_latency),
    "cpu": (3, row_cpu),
    "fanout": (2, row_fanout),
    "scale": (2 * len(SCALE_WORKERS), row_scale),
    "job": (2, row_job),
}


# -- ratios ------------------------------------------------------------------------------


def _get(rows: dict[str, dict[str, Figures]], row: str, case: str, key: str) -> float | None:
    value = rows.get(row, {}).get(case, {}).get(key)
    return float(value) if isinstance(value, int | float) else None


def ratios(rows: dict[str, dict[str, Figures]]) -> list[dict[str, Any]]:
    """The table of ratios: (benchmark, django-ray figure, baseline figure, ratio, goal)."""
    g = lambda row, case, key="tasks_per_s": _get(rows, row, case, key)  # noqa: E731
    celery_redis = g("e2e-redis", CELERY_PREFORK)
    table = [
        (
            "no-op e2e, Redis: --local vs Celery prefork -c 2",
            "tasks/s",
            g("e2e-redis", "django-ray --local"),
            celery_redis,
            ">=",
            1.5,
        ),
        (
            "no-op e2e, RabbitMQ: --local vs Celery prefork -c 2",
            "tasks/s",
            g("e2e-rabbitmq", "django-ray --local"),
            g("e2e-rabbitmq", CELERY_PREFORK),
            ">=",
            1.5,
        ),
        (
            "no-op e2e, RabbitMQ, producer without confirms (as Celery's): --local vs Celery",
            "tasks/s",
            g("e2e-rabbitmq", "django-ray --local, producer without confirms"),
            g("e2e-rabbitmq", CELERY_PREFORK),
            "",
            None,
        ),
        (
            "no-op e2e, Redis: --sync vs Celery solo",
            "tasks/s",
            g("sync", "django-ray --sync"),
            g("sync", "celery solo"),
            ">=",
            1.0,
        ),
        (
            "django:// PostgreSQL drain --sync vs Celery prefork on Redis (e2e)",
            "tasks/s",
            g("postgres", "drain --sync"),
            celery_redis,
            ">=",
            1.0,
        ),
        (
            "django:// PostgreSQL drain --local vs Celery prefork on Redis (e2e)",
            "tasks/s",
            g("postgres", "drain --local"),
            celery_redis,
            ">=",
            1.0,
        ),
        (
            "PostgreSQL enqueue: one transaction vs one commit each",
            "enqueues/s",
            g("postgres", "enqueue, one transaction", "enqueue_per_s"),
            g("postgres", "enqueue, one commit each", "enqueue_per_s"),
            None,
            None,
        ),
        (
            "p50 enqueue-to-result, idle: --local vs Celery prefork (Redis)",
            "ms",
            g("latency", "django-ray --local (Redis)", "p50_ms"),
            g("latency", f"{CELERY_PREFORK} (Redis)", "p50_ms"),
            "<=",
            1.0,
        ),
        (
            "p50 django:// PostgreSQL --sync vs 10 ms",
            "ms",
            g("latency", "django:// PostgreSQL --sync", "p50_ms"),
            10.0,
            "<=",
            1.0,
        ),
        (
            "p50 django:// PostgreSQL --local vs 10 ms",
            "ms",
            g("latency", "django:// PostgreSQL --local", "p50_ms"),
            10.0,
            "<=",
            1.0,
        ),
        (
            "200 x 20 ms CPU: --local vs Celery prefork -c 2",
            "tasks/s",
            g("cpu", "django-ray --local"),
            g("cpu", CELERY_PREFORK),
            ">=",
            0.95,
        ),
        (
            "fan-out: Celery group time / parallel_map time",
            "s",
            g("fanout", "celery group (prefork -c 2)", "seconds"),
            g("fanout", "parallel_map in one task (--local)", "seconds"),
            ">=",
            1.15,
        ),
        (
            "fan-out: parallel_map time / ideal (work / cores)",
            "s",
            g("fanout", "parallel_map in one task (--local)", "seconds"),
            g("fanout", "ideal (work / cores)", "seconds"),
            "<=",
            1.2,
        ),
    ]
    for nodes in ("1 node", "2 nodes"):
        one = g("scale", f"{nodes}, 1 worker(s)")
        for k in SCALE_WORKERS[1:]:
            table.append(
                (
                    f"scale, {nodes}: {k} workers vs 1",
                    "tasks/s",
                    g("scale", f"{nodes}, {k} worker(s)"),
                    one,
                    None,
                    None,
                )
            )
    table.append(
        (
            "Ray Job mode p50 vs raw JobSubmissionClient round trip",
            "ms",
            g("job", "django-ray Ray Job mode", "p50_ms"),
            g("job", "raw JobSubmissionClient", "p50_ms"),
            "<=",
            1.2,
        )
    )
    out = []
    for name, unit, ours, base, op, goal in table:
        # Fan-out's first line is baseline / ours (higher is better): keep its order as written.
        ratio = ours / base if ours is not None and base else None
        met = None
        if ratio is not None and goal is not None:
            met = ratio >= goal if op == ">=" else ratio <= goal
        out.append(
            {
                "benchmark": name,
                "unit": unit,
                "django_ray": ours,
                "baseline": base,
                "ratio": ratio,
                "goal": f"{op} {goal}" if goal is not None else "",
                "met": met,
            }
        )
    return out


def table_markdown(table: list[dict[str, Any]]) -> str:
    lines = [
        "| benchmark | unit | django-ray | baseline | ratio | goal | met |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for r in table:
        met = {True: "yes", False: "**no**", None: ""}[r["met"]]
        lines.append(
            f"| {r['benchmark']} | {r['unit']} | {_num(r['django_ray'])} | "
            f"{_num(r['baseline'])} | {_ratio(r['ratio'])} | {r['goal']} | {met} |"
        )
    return "\n".join(lines)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


# -- machine -----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return proc.stdout.strip()

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "python": platform.python_version(),
        "versions": {
            name: version(name)
            for name in ("Django", "ray", "celery", "kombu", "redis", "psycopg", "django-ray-tasks")
        },
        "load_average_start": list(os.getloadavg()),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# -- main --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a few minutes")
    parser.add_argument("--only", default="", help=f"rows to run, of: {','.join(ROWS)}")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    only = [name for name in args.only.split(",") if name]
    unknown = [name for name in only if name not in ROWS]
    if unknown:
        parser.error(f"unknown row(s) {','.join(unknown)}; rows: {','.join(ROWS)}")
    selected = only or list(ROWS)
    sizes = QUICK if args.quick else FULL
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    from tqdm import tqdm

    info = machine()
    started = time.perf_counter()
    total = sum(ROWS[name][0] for name in selected)
    with tqdm(total=total, unit="case", dynamic_ncols=True, file=sys.stderr) as bar:
        suite = Suite(sizes, bar)
        for name in selected:
            expected, row = ROWS[name]
            before = bar.n
            try:
                row(suite)
            except Exception as exc:  # the row's own set-up (a database, a Ray head) failed
                suite.errors[name] = _error(exc) + "\n" + traceback.format_exc(limit=3)
                bar.write(f"  FAILED {name}: {_error(exc).splitlines()[0]}")
            bar.update(max(0, expected - (bar.n - before)))
    info["load_average_end"] = list(os.getloadavg())
    table = ratios(suite.rows)
    result = {
        "machine": info,
        "quick": args.quick,
        "sizes": asdict(sizes),
        "rows_run": selected,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "figures": suite.rows,
        "ratios": table,
        "errors": suite.errors,
    }
    (out_dir / "results.json").write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    markdown = table_markdown(table)
    (out_dir / "summary.md").write_text(_summary(result, markdown))
    try:
        from benchmarks.plots import plot_all

        written = plot_all(result, out_dir)
    except Exception as exc:  # plots are a view of the JSON: never lose the figures over them
        written = []
        suite.errors["plots"] = _error(exc)
    print(f"\n{markdown}\n")
    for key, message in suite.errors.items():
        print(f"FAILED {key}: {message.splitlines()[0]}")
    print(
        f"\nWrote {out_dir / 'results.json'}, {out_dir / 'summary.md'}"
        + "".join(f", {p.name}" for p in written)
        + f" in {result['elapsed_s']:.0f}s."
    )
    return 1 if suite.errors else 0


def _summary(result: dict[str, Any], markdown: str) -> str:
    m = result["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    size = "--quick" if result["quick"] else "full"
    return (
        f"Run {m['date']} at commit {m['commit']}{' (dirty)' if m['dirty'] else ''}, "
        f"{size} sizes, {result['elapsed_s']:.0f} s; {m['cpu_count']} CPUs ({m['processor']}), "
        f"Python {m['python']}, {versions}; load average {m['load_average_start'][0]:.2f} "
        f"at the start, {m['load_average_end'][0]:.2f} at the end.\n\n{markdown}\n"
    )


if __name__ == "__main__":
    sys.exit(main())
