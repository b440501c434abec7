"""Tasks that report progress and wait for the test to let them go on (tests/test_progress.py).

Each step reports, then waits for the file ``<hold>.<step>`` the test creates once it has
seen that step from outside; so the test observes the task while it runs, step by step.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from django.tasks import TaskContext, task

from compat.celery import shared_task
from django_ray.progress import set_progress

# The steps every task reports: (state, meta). The second is a custom state.
STEPS = [("PROGRESS", {"done": 1, "total": 2}), ("UPLOADING", {"done": 2, "total": 2})]
HOLD_TIMEOUT = 120.0


def wait_for_release(hold: str, step: int) -> None:
    """Wait (inside the task) until the test creates ``<hold>.<step>``."""
    release = Path(f"{hold}.{step}")
    deadline = time.monotonic() + HOLD_TIMEOUT
    while not release.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release} was never created")
        time.sleep(0.02)


@task(takes_context=True)
def django_steps(context: TaskContext, hold: str) -> dict[str, Any]:
    stored = []
    for step, (state, meta) in enumerate(STEPS, start=1):
        stored.append(set_progress(context, meta, state=state))
        wait_for_release(hold, step)
    return {"stored": stored}


@shared_task(bind=True)
def compat_steps(self: Any, hold: str) -> dict[str, Any]:
    for step, (state, meta) in enumerate(STEPS, start=1):
        self.update_state(state=state, meta=meta)
        wait_for_release(hold, step)
    return {"id": self.request.id}


@shared_task(bind=True)
def report_for(self: Any, other_id: str, meta: dict[str, Any]) -> None:
    """Report the progress of another task (``update_state(task_id=...)``)."""
    self.update_state(task_id=other_id, state="PROGRESS", meta=meta)


@shared_task(bind=True)
def reports_outcome_state(self: Any) -> None:
    self.update_state(state="SUCCESS", meta={"done": True})


@task(takes_context=True)
def django_reports_then_returns(context: TaskContext) -> bool:
    return set_progress(context, {"almost": True})
