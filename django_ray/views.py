"""``metrics``: the database-derived Prometheus metrics of a deployment (docs/metrics.md).

A worker serves its own metrics on ``--metrics-port``; this view serves what every worker
and producer share, read from the database: task records by status, queue and task name,
the depth of the ``django://`` queues, parked ETA messages and dead letters. Include
``django_ray.urls`` (``path("django-ray/", include("django_ray.urls"))``) and scrape
``/django-ray/metrics``.

Access: a request with ``Authorization: Bearer <DJANGO_RAY["METRICS_TOKEN"]>``, or from a
logged-in active staff user. Anyone else gets 403 (401 when a token is set and none was sent).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator

from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from django_ray import conf

__all__ = ["DEAD_LETTER_ERROR", "metrics"]

# How a dead-lettered record's error is recorded.
DEAD_LETTER_ERROR = "django_ray.exceptions.DeliveryLimitExceeded"


class DatabaseCollector:
    """Gauges read from ``TaskRecord``, ``QueueMessage`` and ``ScheduledMessage`` at scrape."""

    def describe(self) -> list[GaugeMetricFamily]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from django_ray.models import QueueMessage, ScheduledMessage, TaskRecord, TaskStatus
        from django_ray.runtime.settle import DEAD_LETTER_SUFFIX

        records = GaugeMetricFamily(
            "django_ray_task_records", "Task records by status, queue and task name.",
            labels=["status", "queue", "task"],
        )  # fmt: skip
        counts = TaskRecord.objects.values("status", "queue", "task_name").annotate(n=Count("id"))
        for row in counts.order_by("status", "queue", "task_name"):
            records.add_metric([row["status"], row["queue"], row["task_name"]], row["n"])
        yield records

        now = timezone.now()
        depth = GaugeMetricFamily(
            "django_ray_queue_depth",
            "Messages of the django:// broker that may be delivered now, by queue.",
            labels=["queue"],
        )
        waiting = GaugeMetricFamily(
            "django_ray_queue_messages",
            "All messages of the django:// broker (delivered and unacknowledged, or not yet "
            "visible, included), by queue.",
            labels=["queue"],
        )
        visible = dict(
            QueueMessage.objects.filter(visible_at__lte=now)
            .values_list("queue")
            .annotate(n=Count("id"))
        )
        for queue, n in (
            QueueMessage.objects.values_list("queue").annotate(n=Count("id")).order_by("queue")
        ):
            waiting.add_metric([queue], n)
            depth.add_metric([queue], visible.get(queue, 0))
        yield depth
        yield waiting

        scheduled = GaugeMetricFamily(
            "django_ray_scheduled_messages", "Messages parked until their ETA, by queue.",
            labels=["queue"],
        )  # fmt: skip
        for queue, n in (
            ScheduledMessage.objects.values_list("queue").annotate(n=Count("id")).order_by("queue")
        ):
            scheduled.add_metric([queue], n)
        yield scheduled

        dead = GaugeMetricFamily(
            "django_ray_dead_letters",
            "Tasks recorded FAILED with DeliveryLimitExceeded (dead-lettered), by queue and task.",
            labels=["queue", "task"],
        )
        dead_rows = (
            TaskRecord.objects.filter(status=TaskStatus.FAILED, errors__icontains=DEAD_LETTER_ERROR)
            .values_list("queue", "task_name")
            .annotate(n=Count("id"))
            .order_by("queue", "task_name")
        )
        for queue, task, n in dead_rows:
            dead.add_metric([queue, task], n)
        yield dead

        parked = GaugeMetricFamily(
            "django_ray_dead_letter_messages",
            "Messages waiting in the django:// dead-letter queues (<queue>.dead-letter), by "
            "the queue they came from.",
            labels=["queue"],
        )
        rows_dl = (
            QueueMessage.objects.filter(queue__endswith=DEAD_LETTER_SUFFIX)
            .values_list("queue")
            .annotate(n=Count("id"))
            .order_by("queue")
        )
        for queue, n in rows_dl:
            parked.add_metric([queue.removesuffix(DEAD_LETTER_SUFFIX)], n)
        yield parked

        from django_ray.metrics import tasks_in_progress

        yield tasks_in_progress()


def _allowed(request: HttpRequest) -> tuple[bool, int]:
    """Return whether ``request`` may read the metrics, and the status code if not."""
    token = conf.get("METRICS_TOKEN")
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer "):
        sent = header.removeprefix("Bearer ").strip()
        if hmac.compare_digest(sent.encode(), str(token).encode()):
            return True, 200
        return False, 403
    user = getattr(request, "user", None)
    if user is not None and user.is_active and user.is_staff:
        return True, 200
    return False, 401 if token and not header else 403


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Serve the database-derived metrics in Prometheus' text format."""
    allowed, code = _allowed(request)
    if not allowed:
        response = HttpResponse(
            "Metrics need DJANGO_RAY['METRICS_TOKEN'] as a bearer token, or a staff login.\n",
            status=code, content_type="text/plain; charset=utf-8",
        )  # fmt: skip
        if code == 401:
            response["WWW-Authenticate"] = 'Bearer realm="django-ray metrics"'
        return response
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
