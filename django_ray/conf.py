"""django-ray settings: one place, read lazily, with documented defaults.

Settings live in ``settings.DJANGO_RAY`` (a dict). A project migrating from Celery may
instead have ``CELERY_BROKER_URL`` / ``CELERY_RESULT_BACKEND``; those are read as
fall-backs so the worker and the project's Celery clients share one broker.
"""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings

__all__ = ["DEFAULTS", "broker_url", "celery_result_backend", "get"]

DEFAULTS: dict[str, Any] = {
    # Broker the transport layer publishes to and consumes from.
    "BROKER_URL": None,
    # kombu transport options (e.g. {"visibility_timeout": 3600} for Redis).
    "BROKER_TRANSPORT_OPTIONS": {},
    # The lease of a delivered message (django:// and Redis): seconds before it is delivered
    # again if its worker stops renewing it (the worker renews it every third of this while
    # it holds the message). A dead worker's messages run again after about this long.
    "VISIBILITY_TIMEOUT": 30,
    # x-max-priority for queues django-ray declares on RabbitMQ (None: no priorities).
    "QUEUE_MAX_PRIORITY": 10,
    # Ray Jobs / dashboard address for the default Ray Job mode.
    "RAY_ADDRESS": None,
    # The Ray dashboard's URL as the admin's users reach it (links from a task's page);
    # None: RAY_ADDRESS when it is an http(s) URL, or 127.0.0.1:8265 for --local.
    "RAY_DASHBOARD_URL": None,
    # Token for a Ray cluster with token authentication (else RAY_AUTH_TOKEN env).
    "RAY_AUTH_TOKEN": None,
    # Extra modules the worker imports to register tasks (besides <app>.tasks).
    "TASK_MODULES": [],
    # Dotted path to a Celery app to take task names and the result backend from.
    "CELERY_APP": None,
    # Celery-format result backend URL for unchanged Celery clients (None: CELERY_RESULT_BACKEND).
    "RESULT_BACKEND": None,
    # Seconds a Celery-format result is kept (CELERY_RESULT_EXPIRES, else 1 day).
    "RESULT_EXPIRES": None,
    # Seconds between two looks at the durable ETA schedule.
    "SCHEDULE_INTERVAL": 0.5,
    # Base Ray runtime_env for task processes (merged under what django-ray adds).
    "RAY_RUNTIME_ENV": {},
    # Environment variables copied into Ray workers and jobs, besides DJANGO_SETTINGS_MODULE
    # and PYTHONPATH: every variable the settings read (nothing else is sent: the worker's
    # environment may hold secrets that Ray would show in its dashboard).
    "RAY_ENV_VARS": [],
    # Seconds between two status polls of a running Ray job.
    "JOB_POLL_INTERVAL": 0.1,
    # A message delivered this many times without an outcome (its worker died each time)
    # is recorded FAILED and dead-lettered to "<queue>.dead-letter". None: no cap.
    "MAX_DELIVERIES": 5,
    # Periodic tasks for Django @task tasks, in CELERY_BEAT_SCHEDULE's shape: {"name": {"task":
    # "app.tasks.f", "schedule": 60 | timedelta | crontab(...), "args": [], "kwargs": {},
    # "options": {"queue": ..., "priority": ...}}}, sent by django_ray_beat (docs/periodic.md).
    "SCHEDULE": {},
    # What a periodic scheduler that was down sends for the ticks it missed: "latest" (one
    # run per entry, at the latest tick) or "each" (every missed tick, one after another).
    "BEAT_CATCH_UP": "latest",
    # Bearer token for the metrics view (django_ray.views.metrics): a scraper sends
    # "Authorization: Bearer <token>". None: only logged-in staff users see it.
    "METRICS_TOKEN": None,
    # Seconds between two heartbeats a worker writes to the database (WorkerHeartbeat);
    # django_ray_status shows a worker silent for 3 x this long as stale.
    "HEARTBEAT_INTERVAL": 5,
    # SQLite (the embedded default): put each database file in WAL mode with synchronous=
    # NORMAL and wait up to 30 s for a lock (unless OPTIONS["timeout"] says otherwise), so
    # the worker, the Ray processes and the producer share the file without "database is
    # locked" and without a disk flush per commit. False: leave SQLite as configured.
    "SQLITE_WAL": True,
}

# The Ray options a task may declare (``@task(ray_options=...)``, ``OPTIONS["TASK_OPTIONS"]``).
RAY_OPTION_KEYS = frozenset(
    {"num_cpus", "num_gpus", "memory", "resources", "runtime_env",
     "entrypoint_num_cpus", "entrypoint_num_gpus", "entrypoint_memory", "entrypoint_resources"}
)  # fmt: skip


def get(name: str) -> Any:
    """Return the django-ray setting ``name``, falling back to its default."""
    if name not in DEFAULTS:
        raise KeyError(f"Unknown django-ray setting {name!r}.")
    user = getattr(settings, "DJANGO_RAY", None) or {}
    return user.get(name, DEFAULTS[name])


def broker_url() -> str:
    """Return the broker URL: DJANGO_RAY, then CELERY_BROKER_URL, then ``django://``."""
    return (
        get("BROKER_URL")
        or os.environ.get("CELERY_BROKER_URL")
        or getattr(settings, "CELERY_BROKER_URL", None)
        or "django://"
    )


def celery_result_backend() -> str | None:
    """Return the Celery-format result backend URL, if the project has one."""
    return (
        get("RESULT_BACKEND")
        or os.environ.get("CELERY_RESULT_BACKEND")
        or getattr(settings, "CELERY_RESULT_BACKEND", None)
    )


def result_expires() -> int | None:
    """Return the TTL of Celery-format results in seconds (None: never expire)."""
    value = get("RESULT_EXPIRES")
    if value is None:
        value = getattr(settings, "CELERY_RESULT_EXPIRES", 86400)
    if hasattr(value, "total_seconds"):
        value = value.total_seconds()
    return int(value) if value else None
