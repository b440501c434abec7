"""The Celery app of the interop tests: the project's app as an unchanged Celery codebase has it.

The client (the test process), ``django_ray_worker`` (``DJANGO_RAY["CELERY_APP"]``) and a
real ``celery worker`` all import this module; the environment points them at one broker.
"""

from __future__ import annotations

import os
import uuid

from celery import Celery

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/7")
# One token per test session (inherited by its worker subprocesses), so that two sessions
# sharing the Redis and RabbitMQ servers never consume each other's queues.
RUN = os.environ.setdefault("CW_RUN", uuid.uuid4().hex[:8])
QUEUE = os.environ.get("CW_QUEUE") or f"cw_interop_{RUN}"

app = Celery("cw", include=["tests.celery_interop.cw_tasks"])
app.conf.update(
    broker_url=os.environ.get("CW_BROKER_URL", REDIS_URL),
    result_backend=os.environ.get("CW_RESULT_BACKEND", REDIS_URL),
    task_default_queue=QUEUE,
    result_expires=600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


def client_app(broker_url: str) -> Celery:
    """Return a separate client app on ``broker_url`` (e.g. RabbitMQ), sharing the backend."""
    client = Celery("cw", set_as_current=False)
    client.conf.update(
        broker_url=broker_url,
        result_backend=app.conf.result_backend,
        task_default_queue=QUEUE,
        result_expires=600,
        broker_connection_retry_on_startup=True,
    )
    return client
