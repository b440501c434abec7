"""``manage.py django_ray_status``: records by status and waiting messages, per queue."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand

from django_ray.operations import QueueStatus, StatusReport, status


def non_empty(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value.strip()


class Command(BaseCommand):
    help = "Show, per queue, task records by status, RUNNING attempts and waiting messages."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--queue", action="append", type=non_empty, default=[],
            help="Only this queue (repeatable). Default: every queue with records or messages.",
        )  # fmt: skip
        parser.add_argument(
            "--json", action="store_true", help="Print one JSON object (see docs/operations.md)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        report = status(queues=options["queue"])
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict(), indent=2))
        else:
            self.stdout.write(_report(report))


def _report(report: StatusReport) -> str:
    if not report.queues:
        return "No queue has task records or messages."
    blocks = [_queue(queue, report.generated_at) for queue in report.queues]
    stale = sum(queue.stale for queue in report.queues)
    if stale:
        blocks.append(
            f"{stale} stale RUNNING record(s): last attempt older than VISIBILITY_TIMEOUT "
            f"({report.visibility_timeout:g} s). Their worker probably died; their message "
            "will be delivered again."
        )
    return "\n\n".join(blocks)


def _queue(queue: QueueStatus, now: datetime) -> str:
    lines = [
        f"Queue {queue.name!r}",
        "  tasks:     " + "  ".join(f"{name} {count}" for name, count in queue.tasks.items()),
    ]
    if queue.oldest_ready_age is not None:
        age = _duration(queue.oldest_ready_age)
        lines.append(f"  oldest READY: {queue.oldest_ready_id}, waiting {age}")
    lines.append(
        f"  messages:  {queue.messages_visible} visible, {queue.messages_hidden} hidden "
        f"(django://); scheduled: {queue.scheduled_due} due, {queue.scheduled_future} future"
    )
    for task in queue.running:
        since = "?"
        if task.last_attempted_at is not None:
            ago = _duration((now - task.last_attempted_at).total_seconds())
            since = f"{task.last_attempted_at:%Y-%m-%d %H:%M:%S %Z} ({ago} ago)"
        lines.append(
            f"  RUNNING {task.id} {task.task_name} on {task.worker_id or '?'} since {since}"
            + ("  STALE" if task.stale else "")
        )
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    """Return ``seconds`` as the two largest units: ``2d 3h``, ``4m 5s``."""
    rest = max(int(seconds), 0)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        value, rest = divmod(rest, size)
        if value:
            parts.append(f"{value}{unit}")
    return " ".join(parts[:2]) or "0s"
