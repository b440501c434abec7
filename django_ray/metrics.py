"""Prometheus metrics and health probes of one worker process (docs/metrics.md).

``serve(worker, host, port)`` starts a small HTTP server on a daemon thread of the worker:

* ``GET /metrics``: the worker's metrics, from a ``CollectorRegistry`` of its own (tasks
  started and finished by task, queue and status; durations; retries; dead letters; tasks in
  flight; queue depth; heartbeat age);
* ``GET /healthz``: liveness: the worker loop ticked within ``max_age`` seconds (60, or the
  ``?max_age=`` query parameter);
* ``GET /readyz``: readiness: the database and the broker answer, and in the Ray modes
  (``--local``, ``--cluster``) the runner is connected to Ray.

Both probes answer 200 when all is well and 503 otherwise, with one ``name: ok|reason`` line
per check. The database-derived metrics of a multi-process deployment are served by the
Django view ``django_ray.views.metrics``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from django_ray.exceptions import ImproperlyConfiguredRay

if TYPE_CHECKING:
    from django_ray.message import TaskMessage
    from django_ray.runners.base import BaseRunner
    from django_ray.runtime.settle import Outcome
    from django_ray.transport import Broker

logger = logging.getLogger("django_ray.metrics")

__all__ = ["DEFAULT_MAX_AGE", "MetricsServer", "WorkerMetrics", "liveness", "readiness", "serve"]


class Worker(Protocol):
    """What the metrics and probes read of a worker (``django_ray.worker.Worker``)."""

    queues: list[str]
    broker: Broker
    runner: BaseRunner
    heartbeat: float  # time.monotonic() of the loop's last tick

    @property
    def worker_id(self) -> str: ...

    def active_tasks(self) -> list[tuple[TaskMessage, float]]: ...

    def watch(self, observer: Callable[[str, TaskMessage, Outcome | None], None]) -> None: ...


# Seconds without a tick of the worker loop after which the worker is not alive.
DEFAULT_MAX_AGE = 60.0
# Buckets of task durations, in seconds: from a quick task to an hour-long job.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
# The status label of a delivery that reached no outcome (given back to the broker).
RETURNED = "RETURNED"
# The status label of a duplicate delivery (the record had already finished).
DUPLICATE = "DUPLICATE"


class WorkerMetrics:
    """The metrics of one worker, fed by its task observer (``Worker.watch``)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["task", "queue"]
        self.started = Counter(
            "django_ray_tasks_started", "Tasks this worker started (submitted to its runner).",
            labels, registry=self.registry,
        )  # fmt: skip
        self.finished = Counter(
            "django_ray_tasks_finished",
            "Task deliveries this worker finished, by the status they left the record in "
            "(RETURNED: given back to the broker without an outcome; DUPLICATE: already done).",
            [*labels, "status"], registry=self.registry,
        )  # fmt: skip
        self.duration = Histogram(
            "django_ray_task_duration_seconds", "Seconds from submit to outcome.",
            [*labels, "status"], buckets=DURATION_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.retries = Counter(
            "django_ray_task_retries", "Attempts that ended in a retry.",
            labels, registry=self.registry,
        )  # fmt: skip
        self.dead_letters = Counter(
            "django_ray_dead_letters",
            "Tasks failed with DeliveryLimitExceeded and moved to <queue>.dead-letter.",
            labels, registry=self.registry,
        )  # fmt: skip
        in_flight = Gauge(
            "django_ray_tasks_in_flight", "Tasks submitted and not yet collected.",
            registry=self.registry,
        )  # fmt: skip
        in_flight.set_function(lambda: len(worker.active_tasks()))
        heartbeat = Gauge(
            "django_ray_worker_heartbeat_age_seconds",
            "Seconds since the worker loop last ticked.", registry=self.registry,
        )  # fmt: skip
        heartbeat.set_function(lambda: heartbeat_age(worker))
        info = Gauge(
            "django_ray_worker_info", "This worker (always 1).",
            ["worker_id", "mode", "broker"], registry=self.registry,
        )  # fmt: skip
        info.labels(worker.worker_id, worker.runner.mode, worker.broker.kind).set(1)
        self.registry.register(_QueueDepth(worker))
        self._starts: dict[str, float] = {}
        self._lock = threading.Lock()

    def on_task(self, phase: str, message: TaskMessage, outcome: Outcome | None) -> None:
        """Count a task being ``started`` or ``finished`` (a ``control.TaskObserver``)."""
        from django_ray.runtime.settle import DEAD_LETTER_SUFFIX

        labels = (message.task, message.queue)
        if phase == "started":
            with self._lock:
                self._starts[message.id] = time.monotonic()
            self.started.labels(*labels).inc()
            return
        with self._lock:
            started = self._starts.pop(message.id, None)
        if outcome is None:
            status = RETURNED
        elif outcome.duplicate:
            status = DUPLICATE
        else:
            status = str(outcome.status)
        self.finished.labels(*labels, status).inc()
        if started is not None:
            self.duration.labels(*labels, status).observe(time.monotonic() - started)
        if outcome is None or outcome.duplicate:
            return
        if status == "RETRYING":
            self.retries.labels(*labels).inc()
        if any(m.queue.endswith(DEAD_LETTER_SUFFIX) for m in outcome.publish):
            self.dead_letters.labels(*labels).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _QueueDepth:
    """``django_ray_queue_depth``: messages waiting in each queue the worker consumes."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "django_ray_queue_depth",
            "Messages waiting in a queue (django://: visible rows; Redis: the list; "
            "RabbitMQ: ready messages).",
            labels=["queue"],
        )
        try:
            for queue, depth in queue_depths(self.worker).items():
                family.add_metric([queue], depth)
        except Exception as e:  # the broker is away: the other metrics still answer
            logger.warning("Could not read the queue depth: %s", e)
        yield family


def queue_depths(worker: Worker) -> dict[str, int]:
    """Return how many messages wait in each of ``worker``'s queues (and dead-letter queues)."""
    from django_ray.runtime.settle import DEAD_LETTER_SUFFIX

    names = [q for q in worker.queues if q != "*"]
    if worker.broker.kind.in_database:
        from django.db import close_old_connections, connection
        from django.db.models import Count
        from django.utils import timezone

        from django_ray.models import QueueMessage

        try:
            rows = QueueMessage.objects.filter(visible_at__lte=timezone.now())
            if "*" not in worker.queues:
                rows = rows.filter(queue__in=[*names, *(n + DEAD_LETTER_SUFFIX for n in names)])
            depths = {name: 0 for name in names}
            for row in rows.values("queue").annotate(n=Count("id")):
                depths[row["queue"]] = row["n"]
            return depths
        finally:
            close_old_connections()
            connection.close()
    from django_ray.transport import Broker

    broker = Broker(worker.broker.url)  # this thread's own connection
    try:
        channel = broker.connection.default_channel
        depths = {}
        for name in names:
            if broker.kind.server_queues:
                try:
                    depths[name] = channel.queue_declare(name, passive=True).message_count
                except broker.connection.channel_errors:
                    depths[name] = 0
                    channel = broker.connection.default_channel
            else:
                depths[name] = int(channel._size(name))
        return depths
    finally:
        broker.close()


def tasks_in_progress() -> GaugeMetricFamily:
    """``django_ray_tasks_in_progress``: RUNNING records that reported progress, by task and
    the state they reported (``update_state`` / ``django_ray.progress.set_progress``)."""
    from django.db.models import Count

    from django_ray.models import TaskRecord, TaskStatus

    family = GaugeMetricFamily(
        "django_ray_tasks_in_progress",
        "Running tasks that reported progress, by task name and the state they reported.",
        labels=["task", "state"],
    )
    rows = (
        TaskRecord.objects.filter(status=TaskStatus.RUNNING, progress_state__isnull=False)
        .values_list("task_name", "progress_state")
        .annotate(n=Count("id"))
        .order_by("task_name", "progress_state")
    )
    for task, state, n in rows:
        family.add_metric([task, state], n)
    return family


# -- health -------------------------------------------------------------------


def heartbeat_age(worker: Worker) -> float:
    """Seconds since ``worker``'s loop last ticked."""
    return max(0.0, time.monotonic() - worker.heartbeat)


def liveness(worker: Worker, max_age: float = DEFAULT_MAX_AGE) -> tuple[bool, list[str]]:
    """Return whether ``worker``'s loop ticked within ``max_age`` seconds, and why."""
    age = heartbeat_age(worker)
    if age <= max_age:
        return True, [f"heartbeat: ok ({age:.1f}s ago)"]
    return False, [f"heartbeat: the worker loop last ticked {age:.1f}s ago (> {max_age:g}s)"]


def readiness(worker: Worker) -> tuple[bool, list[str]]:
    """Return whether the database, the broker and (Ray modes) Ray are reachable, and why."""
    checks = {
        "database": _check_database,
        "broker": lambda: _check_broker(worker),
        "ray": lambda: _check_ray(worker),
    }
    lines, ready = [], True
    for name, check in checks.items():
        try:
            problem = check()
        except Exception as e:
            problem = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
        if problem is None:
            lines.append(f"{name}: ok")
        elif problem == "n/a":
            lines.append(f"{name}: not used")
        else:
            ready = False
            lines.append(f"{name}: {problem}")
    return ready, lines


def _check_database() -> str | None:
    from django.db import connection

    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        connection.close()  # this thread's connection: a request thread ends here
    return None


def _check_broker(worker: Worker) -> str | None:
    if worker.broker.kind.in_database:
        from django.db import connection

        from django_ray.models import QueueMessage

        try:
            QueueMessage.objects.filter(pk=0).exists()  # the table is there
        finally:
            connection.close()
        return None
    from django_ray.transport import Broker

    broker = Broker(worker.broker.url)  # this thread's own connection
    try:
        broker.connection.ensure_connection(max_retries=1, timeout=3)
    finally:
        broker.close()
    return None


def _check_ray(worker: Worker) -> str | None:
    runner = worker.runner
    if runner.mode not in ("local", "cluster"):
        return "n/a"
    if not getattr(runner, "_connected", False):
        return "not connected to Ray"
    return None


# -- the HTTP server ----------------------------------------------------------


class MetricsServer:
    """The metrics and probes server of one worker, on a daemon thread."""

    def __init__(self, worker: Worker, host: str, port: int) -> None:
        self.metrics = WorkerMetrics(worker)
        worker.watch(self.metrics.on_task)
        handler = type("Handler", (_Handler,), {"owner": self})
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except (OSError, OverflowError) as e:
            raise ImproperlyConfiguredRay(
                f"Cannot serve metrics on {host}:{port} ({e}); choose another --metrics-port."
            ) from e
        self.httpd.daemon_threads = True
        self.worker = worker
        self.host, self.port = host, int(self.httpd.server_address[1])
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="django-ray-metrics", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> MetricsServer:
        self._thread.start()
        logger.info("Serving metrics and health probes on %s (/metrics, /healthz, /readyz).",
                    self.url)  # fmt: skip
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    owner: MetricsServer

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        worker = self.owner.worker
        if url.path == "/metrics":
            self._send(200, self.owner.metrics.exposition(), CONTENT_TYPE_LATEST)
            return
        if url.path == "/healthz":
            try:
                max_age = float(parse_qs(url.query).get("max_age", [DEFAULT_MAX_AGE])[0])
            except ValueError:
                self._send(400, b"max_age must be a number of seconds\n")
                return
            ok, lines = liveness(worker, max_age)
        elif url.path == "/readyz":
            ok, lines = readiness(worker)
        else:
            self._send(404, b"Not found: /metrics, /healthz or /readyz\n")
            return
        self._send(200 if ok else 503, ("\n".join(lines) + "\n").encode())

    def _send(
        self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("metrics: " + format, *args)


def serve(worker: Worker, host: str = "127.0.0.1", port: int = 0) -> MetricsServer:
    """Start serving ``worker``'s metrics and probes on ``host:port`` (0: a free port)."""
    return MetricsServer(worker, host, port).start()
