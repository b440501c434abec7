"""An unchanged Celery project's app: its tasks are found through ``include`` and nothing else."""

from __future__ import annotations

import os

from celery import Celery

app = Celery("celeryproj", include=["celeryproj.tasks"])
app.conf.update(
    broker_url=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/7"),
    result_backend=os.environ.get("CELERY_RESULT_BACKEND", "redis://127.0.0.1:6379/7"),
    result_expires=600,
    broker_connection_retry_on_startup=True,
)
